"""The driver and the agent against a REAL V2Ray core, and real traffic through a VLESS tunnel.

Needs the ``v2ray`` executable (Debian/Ubuntu package ``v2ray``, V2Ray 4.34); the project's test
set-up installs it. These tests fail, never skip, when it is missing.
"""

from __future__ import annotations

import json
import uuid as uuidlib
from pathlib import Path

import httpx
import pytest
import trio
from pydantic import SecretStr
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from atlas.vpn.agent import run_agent
from atlas.vpn.agent_settings import NodeAgentSettings
from atlas.vpn.core import CoreDriver
from atlas.vpn.core_config import render_client_config
from atlas.vpn.core_errors import (
    CoreError,
    CoreInboundNotFound,
    CoreRejected,
    CoreUnavailable,
    CoreUserExists,
    CoreUserNotFound,
)
from atlas.vpn.core_process import ManagedCore, core_command
from atlas.web.server import serve_asgi
from tests._vpn_support import ServerCore, free_ports, start_server_core

TAG = "vless-in"
TOKEN = "test-token-0123456789abcdef"
PAGE = "hello through the tunnel"


@pytest.fixture
async def server(nursery: trio.Nursery, tmp_path: Path, v2ray_binary: str) -> ServerCore:
    return await start_server_core(nursery, tmp_path, v2ray_binary)


def new_uuid() -> str:
    return str(uuidlib.uuid4())


# --- the driver -------------------------------------------------------------------------------


async def test_add_duplicate_remove_missing(server: ServerCore) -> None:
    async with CoreDriver(server.api, "v2ray", TAG, timeout=5) as driver:
        await driver.ping()
        await driver.add_user("alice@atlas", new_uuid())
        with pytest.raises(CoreUserExists, match="already exists"):
            await driver.add_user("ALICE@atlas", new_uuid())  # the core compares emails case-insensitively
        await driver.remove_user("alice@atlas")
        with pytest.raises(CoreUserNotFound, match="not found"):
            await driver.remove_user("alice@atlas")
        await driver.add_user("alice@atlas", new_uuid())  # gone for real: adding works again
        assert await driver.query_traffic("alice@atlas") == (0, 0)  # no traffic yet: no counters


async def test_unknown_inbound_tag(server: ServerCore) -> None:
    async with CoreDriver(server.api, "v2ray", "no-such-inbound", timeout=5) as driver:
        with pytest.raises(CoreInboundNotFound, match="no-such-inbound"):
            await driver.add_user("bob@atlas", new_uuid())
        with pytest.raises(CoreInboundNotFound):
            await driver.remove_user("bob@atlas")


async def test_wrong_flavour_is_rejected_as_unimplemented(server: ServerCore) -> None:
    async with CoreDriver(server.api, "xray", TAG, timeout=5) as driver:
        with pytest.raises(CoreRejected) as info:
            await driver.add_user("carol@atlas", new_uuid())
    assert info.value.status == 12  # UNIMPLEMENTED: the xray.* service does not exist on V2Ray


async def test_wrong_port_and_closed_port(server: ServerCore) -> None:
    async with CoreDriver(f"127.0.0.1:{server.vless_port}", "v2ray", TAG, timeout=5) as driver:
        with pytest.raises(CoreError):  # the VLESS inbound hangs up on HTTP/2
            await driver.ping()
    (closed,) = free_ports(1)
    async with CoreDriver(f"127.0.0.1:{closed}", "v2ray", TAG, timeout=5) as driver:
        with pytest.raises(CoreUnavailable, match="cannot connect"):
            await driver.ping()


async def test_driver_reconnects_after_a_core_restart(server: ServerCore, nursery: trio.Nursery) -> None:
    async with CoreDriver(server.api, "v2ray", TAG, timeout=5) as driver:
        await driver.add_user("dave@atlas", new_uuid())
        await server.core.stop()
        with pytest.raises(CoreUnavailable):
            await driver.ping()
        await server.core.start(nursery)
        # Users added through the API only are gone: the restarted core loaded its config file.
        with pytest.raises(CoreUserNotFound):
            await driver.remove_user("dave@atlas")


