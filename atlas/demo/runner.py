"""``atlas demo`` put together: the outside world, the tree exactly as ``atlas run`` builds it
(``serve_tree``), the crowd and the faults, the live view, then the summary and the invariants.

Order of a run::

    bridge → emulators + VPN node → embedded PostgreSQL → the tree (serve_tree)
      → the crowd and the faults, the view redrawing → drain (outbox sent, keys converged)
      → [--interactive: stay up until Ctrl-C] → stop the tree → audit a frozen database → summary
"""

from __future__ import annotations

import datetime as dt
import logging
import signal
from dataclasses import dataclass

import trio
from rich.console import Console

from atlas.actors.base import ActorError
from atlas.clock import Clock
from atlas.demo.clocks import demo_clock
from atlas.demo.counts import ShopCounts, shop_counts
from atlas.demo.crowd import Crowd, run_crowd
from atlas.demo.faults import Fault, FaultLog, FaultTargets, burst_size, run_faults
from atlas.demo.invariant_check import audit_world, corrupt_one_balance
from atlas.demo.observer import TreeObserver
from atlas.demo.options import DemoOptions
from atlas.demo.recovery import Evidence, judge
from atlas.demo.summary import EXIT_TREE_GAVE_UP, DemoSummary, exit_code, print_summary
from atlas.demo.tally import FLOWS, Tally
from atlas.demo.view import Frame, day_of, show
from atlas.demo.world import TRIAL_DAYS, World, open_world, prepare_data_dir
from atlas.payments import CryptoPayClient
from atlas.runtime.app import close_clients, serve_tree
from atlas.runtime.bridge import open_bridge
from atlas.runtime.database import database_server
from atlas.runtime.services import Services, make_services
from atlas.storage import StorageError
from atlas.storage.units.operator_view import operator_view
from atlas.telegram.session import make_bot
from atlas.testing.invariants import AuditReport
from atlas.vpn import Fleet

_log = logging.getLogger("atlas.demo")
_DRAIN_WITHIN = 120.0  # trio seconds for the last notices and key changes after the crowd is done
_COUNTS_EVERY = 1.0
_AUDIT_ATTEMPTS = 5  # trio seconds between the view's database counts


@dataclass
class _Live:
    """What the view shows, refreshed in the background (the view itself never waits)."""

    counts: ShopCounts | None = None


async def run_demo(options: DemoOptions, console: Console) -> int:
    """Run the demo; return its exit code (non-zero when an invariant failed)."""
    speed = options.business_speed()
    data_dir = prepare_data_dir(options.data_dir)
    clock = demo_clock(speed)
    console.print(f"atlas demo: data in {data_dir}, {options.users} users, {options.days} virtual days, "
                  f"business time ×{speed:,.0f}, seed {options.seed}", highlight=False)  # fmt: skip
    async with open_bridge(), trio.open_nursery() as outside:
        world = await open_world(outside, options, clock, data_dir)
        console.print(f"VPN node: {world.node.kind}", highlight=False)
        code = await _run_shop(world, options, clock, console)
        outside.cancel_scope.cancel()
    return code


def _services(world: World, clock: Clock) -> Services:
    settings = world.settings
    services = make_services(settings, clock)
    services.bot = make_bot(world.emulator.token, world.emulator.url)
    services.cryptopay = CryptoPayClient(
        _cryptopay_token(world),
        network=settings.cryptopay_network,
        base_url=settings.cryptopay_base_url,
    )
    services.fleet = Fleet([node for node in services.nodes if node.enabled])
    return services


def _cryptopay_token(world: World) -> str:
    token = world.settings.cryptopay_token
    assert token is not None  # open_world always sets it
    return token.get_secret_value()


