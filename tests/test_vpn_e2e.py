"""End to end through the database: a key issued by Atlas carries real traffic through a real core.

A trial started through the units of work → the ``vpn_controller`` converges the key onto a real
``atlas node`` agent driving a real V2Ray core → ``/sub/<token>``, served over HTTP, hands out the
share link → a second V2Ray process, configured from that link only, fetches a page through the
tunnel. Then the subscription expires, the controller converges, and the same client is refused;
the core restarts from the file the agent keeps, and the other, still valid key works again.

Needs Debian's ``v2ray`` (4.34); the test set-up installs it. Fails, never skips, when missing.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import random
from pathlib import Path

import httpx
import trio
from pydantic import SecretStr
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from atlas.actors.vpn_controller import ReconcileReport, VpnController
from atlas.clock import Clock
from atlas.storage import Database
from atlas.storage.units.expiry import expire_due
from atlas.storage.units.subscriptions import start_trial
from atlas.storage.units.users import register_user
from atlas.vpn import Fleet, NodeConfig, VlessLink, parse_vless_link
from atlas.vpn.agent import run_agent
from atlas.vpn.agent_settings import NodeAgentSettings
from atlas.vpn.core_config import render_client_config, render_server_config
from atlas.vpn.core_process import ManagedCore, core_command
from atlas.web.server import serve_asgi
from atlas.web.subscription import subscription_routes
from tests._vpn_support import free_ports

TAG = "vless-in"
TOKEN = "e2e-node-token-0123456789"
PAGE = "hello from behind the node"


async def fetch_through(proxy_port: int, url: str) -> httpx.Response:
    # A fresh client per fetch: a kept-alive tunnel would outlive a revoked user (the core checks
    # users at handshake only).
    proxy = f"http://127.0.0.1:{proxy_port}"
    async with httpx.AsyncClient(proxy=proxy, trust_env=False, timeout=5) as client:
        return await client.get(url)


async def assert_fetch_fails(proxy_port: int, url: str) -> None:
    try:
        response = await fetch_through(proxy_port, url)
    except httpx.HTTPError:
        return
    assert response.status_code != 200 or response.text != PAGE, "the revoked key still tunnels"


async def start_client_core(nursery: trio.Nursery, binary: str, directory: Path, link: VlessLink) -> int:
    """A V2Ray client configured from nothing but the share link; returns its HTTP proxy port."""
    assert link.security == "none" and link.transport == "tcp"
    (http_port,) = free_ports(1)
    config = directory / f"client-{http_port}.json"
    config.write_text(
        json.dumps(
            render_client_config(
                server_host=link.host,
                server_port=link.port,
                uuid=link.uuid,
                http_port=http_port,
                flow=link.param("flow"),
            )
        )
    )
    client = ManagedCore(core_command(binary, config), ready=[("127.0.0.1", http_port)])
    await client.start(nursery)
    return http_port


async def sign_up(db: Database, user_id: int, now: dt.datetime) -> str:
    """A user who starts a trial at ``now``; returns their subscription token."""
    await db.run(
        register_user,
        user_id=user_id,
        username=None,
        first_name="E2E",
        language="en",
        start_payload=None,
        now=now,
    )
    view = await db.run(start_trial, user_id=user_id, trial_days=3, now=now)
    return view.token


async def test_an_issued_key_tunnels_until_it_expires_and_survives_a_core_restart(
    db: Database, nursery: trio.Nursery, tmp_path: Path, v2ray_binary: str
) -> None:
    with trio.fail_after(90):

        async def page(request: Request) -> PlainTextResponse:
            return PlainTextResponse(PAGE)

        page_url = await nursery.start(serve_asgi, Starlette(routes=[Route("/", page)]))

        # The node: a real core and the real agent that drives it.
        vless_port, api_port = free_ports(2)
        server_config = tmp_path / "server.json"
        server_config.write_text(json.dumps(render_server_config(vless_port=vless_port, api_port=api_port)))
        core = ManagedCore(
            core_command(v2ray_binary, server_config, "v2ray"),
            ready=[("127.0.0.1", api_port), ("127.0.0.1", vless_port)],
        )
        await core.start(nursery)
        settings = NodeAgentSettings(
            token=SecretStr(TOKEN),
            listen_port=0,
            core_api=f"127.0.0.1:{api_port}",
            flavour="v2ray",
            inbound_tag=TAG,
            config_path=server_config,
        )
        agent_url = await nursery.start(run_agent, settings)
        node = NodeConfig(
            name="local",
            agent_url=agent_url,
            token=TOKEN,
            public_host="127.0.0.1",
            port=vless_port,
            security="none",
            label="Local",
        )

        # Atlas: two users start trials; the second a day later, so it outlives the first.
        clock = Clock()
        now = clock.now()
        expiring = await sign_up(db, 501, now)
        staying = await sign_up(db, 502, now + dt.timedelta(days=1))
        sub_url = await nursery.start(
            serve_asgi,
            Starlette(routes=subscription_routes(lambda: db, [node], "http://127.0.0.1", None, clock=clock)),
        )

        async with Fleet([node], timeout=10) as fleet:
            controller = VpnController(
                db=lambda: db, fleet=fleet, clock=clock, rng=random.Random(1), reconcile_every=None
            )
            report = await controller.converge()
            assert (report.converged, report.failed, report.notified) == (2, 0, 2)

            # The links come from /sub over HTTP, and nothing else configures the clients.
            links = {}
            async with httpx.AsyncClient(base_url=sub_url, trust_env=False, timeout=5) as web:
                for token in (expiring, staying):
                    response = await web.get(f"/sub/{token}")
                    assert response.status_code == 200
                    (line,) = base64.b64decode(response.content).decode().split("\n")
                    links[token] = parse_vless_link(line)
            proxies = {
                token: await start_client_core(nursery, v2ray_binary, tmp_path, link)
                for token, link in links.items()
            }
            for token in (expiring, staying):
                response = await fetch_through(proxies[token], page_url)
                assert (response.status_code, response.text) == (200, PAGE)

            # The first trial ends; the controller converges; the same client is refused.
            ended = await db.run(expire_due, now=now + dt.timedelta(days=3, minutes=1), limit=10)
            assert ended.expired == 1
            report = await controller.converge()
            assert (report.converged, report.failed) == (1, 0)
            await assert_fetch_fails(proxies[expiring], page_url)
            async with httpx.AsyncClient(base_url=sub_url, trust_env=False, timeout=5) as web:
                # Expired: no servers, only placeholders that say so and connect nowhere.
                body = (await web.get(f"/sub/{expiring}")).content
                lines = base64.b64decode(body).decode().split("\n")
                placeholders = [parse_vless_link(line) for line in lines]
                assert placeholders[0].label.startswith("⌛")
                assert {(link.host, link.port) for link in placeholders} == {("0.0.0.0", 1)}

            # The core restarts from the file the agent keeps: the valid key works again, the
            # expired one stays refused, and a full reconcile finds nothing to repair.
            await core.stop()
            await core.start(nursery)
            response = await fetch_through(proxies[staying], page_url)
            assert (response.status_code, response.text) == (200, PAGE)
            await assert_fetch_fails(proxies[expiring], page_url)
            assert await controller.reconcile() == ReconcileReport(0, 0, ())