async def test_concurrent_calls_on_one_connection(server: ServerCore) -> None:
    async with CoreDriver(server.api, "v2ray", TAG, timeout=5) as driver:
        async with trio.open_nursery() as calls:
            for i in range(30):
                calls.start_soon(driver.add_user, f"user{i}@atlas", new_uuid())
        async with trio.open_nursery() as calls:
            for i in range(30):
                calls.start_soon(driver.remove_user, f"user{i}@atlas")
        with pytest.raises(CoreUserNotFound):
            await driver.remove_user("user0@atlas")


# --- the tunnel -------------------------------------------------------------------------------


async def fetch_through(proxy_port: int, url: str) -> httpx.Response:
    # A fresh client per fetch: a kept-alive tunnel would outlive a revoked user (the core checks
    # users at handshake only).
    async with httpx.AsyncClient(
        proxy=f"http://127.0.0.1:{proxy_port}", trust_env=False, timeout=5
    ) as client:
        return await client.get(url)


async def test_tunnel_through_a_real_core(nursery: trio.Nursery, tmp_path: Path, v2ray_binary: str) -> None:
    with trio.fail_after(45):
        # A web page only reachable from the node's side.
        async def page(request: Request) -> PlainTextResponse:
            return PlainTextResponse(PAGE)

        page_url = await nursery.start(serve_asgi, Starlette(routes=[Route("/", page)]))

        server = await start_server_core(nursery, tmp_path, v2ray_binary)
        settings = NodeAgentSettings(
            token=SecretStr(TOKEN),
            listen_port=0,
            core_api=server.api,
            flavour="v2ray",
            inbound_tag=TAG,
            config_path=server.config_path,
        )
        agent_url = await nursery.start(run_agent, settings)
        agent = httpx.AsyncClient(
            base_url=agent_url, headers={"authorization": f"Bearer {TOKEN}"}, trust_env=False, timeout=10
        )

        key = new_uuid()
        put = await agent.put("/v1/users/tunnel@atlas", json={"uuid": key, "flow": ""})
        assert put.status_code == 200, put.text
        assert put.json() == {"changed": True}

        (http_port,) = free_ports(1)
        client_config = tmp_path / "client.json"
        client_config.write_text(
            json.dumps(
                render_client_config(
                    server_host="127.0.0.1", server_port=server.vless_port, uuid=key, http_port=http_port
                )
            )
        )
        client_core = ManagedCore(core_command(v2ray_binary, client_config), ready=[("127.0.0.1", http_port)])
        await client_core.start(nursery)

        # 1. The key works: the page comes back through client core -> VLESS -> server core.
        response = await fetch_through(http_port, page_url)
        assert response.status_code == 200
        assert response.text == PAGE
        traffic = (await agent.get("/v1/users/tunnel@atlas/traffic")).json()
        assert traffic["uplink"] > 0
        assert traffic["downlink"] >= len(PAGE)

        # 2. Revoked: the same fetch fails.
        assert (await agent.delete("/v1/users/tunnel@atlas")).json() == {"changed": True}
        await assert_fetch_fails(http_port, page_url)

        # 3. Granted again, then the server core restarts from the file the agent maintains
        #    (the agent is not called): the user survived in the file.
        assert (await agent.put("/v1/users/tunnel@atlas", json={"uuid": key})).json() == {"changed": True}
        await server.core.stop()
        assert (await agent.get("/v1/health")).json()["core"] == "down"  # it really stopped
        await server.core.start(nursery)
        response = await fetch_through(http_port, page_url)
        assert response.status_code == 200
        assert response.text == PAGE

        # 4. A different key for the same email replaces the old one: the old key stops working.
        assert (await agent.put("/v1/users/tunnel@atlas", json={"uuid": new_uuid()})).json() == {
            "changed": True
        }
        await assert_fetch_fails(http_port, page_url)
        await agent.aclose()


async def assert_fetch_fails(http_port: int, url: str) -> None:
    try:
        response = await fetch_through(http_port, url)
    except httpx.HTTPError:
        return
    assert response.status_code != 200 or response.text != PAGE, "the revoked key still tunnels"