async def _run_shop(world: World, options: DemoOptions, clock: Clock, console: Console) -> int:
    settings = world.settings
    horizon = dt.timedelta(days=options.days)
    async with database_server(settings) as dsn:
        services = _services(world, clock)
        observer = TreeObserver(services)
        tally, fault_log, live = Tally(), FaultLog(), _Live()
        crowd = Crowd(
            world.emulator, world.cryptopay, clock, horizon, dt.timedelta(days=TRIAL_DAYS),
            tally, options.seed, options.concurrency,
        )  # fmt: skip
        stop = trio.Event()
        tree_code: list[int] = []
        began = clock.now()

        def frame() -> Frame:
            return Frame(
                day=day_of(began, clock.now()), days=options.days, users_started=tally.users_started,
                users=options.users, counts=live.counts, messages=_messages(world),
                restarts=observer.restarts, crash_reports=observer.crash_reports,
                faults=[fault.value for fault in fault_log.injected], rows=observer.rows(),
            )  # fmt: skip

        try:
            async with trio.open_nursery() as tree:

                async def serve(*, task_status: trio.TaskStatus[object] = trio.TASK_STATUS_IGNORED) -> None:
                    tree_code.append(await serve_tree(services, dsn, stop=stop, task_status=task_status))
                    if not stop.is_set():  # the root gave up: there is nothing left to play against
                        tree.cancel_scope.cancel()

                await tree.start(serve)
                _print_urls(console, world)
                async with trio.open_nursery() as watchers:
                    watchers.start_soon(_refresh_counts, services, live)
                    watchers.start_soon(show, console, frame)
                    async with trio.open_nursery() as play:
                        targets = FaultTargets(
                            world.emulator, world.cryptopay, world.node, clock, burst_size(options.users)
                        )
                        play.start_soon(run_faults, targets, horizon, fault_log)
                        play.start_soon(run_crowd, crowd, options.users)
                    if options.corrupt_balance_for_test:
                        await services.require_db().run(corrupt_one_balance)
                    pending, report, node_keys = await _settle_and_audit(services, world)
                    counts = await services.require_db().run(shop_counts)
                    live.counts = counts
                    watchers.cancel_scope.cancel()
                if options.interactive:
                    await _stay_up(console, world)
                stop.set()
        finally:
            await close_clients(services)
    if not stop.is_set():  # the tree ended before the demo stopped it
        console.print(f"atlas demo: the root supervisor gave up; see {world.data_dir / 'atlas.log'}")
        return EXIT_TREE_GAVE_UP
    crash_at = fault_log.injected.get(Fault.INTAKE_CRASH, float("inf"))
    crypto_back_at = fault_log.ended.get(Fault.CRYPTOPAY_OUTAGE, float("inf"))
    evidence = Evidence(
        served_429=world.emulator.served_429,
        outbox_pending=pending[0],
        keys_pending=pending[1],
        node_keys=node_keys,
        cryptopay_paid_after_outage=sum(1 for at in crowd.cryptopay_paid_at if at > crypto_back_at),
        intake_restarts=sum(n for path, n in observer.restarts_by_path.items() if path.endswith("/intake")),
        replies_after_crash=sum(1 for s in world.emulator.send_stamps if s.accepted and s.time > crash_at),
    )
    summary = DemoSummary(
        users=options.users,
        counts=counts,
        flows={flow: tally.flows[flow] for flow in FLOWS},
        messages=_messages(world),
        restarts=observer.restarts,
        crash_reports=observer.crash_reports,
        restarts_by_actor=dict(observer.restarts_by_path),
        faults=judge(fault_log, evidence),
        invariants_ok=report.ok,
        violations=list(report.violations),
        audit_counts={key: int(value) for key, value in report.counts.items()},
        tree_exit_code=tree_code[0] if tree_code else 1,
        unanswered=tally.unanswered,
        node=world.node.kind,
    )
    console.print(f"data and the tree's log are kept in {world.data_dir}", highlight=False)
    print_summary(console, summary)
    return exit_code(summary)


def _messages(world: World) -> int:
    return sum(1 for stamp in world.emulator.send_stamps if stamp.accepted)


def _print_urls(console: Console, world: World) -> None:
    console.print(f"web chat:   {world.webchat_url}", highlight=False)
    console.print(f"status:     {world.web_url}/status", highlight=False)
    console.print(f"Bot API:    {world.emulator.url}   Crypto Pay: {world.settings.cryptopay_base_url}",
                  highlight=False)  # fmt: skip
    console.print(f"logs:       {world.data_dir / 'atlas.log'}", highlight=False)


async def _refresh_counts(services: Services, live: _Live) -> None:
    while True:
        db = services.db
        if db is not None:
            try:
                live.counts = await db.run(shop_counts)
            except StorageError as exc:
                # The view keeps the last counts while storage is away; the tree's log says why.
                _log.info("demo view: counts unavailable (%s)", type(exc).__name__)
        await trio.sleep(_COUNTS_EVERY)


async def _settle_and_audit(
    services: Services, world: World
) -> tuple[tuple[int, int], AuditReport, int]:
    """Drain, then audit while the tree runs; up to a few times, keeping the first clean audit.

    After the crowd has gone the workers still expire and renew as business time passes, so a key
    may be between "wanted absent" and "removed from the node" at the moment of an audit. Such a
    violation is gone a moment later; a broken balance or a doubled charge stays, and fails every
    attempt.
    """
    db = services.require_db()
    for _ in range(_AUDIT_ATTEMPTS):
        await _reconcile(services)
        pending = await _drain(services, world)
        report, node_keys = await audit_world(db, world, services.clock.now())
        if report.ok:
            break
        await trio.sleep(1.0)
    return pending, report, node_keys


async def _reconcile(services: Services) -> None:
    """Ask the VPN controller for a full reconcile, as an operator would before checking the nodes.

    Convergence alone leaves one kind of drift: a put the agent wrote to its file but could not
    apply to a stopped core fails, and if the key is revoked before the retry the node keeps it.
    The periodic reconcile removes such orphans, but it runs every 600 real seconds: weeks of the
    demo's business time.
    """
    controller = services.actors.get("vpn_controller")
    if controller is None:
        return
    try:
        report = await controller.call("reconcile", timeout=_DRAIN_WITHIN)
    except ActorError as exc:
        _log.warning("demo: the final reconcile did not complete (%s)", exc)
        return
    _log.info("demo: final reconcile: %s", report)


async def _drain(services: Services, world: World) -> tuple[int, int]:
    """Wait until no notice is pending and every key is as wanted on the node (or give up after
    a while); return the notices and keys still pending."""
    nodes = [world.node.config.name]
    pending = (-1, -1)  # unknown: the database did not answer in time
    with trio.move_on_after(_DRAIN_WITHIN):
        while True:
            view = await services.require_db().run(operator_view, now=services.clock.now(), nodes=nodes)
            pending = (view.outbox_pending, sum(view.keys_pending.values()))
            if pending == (0, 0):
                break
            await trio.sleep(0.5)
    return pending


async def _stay_up(console: Console, world: World) -> None:
    console.print(
        f"interactive: the shop stays up; chat with the bot at {world.webchat_url}. Ctrl-C ends it.",
        highlight=False,
    )
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async for _ in signals:
            return
