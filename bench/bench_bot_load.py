"""Benchmark: the bot under user load while the outbox sender works through a broadcast.

Issue 5: with the Bot API emulator feeding ``--rate`` updates/s (200) from ``--users`` users (1,000)
for ``--seconds`` (60) while the outbox sender works through a ``--broadcast``-message broadcast
(20,000): p50/p99 update handling latency, the sender's achieved rate as a ratio of its configured
rate, and the scheduler's longest step.

Everything runs in this one trio process, as in production: an embedded PostgreSQL (fsync off,
its own processes), the Bot API emulator (``enforce_limits=False``: it measures, it does not shape),
the real aiogram ``Bot`` over HTTP, the real dispatcher with the user routers behind a
``PollingIntake`` (with its advisory lock), and an ``OutboxSender`` at its default settings (30/s
global, 1/s per chat). The emulator shares the scheduler and the CPU with the bot, so its own work
(HTTP parsing, ~230 requests/s) is part of what is measured.

Phases:

1. set-up (not timed): migrate, sync a plan catalogue, insert the broadcast's users, the
   ``broadcasts`` row and its outbox rows (priority 1) in bulk SQL;
2. warm-up (not measured): each of the ``--users`` users sends ``/start`` once (registering them and
   giving them a menu to press), paced at ``--rate``; wait until all are handled;
3. the sender starts, ``--lead`` seconds later the measured window opens: a feeder injects updates
   on the trio clock at ``--rate`` (``/start``, main-menu button presses, plain text, drawn with
   ``--seed``) from random users, for ``--seconds``;
4. after the window, up to ``--drain`` seconds for the bot to finish what was offered.

Latency is reported two ways: **end to end** (the feeder's stamp when the update was queued at the
emulator → the end of aiogram's handling, taken by an outer middleware on the update observer, so
it includes waiting in the emulator for ``getUpdates``, the intake, the dispatcher's queues and the
handler's Bot API calls), and the dispatcher's own ``statistics()`` (handed over → handled). The
sender's rate counts accepted ``sendMessage`` calls to broadcast chats, as stamped by the emulator,
inside the window. Broadcast recipients are not among the interactive users, so the stamps of the
two streams never mix.

    .venv/bin/python bench/bench_bot_load.py [--rate 200] [--users 1000] [--seconds 60]
                                             [--broadcast 20000]
"""

from __future__ import annotations

import argparse
import datetime as dt
import logging
import math
import os
import platform
import random
import resource
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trio
from aiogram import BaseMiddleware
from aiogram.types import TelegramObject, Update

from atlas.actors.outbox_sender import OutboxSender, SenderSettings
from atlas.clock import Clock
from atlas.domain import Currency, Plan, PlanCatalog
from atlas.runtime.bridge import open_bridge
from atlas.storage import Database, DatabaseSettings, EmbeddedPostgres, Tx, migrate
from atlas.storage.units.broadcasts import BROADCAST_KIND
from atlas.storage.units.plans import sync_plans
from atlas.supervision import ChildContext, CrashReporter, RingSink, SlowStepInstrument
from atlas.telegram import (
    DispatchSettings,
    LatencyReservoir,
    PollingIntake,
    UpdateDispatcher,
    build_dispatcher,
    make_bot,
)
from atlas.telegram.callbacks import MenuAction, MenuCb
from atlas.telegram.config import BotConfig
from atlas.telegram.routers import build_user_routers
from atlas.testing.botapi import BotApiEmulator, EmulatedUser, ScriptError, max_in_window
from atlas.vpn import NodeConfig

