"""``/sub/<token>`` and its QR code, served from the database through the routes' unit of work."""

from __future__ import annotations

import base64
import datetime as dt
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette

from atlas.clock import Clock
from atlas.storage import Database, DatabaseUnavailable
from atlas.storage.units.expiry import expire_due
from atlas.storage.units.subscriptions import start_trial
from atlas.storage.units.users import register_user
from atlas.vpn import NodeConfig, parse_vless_link
from atlas.web.subscription import subscription_routes, subscription_url

NOW = dt.datetime(2025, 3, 1, 12, 0, tzinfo=dt.UTC)
PBK = "A" * 43
NODES = (
    NodeConfig(
        name="ams",
        agent_url="http://10.0.0.1:8765",
        token="t" * 16,
        public_host="ams.example.com",
        port=443,
        sni="www.example.com",
        pbk=PBK,
        sid="ab",
        flow="xtls-rprx-vision",
        label="Amsterdam",
    ),
    NodeConfig(
        name="fra",
        agent_url="http://10.0.0.2:8765",
        token="t" * 16,
        public_host="2001:db8::1",
        port=8443,
        security="tls",
        sni="fra.example.com",
    ),
    NodeConfig(
        name="off",
        agent_url="http://10.0.0.3:8765",
        token="t" * 16,
        public_host="off.example.com",
        port=443,
        security="none",
        enabled=False,
    ),
)
BASE = "https://atlas.example.com"
SUPPORT = "https://t.me/atlas_support_bot"


class CountingDb:
    """Wraps the database to count lookups (malformed tokens must cost none)."""

    def __init__(self, db: Database) -> None:
        self.db = db
        self.runs = 0

    async def run(self, unit: Any, **kwargs: Any) -> Any:
        self.runs += 1
        return await self.db.run(unit, **kwargs)


def client_for(provider: Any) -> httpx.AsyncClient:
    routes = subscription_routes(
        lambda: provider, NODES, BASE + "/", SUPPORT, clock=Clock(NOW), titles={"ru": "Атлас"}
    )
    return httpx.AsyncClient(
        transport=httpx.ASGITransport(app=Starlette(routes=routes)), base_url="http://atlas.test"
    )


@pytest.fixture
async def served(db: Database) -> AsyncIterator[tuple[httpx.AsyncClient, CountingDb]]:
    counting = CountingDb(db)
    async with client_for(counting) as client:
        yield client, counting


async def trial(db: Database, user_id: int, language: str) -> tuple[str, str]:
    await db.run(
        register_user,
        user_id=user_id,
        username=None,
        first_name="U",
        language=language,
        start_payload=None,
        now=NOW,
    )
    view = await db.run(start_trial, user_id=user_id, trial_days=3, now=NOW)
    return view.token, str(view.key_uuid)


async def test_an_active_subscription_lists_every_enabled_node(
    db: Database, served: tuple[httpx.AsyncClient, CountingDb]
) -> None:
    client, _ = served
    token, key = await trial(db, 7, "en")
    response = await client.get(f"/sub/{token}")
    assert response.status_code == 200
    expires = int((NOW + dt.timedelta(days=3)).timestamp())
    assert response.headers["subscription-userinfo"] == f"upload=0; download=0; total=0; expire={expires}"
    assert response.headers["profile-title"] == "base64:" + base64.b64encode(b"Atlas VPN").decode()
    assert response.headers["profile-update-interval"] == "12"
    assert response.headers["support-url"] == SUPPORT
    assert response.headers["content-type"].startswith("text/plain")
    assert response.headers["cache-control"] == "no-store"
    links = [parse_vless_link(line) for line in base64.b64decode(response.content).decode().split("\n")]
    assert [(link.uuid, link.host, link.port, link.security) for link in links] == [
        (key, "ams.example.com", 443, "reality"),
        (key, "2001:db8::1", 8443, "tls"),
    ]
    assert links[0].label == "Amsterdam" and links[0].param("flow") == "xtls-rprx-vision"


async def test_the_title_follows_the_users_language(
    db: Database, served: tuple[httpx.AsyncClient, CountingDb]
) -> None:
    client, _ = served
    token, _ = await trial(db, 8, "ru")
    response = await client.get(f"/sub/{token}")
    assert response.headers["profile-title"] == "base64:" + base64.b64encode("Атлас".encode()).decode()


@pytest.mark.parametrize("token", ["short", "x" * 21, "a" * 22 + "!", "a" * 65, "..%2F..%2Fetc"])
async def test_a_malformed_token_is_404_without_a_database_lookup(token: str) -> None:
    class NoDatabase:
        async def run(self, unit: Any, **kwargs: Any) -> Any:
            raise AssertionError("a malformed token reached the database")

    async with client_for(NoDatabase()) as client:
        assert (await client.get(f"/sub/{token}")).status_code == 404
        assert (await client.get(f"/sub/{token}/qr.png")).status_code == 404


async def test_an_unknown_token_is_404(served: tuple[httpx.AsyncClient, CountingDb]) -> None:
    client, counting = served
    response = await client.get("/sub/" + "A" * 32)
    assert response.status_code == 404
    assert response.text == "not found\n"
    assert counting.runs == 1


async def test_an_expired_subscription_is_an_empty_list_with_its_expiry(
    db: Database, served: tuple[httpx.AsyncClient, CountingDb]
) -> None:
    client, _ = served
    token, _ = await trial(db, 9, "en")
    expiry = NOW + dt.timedelta(days=3)
    assert (await db.run(expire_due, now=expiry + dt.timedelta(seconds=1), limit=10)).expired == 1
    response = await client.get(f"/sub/{token}")
    assert response.status_code == 200
    assert response.content == b""
    assert response.headers["subscription-userinfo"].endswith(f"expire={int(expiry.timestamp())}")


async def test_the_qr_code_is_a_png_of_the_subscription_url(
    db: Database, served: tuple[httpx.AsyncClient, CountingDb]
) -> None:
    client, _ = served
    token, _ = await trial(db, 10, "en")
    response = await client.get(f"/sub/{token}/qr.png")
    assert response.status_code == 200
    assert response.headers["content-type"] == "image/png"
    assert response.content.startswith(b"\x89PNG\r\n\x1a\n")
    assert subscription_url(BASE, token) == f"{BASE}/sub/{token}"
    assert (await client.get("/sub/" + "B" * 32 + "/qr.png")).status_code == 404


async def test_database_trouble_is_503_so_clients_keep_their_list() -> None:
    class Down:
        async def run(self, unit: Any, **kwargs: Any) -> Any:
            raise DatabaseUnavailable("connection refused")

    async with client_for(Down()) as client:
        response = await client.get("/sub/" + "A" * 32)
    assert response.status_code == 503
    assert response.headers["retry-after"] == "30"


def test_bad_arguments_fail_at_assembly() -> None:
    with pytest.raises(ValueError, match="public_base_url"):
        subscription_routes(lambda: None, NODES, "ftp://x", None, clock=None)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="support_url"):
        subscription_routes(lambda: None, NODES, BASE, "javascript:alert(1)", clock=None)  # type: ignore[arg-type]
