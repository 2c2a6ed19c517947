"""The subscription page in a real headless browser (chromium), served by the real web server.

Chromium sends its own User-Agent and ``Accept`` headers, so these tests also prove that a real
browser is recognised and gets the page (not base64). The DOM after load shows the status, the
expiry, the QR code and the import buttons; ``data-js="on"`` shows the page's one script ran under
its Content-Security-Policy (a wrong hash would block it and leave the copy button hidden).
"""

from __future__ import annotations

import datetime as dt
import html
import re
import struct
from pathlib import Path
from urllib.parse import quote

import trio
from starlette.applications import Starlette

from atlas.clock import Clock
from atlas.storage import Database
from atlas.storage.units.expiry import expire_due
from atlas.storage.units.subscriptions import start_trial
from atlas.storage.units.users import register_user
from atlas.vpn.nodes import NodeConfig
from atlas.web.server import serve_asgi
from atlas.web.subscription import subscription_routes
from tests._browser import dump_dom, screenshot
from tests._vpn_support import free_ports

NOW = dt.datetime(2025, 3, 1, 12, 0, tzinfo=dt.UTC)
NODES = (
    NodeConfig(
        name="ams",
        agent_url="http://10.0.0.1:1",
        token="t" * 16,
        public_host="ams.example.com",
        port=443,
        sni="www.example.com",
        pbk="A" * 43,
        sid="ab",
        label="Amsterdam",
    ),
)
SUPPORT = "https://t.me/atlas_support"


async def serve(nursery: trio.Nursery, db: Database) -> str:
    # The public base URL is where the server really is, so the page's links are fetchable.
    (port,) = free_ports(1)
    base = f"http://127.0.0.1:{port}"
    routes = subscription_routes(
        lambda: db,
        NODES,
        base,
        SUPPORT,
        clock=Clock(NOW),
        bot_username="atlas_bot",
        titles={"ru": "Атлас"},
    )
    await nursery.start(serve_asgi, Starlette(routes=routes), "127.0.0.1", port)
    return base


async def subscription(db: Database, user_id: int, language: str) -> str:
    await db.run(
        register_user,
        user_id=user_id,
        username=None,
        first_name="U",
        language=language,
        start_payload=None,
        now=NOW,
    )
    return (await db.run(start_trial, user_id=user_id, trial_days=3, now=NOW)).token


def element(dom: str, element_id: str) -> str:
    found = re.search(rf'<(\w+)[^>]*\bid="{element_id}"[^>]*>(.*?)</\1>', dom, re.S)
    assert found is not None, f"no element #{element_id}"
    return html.unescape(re.sub(r"<[^>]+>", " ", found.group(2))).strip()


def hrefs(dom: str) -> dict[str, str]:
    return {
        html.unescape(app): html.unescape(href)
        for href, app in re.findall(r'<a href="([^"]+)" data-app="([^"]+)"', dom)
    }


async def test_an_active_subscription_page_in_chromium(
    db: Database, nursery: trio.Nursery, tmp_path: Path
) -> None:
    base = await serve(nursery, db)
    token = await subscription(db, 1, "en")
    url = f"{base}/sub/{token}"
    dom = await dump_dom(url)
    assert re.search(r'<html[^>]*data-js="on"', dom), "the page's script did not run (CSP hash?)"
    assert element(dom, "status") == "Active"
    assert "2025-03-04" in element(dom, "state") and "Days left: 3" in element(dom, "state")
    assert "0 B used · unlimited" in element(dom, "traffic")
    assert "Amsterdam" in element(dom, "servers")
    assert re.search(r'<img id="qr" alt="QR" src="data:image/png;base64,[A-Za-z0-9+/=]{200,}"', dom)
    links = hrefs(dom)
    assert links["v2rayNG"] == f"v2rayng://install-config?url={quote(url, safe='')}#Atlas%20VPN"
    assert links["Hiddify"] == f"hiddify://import/{url}#Atlas%20VPN"
    assert (
        links["sing-box"]
        == f"sing-box://import-remote-profile?url={quote(url + '/singbox', safe='')}#Atlas%20VPN"
    )
    assert links["Clash / Mihomo"].startswith(f"clash://install-config?url={quote(url + '/clash', safe='')}")
    assert links["Happ"] == f"happ://add/{url}"
    assert re.search(rf'<input id="url" readonly="" value="{re.escape(url)}"', dom)
    assert 'id="renew" href="https://t.me/atlas_bot"' in dom

    png = await screenshot(url, trio.Path(tmp_path / "page.png"))
    assert png.startswith(b"\x89PNG\r\n\x1a\n")
    width, height = struct.unpack(">II", png[16:24])
    assert (width, height) == (412, 1400)
    assert len(png) > 20_000, "the screenshot looks blank"


async def test_an_expired_subscription_page_speaks_russian(db: Database, nursery: trio.Nursery) -> None:
    base = await serve(nursery, db)
    token = await subscription(db, 2, "ru")
    await db.run(expire_due, now=NOW + dt.timedelta(days=4), limit=10)
    dom = await dump_dom(f"{base}/sub/{token}")
    assert '<html lang="ru"' in dom
    assert element(dom, "status") == "Истекла"
    assert "Продлите подписку в боте" in element(dom, "note")
    assert "04.03.2025" in element(dom, "state")
    assert 'id="servers"' not in dom  # placeholders are for apps, not listed as servers
    assert "<title>Атлас</title>" in dom