BOT_USERNAME = "atlas_emulated_bot"
USER_BASE = 1_000_000  # interactive users: USER_BASE + 1 ...
BROADCAST_BASE = 5_000_000  # broadcast recipients: BROADCAST_BASE + 1 ... (disjoint)
CATALOG = PlanCatalog(
    [
        Plan("m1", 30, {Currency("RUB"): 10_000}, 50, {"ru": "месяц", "en": "month"}),
        Plan("m3", 90, {Currency("RUB"): 27_000}, 130, {"ru": "3 месяца", "en": "3 months"}),
    ]
)
CONFIG = BotConfig(
    currency="RUB",
    public_base_url="https://vpn.example.com",
    bot_username=BOT_USERNAME,
    nodes=(
        NodeConfig(
            name="ams",
            agent_url="http://10.0.0.1:8765",
            token="t" * 16,
            public_host="ams.example.com",
            port=443,
            sni="www.example.com",
            pbk="A" * 43,
            sid="ab",
            flow="xtls-rprx-vision",
            label="Amsterdam",
        ),
    ),
    support="@atlas_support",
)
# What a user presses from the main menu. Not the promo (its next text would be a code) nor the
# language switch (it changes later screens); the trial is pressed until each user has used it.
PRESSES = (
    MenuAction.SUBSCRIPTION,
    MenuAction.PLANS,
    MenuAction.TOPUP,
    MenuAction.REFERRAL,
    MenuAction.HELP,
    MenuAction.TRIAL,
    MenuAction.MENU,
)
TEXTS = ("hello", "how do I connect?", "price?", "vpn not working", "спасибо", "???")
BROADCAST_TEXT = "<b>News</b>: the Amsterdam node is twice as fast now. Open the menu to see your key."


# ---------------------------------------------------------------------------------------------
# Set-up in bulk SQL


async def _seed_broadcast(tx: Tx, *, count: int, now: dt.datetime) -> int:
    await tx.execute(
        """
        INSERT INTO users (id, first_name, language, referral_code, created_at)
        SELECT $1::bigint + g, 'B', CASE WHEN g % 2 = 0 THEN 'ru' ELSE 'en' END, 'bcast' || g, $3
        FROM generate_series(1, $2) g
        """,
        BROADCAST_BASE,
        count,
        now,
    )
    broadcast = int(
        await tx.fetchval(
            "INSERT INTO broadcasts (created_by, segment, text, state, recipients, created_at, confirmed_at) "
            "VALUES (1, 'all', $1, 'sending', $2, $3, $3) RETURNING id",
            BROADCAST_TEXT,
            count,
            now,
        )
    )
    await tx.execute(
        """
        INSERT INTO outbox (chat_id, kind, payload, dedupe_key, priority, broadcast_id,
                            next_attempt_at, created_at)
        SELECT $1::bigint + g, $2, jsonb_build_object('text', $3::text, 'parse_mode', 'HTML'),
               'broadcast:' || $4::bigint || ':' || ($1::bigint + g), 1, $4, $6, $6
        FROM generate_series(1, $5) g
        """,
        BROADCAST_BASE,
        BROADCAST_KIND,
        BROADCAST_TEXT,
        broadcast,
        count,
        now,
    )
    return broadcast


# ---------------------------------------------------------------------------------------------
# Measuring


class _Finished(BaseMiddleware):
    """Outer middleware on the update observer: stamps (``perf_counter``) when handling ends."""

    def __init__(self, done: dict[int | str, float]) -> None:
        self.done = done

    async def __call__(
        self,
        handler: Callable[[TelegramObject, dict[str, Any]], Awaitable[Any]],
        event: TelegramObject,
        data: dict[str, Any],
    ) -> Any:
        try:
            return await handler(event, data)
        finally:
            if isinstance(event, Update):
                key: int | str = event.callback_query.id if event.callback_query else event.update_id
                self.done[key] = time.perf_counter()


@dataclass
class _Run:
    """What the measured window produced."""

    offered: Counter[str] = field(default_factory=Counter)
    enqueued: dict[int | str, float] = field(default_factory=dict)
    done: dict[int | str, float] = field(default_factory=dict)
    window: float = 0.0
    handled_in_window: int = 0
    handled_total: int = 0
    failed: int = 0
    drain_seconds: float = 0.0
    dispatch_p50: float | None = None
    dispatch_p99: float | None = None
    dispatch_max: float = 0.0
    handler_p50: float | None = None
    handler_p99: float | None = None
    sender_sent_window: int = 0
    sender_max_1s: int = 0
    sender_max_per_chat: int = 0
    sender_rate: float = 30.0
    all_sends_max_1s: int = 0
    sender_stats: str = ""
    longest_step: float = 0.0
    longest_task: str | None = None
    slow_steps: int = 0
    slow_threshold: float = 0.1
    cpu_seconds: float = 0.0
    load_before: tuple[float, float, float] = (0.0, 0.0, 0.0)
    load_after: tuple[float, float, float] = (0.0, 0.0, 0.0)
    reports: list[str] = field(default_factory=list)
    ended: float = 0.0


