"""The whole tree as ``atlas run`` builds it, for tests: settings, services, an optional emulated bot."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass

import trio
import trio.lowlevel

from atlas.clock import Clock
from atlas.payments import CryptoPayClient
from atlas.runtime.app import close_clients, make_services, serve_tree
from atlas.runtime.services import Services
from atlas.runtime.settings import load_settings
from atlas.supervision import ChildSpec, Supervisor
from atlas.telegram.session import make_bot
from atlas.testing.botapi import BotApiEmulator
from atlas.vpn import Fleet


@dataclass
class RunningTree:
    """The running tree: its services, its root supervisor, and the emulator when there is a bot."""

    services: Services
    root: Supervisor
    emulator: BotApiEmulator | None
    hard_exits: list[int]
    """Exit codes the root asked for (``atlas run`` would have ended the process with ``os._exit``)."""


@asynccontextmanager
async def running_tree(
    database: str,
    *,
    emulator: BotApiEmulator | None = None,
    emulator_url: str | None = None,
    extra_workers: Sequence[ChildSpec] = (),
    clock: Clock | None = None,
    **settings: object,
) -> AsyncIterator[RunningTree]:
    """Run the tree on ``database`` for the block; with ``emulator``, the bot talks to it.

    ``settings`` override :func:`load_settings` (``http_port`` defaults to 0). ``emulator_url``: the
    emulator is already served there (several trees sharing one bot), so it is not served again.
    ``clock``: the business clock (default: ``Clock(speed=clock_speed)`` anchored now, as ``atlas
    run`` makes it). Nodes from a ``nodes_file`` get a :class:`Fleet` and a ``cryptopay_token`` a
    Crypto Pay client, as ``run_app`` gives them. On exit the tree is stopped and every task of the
    block is cancelled.
    """
    settings.setdefault("http_port", 0)
    async with trio.open_nursery() as nursery:
        if emulator is not None:
            api = emulator_url if emulator_url is not None else await nursery.start(emulator.serve)
            settings.update(bot_token=emulator.token, telegram_api_base=api)
        services = make_services(load_settings(database_url=database, **settings), clock)
        if emulator is not None:
            services.bot = make_bot(emulator.token, str(settings["telegram_api_base"]))
        if services.nodes:
            services.fleet = Fleet([node for node in services.nodes if node.enabled])
        crypto = services.settings.cryptopay_token
        if crypto is not None:
            services.cryptopay = CryptoPayClient(
                crypto.get_secret_value(),
                network=services.settings.cryptopay_network,
                base_url=services.settings.cryptopay_base_url,
            )
        stop = trio.Event()
        # Never os._exit the test process: a root that gives up or is stuck is recorded, and the
        # block fails with it below (a hard exit would end the whole pytest run mid-suite).
        hard_exits: list[int] = []
        root = await nursery.start(
            lambda task_status: serve_tree(
                services, database, stop=stop, extra_workers=extra_workers,
                hard_exit=hard_exits.append, task_status=task_status,
            )
        )
        try:
            yield RunningTree(services, root, emulator, hard_exits)
            assert not hard_exits, f"the root asked for a hard exit {hard_exits}: it gave up or is stuck"
        finally:
            stop.set()
            await trio.lowlevel.checkpoint()
            nursery.cancel_scope.cancel()
            await close_clients(services)
