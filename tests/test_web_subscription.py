"""``/sub/<token>`` and its QR code, served from the database through the routes' unit of work."""

from __future__ import annotations

import base64
import datetime as dt
import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
import yaml
from starlette.applications import Starlette

from atlas.clock import Clock
from atlas.storage import Database, DatabaseUnavailable
from atlas.storage.units.admin import admin_set_banned
from atlas.storage.units.expiry import expire_due
from atlas.storage.units.subscriptions import start_trial
from atlas.storage.units.users import register_user
from atlas.vpn import NodeConfig, parse_vless_link
from atlas.web.subscription import subscription_routes, subscription_url
from tests._client_agents import REAL_USER_AGENTS

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


ANNOUNCE = "Новые серверы в Амстердаме"


def client_for(provider: Any) -> httpx.AsyncClient:
    routes = subscription_routes(
        lambda: provider,
        NODES,
        BASE + "/",
        SUPPORT,
        clock=Clock(NOW),
        titles={"ru": "Атлас"},
        bot_username="@atlas_bot",
        announce=ANNOUNCE,
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


async def test_an_expired_subscription_is_a_placeholder_that_says_so_with_its_expiry(
    db: Database, served: tuple[httpx.AsyncClient, CountingDb]
) -> None:
    client, _ = served
    token, _ = await trial(db, 9, "en")
    expiry = NOW + dt.timedelta(days=3)
    assert (await db.run(expire_due, now=expiry + dt.timedelta(seconds=1), limit=10)).expired == 1
    response = await client.get(f"/sub/{token}", headers={"user-agent": "v2rayNG/1.8.19"})
    assert response.status_code == 200
    links = [parse_vless_link(line) for line in base64.b64decode(response.content).decode().split("\n")]
    assert [link.label for link in links] == [
        "⌛ Subscription expired — renew in @atlas_bot",
        "📅 Expired on 2025-03-04",
    ]
    assert {(link.host, link.port) for link in links} == {("0.0.0.0", 1)}
    assert response.headers["subscription-userinfo"].endswith(f"expire={int(expiry.timestamp())}")


async def test_placeholders_speak_the_users_language(
    db: Database, served: tuple[httpx.AsyncClient, CountingDb]
) -> None:
    client, _ = served
    token, _ = await trial(db, 19, "ru")
    await db.run(expire_due, now=NOW + dt.timedelta(days=4), limit=10)
    response = await client.get(f"/sub/{token}/clash")
    names = [proxy["name"] for proxy in yaml.safe_load(response.text)["proxies"]]
    assert names == ["⌛ Подписка истекла — продлите в @atlas_bot", "📅 Истекла 04.03.2025"]


async def test_a_banned_user_gets_the_blocked_placeholder_in_every_format(
    db: Database, served: tuple[httpx.AsyncClient, CountingDb]
) -> None:
    client, _ = served
    token, _ = await trial(db, 20, "en")
    await db.run(admin_set_banned, admin_id=1, user_id=20, banned=True, reason="abuse", now=NOW)
    expected = "⛔ Access blocked — write to support in @atlas_bot"
    for fmt in ("base64", "clash", "singbox", "xray"):
        response = await client.get(f"/sub/{token}/{fmt}")
        assert response.status_code == 200
        assert names_in(fmt, response.content) == [expected], fmt


def names_in(fmt: str, body: bytes) -> list[str]:
    if fmt == "base64":
        return [parse_vless_link(line).label for line in base64.b64decode(body).decode().split("\n")]
    if fmt == "clash":
        return [proxy["name"] for proxy in yaml.safe_load(body.decode())["proxies"]]
    if fmt == "singbox":
        return [o["tag"] for o in json.loads(body)["outbounds"] if o["type"] == "vless"]
    return [config["remarks"] for config in json.loads(body)]


CLIENTS = [
    ("v2rayNG/1.8.19", "text/plain", "base64"),
    ("clash-verge/v2.0.3", "text/yaml", "clash"),
    ("Stash/2.4.7 Clash/1.9.0", "text/yaml", "clash"),
    ("SFI/1.12.12 (Build 2; sing-box 1.12.12; language en_US)", "application/json", "singbox"),
    ("HiddifyNext/2.5.7 (android) like ClashMeta v2ray sing-box", "application/json", "singbox"),
    ("v2rayN/7.10.5", "application/json", "xray"),
]


@pytest.mark.parametrize(("user_agent", "content_type", "fmt"), CLIENTS)
async def test_each_client_gets_its_format_with_the_same_headers(
    db: Database, served: tuple[httpx.AsyncClient, CountingDb], user_agent: str, content_type: str, fmt: str
) -> None:
    client, _ = served
    token, _ = await trial(db, 30, "en")
    response = await client.get(f"/sub/{token}", headers={"user-agent": user_agent, "accept": "*/*"})
    assert response.status_code == 200
    assert response.headers["content-type"].startswith(content_type)
    assert names_in(fmt, response.content) == ["Amsterdam", "fra"]
    forced = await client.get(f"/sub/{token}/{fmt}", headers={"user-agent": "curl/8.5.0"})
    assert forced.content == response.content
    expires = int((NOW + dt.timedelta(days=3)).timestamp())
    assert response.headers["subscription-userinfo"] == f"upload=0; download=0; total=0; expire={expires}"
    assert response.headers["profile-web-page-url"] == f"{BASE}/sub/{token}"
    assert response.headers["announce"] == "base64:" + base64.b64encode(ANNOUNCE.encode()).decode()
    assert response.headers["support-url"] == SUPPORT
    assert response.headers["content-disposition"] == 'attachment; filename="Atlas_VPN"'
    assert response.headers["profile-update-interval"] == "12"


CONTENT_TYPES = {
    "base64": "text/plain",
    "clash": "text/yaml",
    "singbox": "application/json",
    "xray": "application/json",
}


async def test_every_real_client_user_agent_gets_its_format_over_http(
    db: Database, served: tuple[httpx.AsyncClient, CountingDb]
) -> None:
    client, _ = served
    token, _ = await trial(db, 32, "en")
    for user_agent, fmt in REAL_USER_AGENTS:
        response = await client.get(f"/sub/{token}", headers={"user-agent": user_agent, "accept": "*/*"})
        assert response.headers["content-type"].startswith(CONTENT_TYPES[fmt.value]), user_agent
        assert names_in(fmt.value, response.content) == ["Amsterdam", "fra"], user_agent


async def test_a_browser_gets_the_page_and_an_unknown_format_is_404(
    db: Database, served: tuple[httpx.AsyncClient, CountingDb]
) -> None:
    client, counting = served
    token, _ = await trial(db, 31, "en")
    page = await client.get(
        f"/sub/{token}", headers={"user-agent": "Mozilla/5.0 Chrome/131.0", "accept": "text/html,*/*;q=0.8"}
    )
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    assert "script-src 'sha256-" in page.headers["content-security-policy"]
    assert page.headers["referrer-policy"] == "no-referrer"
    assert "Active" in page.text and "v2rayng://install-config?url=" in page.text
    runs = counting.runs
    assert (await client.get(f"/sub/{token}/yaml")).status_code == 404
    assert counting.runs == runs  # refused before the database


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
    with pytest.raises(ValueError, match="bot_username"):
        subscription_routes(lambda: None, NODES, BASE, None, clock=None, bot_username="a b")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="announce"):
        subscription_routes(lambda: None, NODES, BASE, None, clock=None, announce="x" * 201)  # type: ignore[arg-type]