def _percentile(values: list[float], p: float) -> float | None:
    """Nearest rank, as :class:`LatencyReservoir` does."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(1, math.ceil(p / 100 * len(ordered))) - 1]


def _act(user: EmulatedUser, rng: random.Random, offered: Counter[str]) -> tuple[int | str, str]:
    """One update from ``user``: 15 % /start, 55 % a main-menu button, 30 % text; return (key, kind)."""
    roll = rng.random()
    if roll < 0.15:
        return user.send_command("/start"), "/start"
    if roll < 0.70:
        action = rng.choice(PRESSES)
        for data in (MenuCb(action=action).pack(), MenuCb(action=MenuAction.MENU).pack()):
            try:
                # The newest bot message carrying the button, as a user presses what they see.
                return user.press(data), "press"
            except ScriptError:
                offered["press not on screen"] += 1  # e.g. the trial button after the trial
        return user.send_command("/menu"), "/menu"
    return user.send_text(rng.choice(TEXTS)), "text"


async def _feed(
    users: list[EmulatedUser], rng: random.Random, run: _Run, *, rate: float, start: float, end: float
) -> None:
    """Queue updates at ``rate`` on the trio clock from ``start`` until ``end``.

    A late feeder (a long scheduler step) catches up in a burst, as Telegram's queue would; it never
    queues past ``end``, so a starved feeder shows up as fewer updates offered.
    """
    n = 0
    while True:
        due = start + n / rate
        if due >= end:
            return
        await trio.sleep_until(due)
        if trio.current_time() >= end:
            return
        key, kind = _act(rng.choice(users), rng, run.offered)
        run.enqueued[key] = time.perf_counter()
        run.offered[kind] += 1
        n += 1


async def _warm_up(
    emulator: BotApiEmulator, dispatch: UpdateDispatcher, users: list[EmulatedUser], rate: float
) -> None:
    begin = trio.current_time()
    for n, user in enumerate(users):
        await trio.sleep_until(begin + n / rate)
        user.send_command("/start")
    with trio.fail_after(120):
        await emulator.wait_until_delivered(within=120)
        await dispatch.join()


async def _main(args: argparse.Namespace, server: EmbeddedPostgres) -> _Run:
    dsn = await server.start()
    run = _Run(slow_threshold=args.slow_step)
    async with open_bridge():
        db = await Database.open(DatabaseSettings(dsn=dsn, pool_size=args.pool))
        try:
            clock = Clock()
            await migrate(db, now=clock.now())
            await db.run(sync_plans, catalog=CATALOG, now=clock.now())
            await db.run(_seed_broadcast, count=args.broadcast, now=clock.now())
            await _measure(args, db, clock, run)
        finally:
            await db.close()
    return run


async def _measure(args: argparse.Namespace, db: Database, clock: Clock, run: _Run) -> None:
    emulator = BotApiEmulator(bot_username=BOT_USERNAME, enforce_limits=False)
    users = [
        emulator.add_user(USER_BASE + n, f"U{n}", language_code="en" if n % 2 else "ru")
        for n in range(1, args.users + 1)
    ]
    recipients = {BROADCAST_BASE + n for n in range(1, args.broadcast + 1)}
    for chat in recipients:
        emulator.add_user(chat, "B")
    reports = RingSink()
    async with trio.open_nursery() as nursery:
        base = await nursery.start(emulator.serve)
        bot = make_bot(emulator.token, base)
        try:
            # The bot side (dispatcher, intake, sender) stops before the emulator it talks to.
            async with trio.open_nursery() as side:
                root = build_dispatcher(build_user_routers(), db=db, clock=clock, config=CONFIG)
                root.update.outer_middleware(_Finished(run.done))
                dispatch = UpdateDispatcher(
                    dispatcher=root,
                    bot=bot,
                    reporter=CrashReporter([reports], now=clock.now),
                    settings=DispatchSettings(
                        latency_samples=max(4096, 2 * math.ceil(args.rate * args.seconds))
                    ),
                )
                await side.start(dispatch.run)
                intake = PollingIntake(
                    bot=bot, dispatcher=dispatch, db=lambda: db, rng=random.Random(args.seed)
                )
                side.start_soon(intake.run)

                print(f"warm-up: {args.users} users send /start", file=sys.stderr)
                await _warm_up(emulator, dispatch, users, args.rate)
                # Measure the window only: fresh reservoirs, counters from here.
                samples = dispatch.settings.latency_samples
                dispatch.latency = LatencyReservoir(samples)
                dispatch.handler_time = LatencyReservoir(samples)
                failed_before = dispatch.failed
                run.done.clear()

                settings = SenderSettings()  # the defaults: 30/s global, 1/s per chat
                run.sender_rate = settings.rate
                sender = OutboxSender(
                    db=lambda: db, bot=bot, clock=clock, rng=random.Random(args.seed + 1), settings=settings
                )
                await side.start(sender.run, ChildContext("root/workers/outbox_sender"))
                await trio.sleep(args.lead)

                instrument = SlowStepInstrument(args.slow_step, logging.getLogger("bench.scheduler"))
                run.load_before = os.getloadavg()
                cpu_start = resource.getrusage(resource.RUSAGE_SELF)
                start = trio.current_time()
                end = start + args.seconds
                print(f"window: {args.seconds} s at {args.rate:g} updates/s", file=sys.stderr)
                trio.lowlevel.add_instrument(instrument)
                try:
                    await _feed(users, random.Random(args.seed), run, rate=args.rate, start=start, end=end)
                    await trio.sleep_until(end)
                finally:
                    trio.lowlevel.remove_instrument(instrument)
                cpu_end = resource.getrusage(resource.RUSAGE_SELF)
                run.load_after = os.getloadavg()
                run.window = trio.current_time() - start
                run.cpu_seconds = (cpu_end.ru_utime + cpu_end.ru_stime) - (
                    cpu_start.ru_utime + cpu_start.ru_stime
                )
                run.handled_in_window = sum(1 for key in run.enqueued if key in run.done)
                run.longest_step, run.longest_task, run.slow_steps = (
                    instrument.longest,
                    instrument.longest_task,
                    instrument.count,
                )

                stamps = [
                    s.time
                    for s in emulator.send_stamps
                    if s.accepted and s.chat_id in recipients and start <= s.time < end
                ]
                run.sender_sent_window = len(stamps)
                run.sender_max_1s = max_in_window(stamps, 1.0)
                broadcast_by_chat = Counter(
                    s.chat_id
                    for s in emulator.send_stamps
                    if s.chat_id in recipients and start <= s.time < end
                )
                run.sender_max_per_chat = max(broadcast_by_chat.values(), default=0)
                run.all_sends_max_1s = max_in_window(
                    (s.time for s in emulator.send_stamps if start <= s.time < end), 1.0
                )

                # Give the bot time to finish what was offered (the sender goes on meanwhile).
                drain_start = trio.current_time()
                with trio.move_on_after(args.drain):
                    while any(key not in run.done for key in run.enqueued):  # noqa: ASYNC110 - a bounded poll
                        await trio.sleep(0.2)
                run.drain_seconds = trio.current_time() - drain_start
                run.ended = time.perf_counter()
                stats = dispatch.statistics()
                run.handled_total = sum(1 for key in run.enqueued if key in run.done)
                run.failed = dispatch.failed - failed_before
                run.dispatch_p50, run.dispatch_p99, run.dispatch_max = (
                    stats.latency_p50,
                    stats.latency_p99,
                    stats.latency_max,
                )
                run.handler_p50, run.handler_p99 = stats.handler_p50, stats.handler_p99
                s = sender.delivery_statistics()
                run.sender_stats = (
                    f"sent {s.sent}, blocked {s.blocked}, failed {s.failed}, retried {s.retried}, "
                    f"deferred {s.deferred}, throttled {s.throttled}, drains {s.drains}"
                )
                run.reports = [f"{r.path}: {r.message}" for r in reports.latest()][:5]
                side.cancel_scope.cancel()
        finally:
            nursery.cancel_scope.cancel()
            with trio.CancelScope(shield=True):
                await bot.session.close()


# ---------------------------------------------------------------------------------------------
# Reporting


def _ms(value: float | None) -> str:
    return "n/a" if value is None else f"{value * 1000:.1f} ms"


def _print(args: argparse.Namespace, run: _Run) -> None:
    offered = sum(v for k, v in run.offered.items() if k != "press not on screen")
    latencies = [run.done[key] - t for key, t in run.enqueued.items() if key in run.done]
    # Unhandled updates counted at their age when measuring stopped: a lower bound of their latency.
    censored = [run.done.get(key, run.ended) - t for key, t in run.enqueued.items()]
    kinds = ", ".join(f"{k} {v}" for k, v in sorted(run.offered.items()))
    achieved = run.sender_sent_window / run.window if run.window else 0.0
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}, "
        f"PostgreSQL embedded (fsync off), pool {args.pool}; load average before/after the window "
        f"{run.load_before[0]:.2f}/{run.load_after[0]:.2f}"
    )
    print(
        f"command: .venv/bin/python bench/bench_bot_load.py --rate {args.rate:g} --users {args.users} "
        f"--seconds {args.seconds:g} --broadcast {args.broadcast} --lead {args.lead:g} "
        f"--drain {args.drain:g} --pool {args.pool} --slow-step {args.slow_step:g} --seed {args.seed}"
    )
    print()
    print("| measure | value |")
    print("|---|---|")
    print(
        f"| updates offered in the window | {offered} ({offered / run.window:.1f}/s of {args.rate:g}/s "
        f"asked) |"
    )
    print(
        f"| updates handled by the window's end | {run.handled_in_window} "
        f"({run.handled_in_window / run.window:.1f}/s) |"
    )
    print(
        f"| updates handled after a further {run.drain_seconds:.1f} s | {run.handled_total} "
        f"(failed: {run.failed}) |"
    )
    print(
        "| end-to-end latency p50 of handled updates (queued at emulator → handled) | "
        f"{_ms(_percentile(latencies, 50))} |"
    )
    print(f"| end-to-end latency p99 | {_ms(_percentile(latencies, 99))} |")
    print(f"| end-to-end latency max | {_ms(max(latencies, default=None))} |")
    print(
        f"| end-to-end p50 / p99 over all offered (unhandled at their age: a lower bound) | "
        f"{_ms(_percentile(censored, 50))} / {_ms(_percentile(censored, 99))} |"
    )
    print(
        f"| dispatcher latency p50 / p99 / max (handed over → handled) | {_ms(run.dispatch_p50)} / "
        f"{_ms(run.dispatch_p99)} / {_ms(run.dispatch_max)} |"
    )
    print(f"| handler time p50 / p99 | {_ms(run.handler_p50)} / {_ms(run.handler_p99)} |")
    print(
        f"| sender: broadcast messages accepted in the window | {run.sender_sent_window} ({achieved:.2f}/s) |"
    )
    print(
        f"| sender: achieved / configured rate | {achieved:.2f} / {run.sender_rate:g} = "
        f"{achieved / run.sender_rate:.3f} |"
    )
    print(f"| sender: max broadcast sends in any 1 s (limit {run.sender_rate:g}) | {run.sender_max_1s} |")
    print(f"| sender: most sends to one broadcast chat in the window | {run.sender_max_per_chat} |")
    print(f"| all send calls (handler replies + broadcast) in any 1 s | {run.all_sends_max_1s} |")
    print(f"| scheduler: longest step | {_ms(run.longest_step)} (task `{run.longest_task}`) |")
    print(f"| scheduler: steps over {run.slow_threshold * 1000:g} ms | {run.slow_steps} |")
    print(
        f"| CPU of this process in the window | {run.cpu_seconds:.1f} s "
        f"({run.cpu_seconds / run.window * 100:.0f} % of one core) |"
    )
    print()
    print(f"offered by kind: {kinds}")
    print(f"sender totals (whole run, incl. lead and drain): {run.sender_stats}")
    if run.reports:
        print("first crash reports: " + "; ".join(run.reports))


def main() -> None:
    """Run the benchmark and print a Markdown table."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rate", type=float, default=200.0, help="updates per second offered")
    parser.add_argument("--users", type=int, default=1000, help="interactive users")
    parser.add_argument("--seconds", type=float, default=60.0, help="length of the measured window")
    parser.add_argument("--broadcast", type=int, default=20_000, help="broadcast messages in the outbox")
    parser.add_argument("--lead", type=float, default=2.0, help="seconds the sender runs before the window")
    parser.add_argument("--drain", type=float, default=30.0, help="seconds allowed after the window")
    parser.add_argument("--pool", type=int, default=10, help="database pool (the runtime's default)")
    parser.add_argument("--slow-step", type=float, default=0.1, help="slow scheduler step threshold, s")
    parser.add_argument("--seed", type=int, default=5)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    with tempfile.TemporaryDirectory(prefix="atlas-bench-bot-") as tmp:
        server = EmbeddedPostgres(Path(tmp), durable=False)
        try:
            run = trio.run(_main, args, server)
        finally:
            trio.run(server.stop)
    _print(args, run)


if __name__ == "__main__":
    main()
