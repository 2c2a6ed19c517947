"""The state table of ``/sub/<token>`` (atlas.web.subscription_view), without a database."""

from __future__ import annotations

import dataclasses
import datetime as dt
import uuid

import pytest

from atlas.storage.units.vpn import SubscriptionAccess
from atlas.telegram.i18n import bundled
from atlas.vpn.nodes import NodeConfig
from atlas.web.subscription_page import format_bytes, import_links
from atlas.web.subscription_view import AccessState, subscription_view

EXPIRES = dt.datetime(2025, 3, 4, 12, 0, tzinfo=dt.UTC)
KEY = uuid.UUID("7d9e1c52-3b1a-4f4e-9a51-0c2f8d6b4e10")
NODE = NodeConfig(
    name="ams",
    agent_url="http://10.0.0.1:1",
    token="t" * 16,
    public_host="ams.example.com",
    port=443,
    security="none",
)
ACTIVE = SubscriptionAccess(
    subscription_id=1,
    user_id=1,
    kind="trial",
    status="active",
    expires_at=EXPIRES,
    key_uuid=KEY,
    language="en",
    is_active=True,
)


def labels(
    access: SubscriptionAccess, nodes: tuple[NodeConfig, ...] = (NODE,), bot: str | None = "atlas_bot"
) -> list[str]:
    return [e.label for e in subscription_view(access, nodes, texts=bundled(), bot_username=bot).endpoints]


@pytest.mark.parametrize(
    ("changes", "state", "expected"),
    [
        ({}, AccessState.ACTIVE, ["ams"]),
        (
            {"is_active": False, "status": "expired", "key_uuid": None},
            AccessState.EXPIRED,
            ["⌛ Subscription expired — renew in @atlas_bot", "📅 Expired on 2025-03-04"],
        ),
        (
            {"banned": True, "key_uuid": None},
            AccessState.BANNED,
            ["⛔ Access blocked — write to support in @atlas_bot"],
        ),
        (
            {"banned": True, "is_active": False},
            AccessState.BANNED,
            ["⛔ Access blocked — write to support in @atlas_bot"],
        ),
        ({"key_uuid": None}, AccessState.PENDING, ["⏳ Your key is being prepared — refresh in a minute"]),
    ],
)
def test_each_state_has_its_entries(
    changes: dict[str, object], state: AccessState, expected: list[str]
) -> None:
    access = dataclasses.replace(ACTIVE, **changes)  # type: ignore[arg-type]
    view = subscription_view(access, (NODE,), texts=bundled(), bot_username="atlas_bot")
    assert view.state is state
    assert [e.label for e in view.endpoints] == expected
    assert all(e.placeholder for e in view.endpoints) is (state is not AccessState.ACTIVE)
    assert view.userinfo.expire == EXPIRES and view.userinfo.total == 0


def test_no_nodes_no_bot_and_russian() -> None:
    assert labels(ACTIVE, ()) == ["⏳ Servers are being set up — refresh later"]
    expired = dataclasses.replace(ACTIVE, is_active=False, status="expired", language="ru")
    assert labels(expired, bot=None) == ["⌛ Подписка истекла — продлите в боте", "📅 Истекла 04.03.2025"]
    assert labels(dataclasses.replace(ACTIVE, is_active=False, language="en"), bot=None)[0].endswith(
        "in the bot"
    )


def test_page_helpers() -> None:
    assert [format_bytes(n) for n in (0, 999, 1500, 2_500_000_000)] == ["0 B", "999 B", "1.5 KB", "2.5 GB"]
    links = {link.app: link.href for link in import_links("https://x.example/sub/T", "A & B")}
    assert links["v2rayNG"] == "v2rayng://install-config?url=https%3A%2F%2Fx.example%2Fsub%2FT#A%20%26%20B"
    assert links["Happ"] == "happ://add/https://x.example/sub/T"
