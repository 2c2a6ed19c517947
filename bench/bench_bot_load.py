"""Benchmark: the whole ``atlas run`` process against a plain aiogram + asyncpg peer, under user load.

Three kinds of process, none sharing a scheduler with another:

* **the Bot API emulator** (``python -m atlas.testing.botapi --controlled``): serves the Bot API,
  offers updates at a set rate (15 % ``/start``, 55 % menu button presses, 30 % text, from
  ``--users`` users who each wait for an answer and read it for a second before acting again) and
  measures, by itself, each update's **first-reply latency** and the **broadcast sends per second**;
* **the bot**, either ``atlas run`` (a subprocess configured by ``ATLAS_*`` variables: the real
  supervisor, polling intake, dispatcher, user routers, workers, outbox sender and broadcaster) or
  ``bench/peer_bot.py`` (aiogram's ``start_polling`` + asyncpg on a stdlib ``SelectorEventLoop``,
  the same SQL statements per update, a 30/s outbox drain; it never imports ``atlas``);
* **PostgreSQL**: the embedded server (fsync off, Unix socket) with ``pg_stat_statements``
  preloaded. Each trial gets a fresh database cloned from a migrated template (plans synced, the
  broadcast recipients registered), so both sides start from the same state.

Each trial (one bot process) runs, after a warm-up in which every user sends ``/start`` once:

1. **latency**: ``--latency-rate`` (100) updates/s for ``--latency-seconds``: first-reply p50/p99,
   CPU seconds of the bot process per offered update (``/proc/<pid>/stat`` utime + stime from the
   window's start until the emulator has seen every offered update answered, so a bot that falls
   behind is charged for its whole backlog, and idle seconds are charged too: for ``atlas run``
   its workers' ticks), and ``pg_stat_statements`` calls per offered update over the same span
   (everything run in the trial's database);
2. **max sustained**: ``--max-rates`` stepped up, ``--step-seconds`` each, until a step is not
   sustained (handled ≥ 0.97 × offered and p99 < 1 s, unanswered updates counted as infinitely
   late); the highest sustained rate is the result;
3. **broadcast**: a broadcast of enough messages is written into the outbox (a ``sending``
   broadcast row and its outbox rows, as ``materialize_batch`` writes them), ``--lead`` seconds
   later 100 updates/s flow for ``--broadcast-seconds``: broadcast messages/s (goal 0.97 × 30),
   seconds over 30, and first-reply latency while it drains.

Trials alternate peer / Atlas (``--trials`` of each, in ABBA order), and the report gives the
median over trials per side and the ratios Atlas / peer, with the machine and its load average.

    .venv/bin/python bench/bench_bot_load.py            # full: about 10 minutes
    .venv/bin/python bench/bench_bot_load.py --quick    # about 2 minutes
"""

from __future__ import annotations

import argparse
import json
import math
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import IO, Any

import trio

from atlas.clock import Clock
from atlas.domain import load_plan_catalog
from atlas.runtime.bridge import open_bridge
from atlas.storage import Database, DatabaseSettings, Tx, migrate
from atlas.storage.embedded import postgres_bin_dir
from atlas.storage.units.broadcasts import BROADCAST_KIND
from atlas.storage.units.plans import sync_plans
from atlas.telegram.callbacks import MenuAction, MenuCb
from atlas.testing.botapi import DEFAULT_TOKEN

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _harness as h
import peer_bot

USER_BASE = 1_000_000
RECIPIENT_BASE = 5_000_000
SEND_RATE = 30
PEER_NO_RESET = False  # set from --peer-no-reset
PRESSES = [
    MenuAction.SUBSCRIPTION, MenuAction.PLANS, MenuAction.TOPUP, MenuAction.REFERRAL, MenuAction.HELP,
    MenuAction.MENU,
]
BROADCAST_TEXT = "<b>News</b>: the Amsterdam node is twice as fast now. Open the menu to see your key."
TEMPLATE = "bench_template"


# ---------------------------------------------------------------------------------------------
# The database: a migrated template, cloned per trial


async def _seed(tx: Tx, *, recipients: int) -> None:
    await tx.execute(
        """
        INSERT INTO users (id, first_name, language, referral_code, created_at)
        SELECT $1::bigint + g, 'B', CASE WHEN g % 2 = 0 THEN 'ru' ELSE 'en' END, 'bcast' || g, now()
        FROM generate_series(1, $2) g
        """,
        RECIPIENT_BASE,
        recipients,
    )


async def _prepare_template(dsn: str, recipients: int) -> None:
    text = resources.files("atlas.domain").joinpath("plans.example.toml").read_text(encoding="utf-8")
    catalog = load_plan_catalog(text, required_currencies=("RUB",))
    async with open_bridge():
        db = await Database.open(DatabaseSettings(dsn=dsn, pool_size=2))
        try:
            clock = Clock()
            await migrate(db, now=clock.now())
            await db.run(sync_plans, catalog=catalog, now=clock.now())
            await db.run(_seed, recipients=recipients)
        finally:
            await db.close()


class Psql:
    """SQL from the harness through ``psql`` (no event loop here, nothing shared with a bot)."""

    def __init__(self, dsn_for: Any) -> None:
        self._dsn_for = dsn_for
        self._binary = str(postgres_bin_dir() / "psql")

    def __call__(self, database: str, sql: str) -> list[list[str]]:
        """Run ``sql`` in ``database``; the rows as lists of text fields."""
        done = subprocess.run(
            [self._binary, "-X", "-q", "-A", "-t", "-F", "\t", "-v", "ON_ERROR_STOP=1",
             "-d", self._dsn_for(database), "-c", sql],
            capture_output=True, text=True, timeout=120, check=False,
        )
        if done.returncode != 0:
            raise RuntimeError(f"psql failed: {done.stderr.strip()[-2000:]}")
        return [line.split("\t") for line in done.stdout.splitlines() if line]


def _statements(psql: Psql, database: str) -> list[tuple[int, str]]:
    """(calls, query) for ``database`` since the last reset, the harness's own queries left out."""
    rows = psql("postgres", f"""
        SELECT s.calls, regexp_replace(left(s.query, 110), '\\s+', ' ', 'g')
        FROM pg_stat_statements s JOIN pg_database d ON d.oid = s.dbid
        WHERE d.datname = '{database}' AND s.query NOT ILIKE '%pg_stat_statements%'
        ORDER BY s.calls DESC
    """)
    return [(int(calls), query) for calls, query in rows]


def _insert_broadcast(psql: Psql, database: str, count: int) -> None:
    psql(database, f"""
        WITH b AS (
            INSERT INTO broadcasts (created_by, segment, text, state, recipients, created_at, confirmed_at)
            VALUES (1, 'all', '{BROADCAST_TEXT}', 'sending', {count}, now(), now()) RETURNING id
        )
        INSERT INTO outbox (chat_id, kind, payload, dedupe_key, priority, broadcast_id, next_attempt_at,
                            created_at)
        SELECT {RECIPIENT_BASE} + g, '{BROADCAST_KIND}',
               jsonb_build_object('text', '{BROADCAST_TEXT}'::text, 'parse_mode', 'HTML'),
               'broadcast:' || b.id || ':' || ({RECIPIENT_BASE} + g), 1, b.id, now(), now()
        FROM b, generate_series(1, {count}) g
    """)


# ---------------------------------------------------------------------------------------------
# One trial: emulator + bot processes


@dataclass
class Trial:
    """What one trial measured."""

    side: str
    latency: dict[str, Any] = field(default_factory=dict)
    cpu_per_update: float = float("nan")
    statements_per_update: float = float("nan")
    statements: list[tuple[int, str]] = field(default_factory=list)
    steps: list[dict[str, Any]] = field(default_factory=list)
    max_sustained: float = 0.0
    broadcast: dict[str, Any] = field(default_factory=dict)
    warm_up: dict[str, Any] = field(default_factory=dict)
    bot_exit: int | None = None
    stderr_tail: str = ""


class _Events:
    """The emulator's JSON lines."""

    def __init__(self, stream: IO[str]) -> None:
        self._stream = stream

    def __iter__(self) -> Iterator[dict[str, Any]]:
        for line in self._stream:
            if line.startswith("{"):
                yield json.loads(line)

    def expect(self, *names: str) -> dict[str, Any]:
        """The next event, which must be one of ``names``."""
        for event in self:
            if event["event"] == "error":
                raise RuntimeError(f"emulator: {event['message']}")
            if event["event"] in names:
                return event
        raise RuntimeError(f"the emulator ended before {names}")


def _bot_command(side: str, url: str, dsn: str, work: Path) -> tuple[list[str], dict[str, str]]:
    if side == "peer":
        env = {k: v for k, v in os.environ.items() if not k.startswith("ATLAS_") and k != "PYTHONPATH"}
        argv = [h.PYTHON, str(h.BENCH_DIR / "peer_bot.py"), "--api", url, "--token", DEFAULT_TOKEN,
                "--dsn", dsn, "--broadcast", *(["--no-reset"] if PEER_NO_RESET else [])]
        return argv, env
    env = {k: v for k, v in os.environ.items() if not k.startswith("ATLAS_")}
    env.update({
        "PYTHONPATH": str(h.REPO),
        "ATLAS_BOT_TOKEN": DEFAULT_TOKEN,
        "ATLAS_TELEGRAM_API_BASE": url,
        "ATLAS_DATABASE_URL": dsn,
        "ATLAS_DATA_DIR": str(work / "atlas-data"),
        "ATLAS_HTTP_PORT": "0",
        "ATLAS_LOG_LEVEL": "WARNING",
        "ATLAS_CURRENCY": "RUB",
        "ATLAS_PUBLIC_BASE_URL": "https://vpn.example.com",
    })
    return [h.PYTHON, "-m", "atlas", "run"], env


def _stop(process: subprocess.Popen[Any], timeout: float = 20.0) -> int:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            return process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
    return process.wait()


def run_trial(
    side: str, number: int, args: argparse.Namespace, psql: Psql, dsn_for: Any, work: Path
) -> Trial:
    """Clone the database, start the emulator and the bot, run the three phases, stop both."""
    database = f"bench_{number}_{side}"
    psql("postgres", f"CREATE DATABASE {database} TEMPLATE {TEMPLATE}")
    trial = Trial(side)
    steps = [(args.latency_rate, args.latency_seconds)]
    steps += [(rate, args.step_seconds) for rate in args.max_rates]
    if not args.cpu_only:
        steps += [(args.latency_rate, args.broadcast_seconds)]
    emulator_argv = [
        h.PYTHON, "-m", "atlas.testing.botapi", "--controlled", "--users", str(args.users),
        "--user-base", str(USER_BASE), "--recipients", str(args.recipients),
        "--recipient-base", str(RECIPIENT_BASE), "--warm-up-rate", str(args.warm_up_rate),
        "--steps", ",".join(f"{rate:g}:{seconds:g}" for rate, seconds in steps),
        "--send-limit", str(SEND_RATE), "--seed", str(args.seed + number), "--bot-timeout", "60",
        *(arg for action in PRESSES for arg in ("--press", MenuCb(action=action).pack())),
    ]
    emulator_env = dict(os.environ, PYTHONPATH=str(h.REPO))
    bot_log = open(work / f"{database}.stderr", "w+")  # noqa: SIM115 - closed below
    emulator = subprocess.Popen(
        emulator_argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=emulator_env,
        cwd=work, bufsize=1,
    )
    bot: subprocess.Popen[Any] | None = None
    assert emulator.stdin is not None and emulator.stdout is not None
    events = _Events(emulator.stdout)
    try:
        url = events.expect("serving")["url"]
        argv, env = _bot_command(side, url, dsn_for(database), work)
        bot = subprocess.Popen(argv, env=env, cwd=work, stdout=bot_log, stderr=subprocess.STDOUT)
        events.expect("bot-up")
        trial.warm_up = events.expect("warmed")
        print(f"  {side}: warm-up {trial.warm_up['seconds']} s", file=sys.stderr)
        max_phase = range(1, 1 + len(args.max_rates))
        failed = False
        open_step: tuple[dict[str, Any], float, float] | None = None
        for index in range(len(steps) + 1):
            ready = events.expect("ready", "done")
            if open_step is not None:
                # The emulator says "ready" once the bot has answered everything offered so far
                # (or --settle ran out): CPU and statements up to here are the step's whole work.
                result, cpu_start, emulator_start = open_step
                statements = _statements(psql, database)
                result["settled"] = ready.get("settled", True)
                result["cpu"] = h.cpu_seconds(bot.pid) - cpu_start
                result["emulator_cpu"] = h.cpu_seconds(emulator.pid) - emulator_start
                result["statements"] = sum(calls for calls, _ in statements)
                result["statement_list"] = statements
                _step_line(side, result)
                open_step = None
            if ready["event"] == "done":
                break
            if index in max_phase and failed:
                emulator.stdin.write("skip\n")
                continue
            broadcast = not args.cpu_only and index == len(steps) - 1
            if broadcast:
                count = int(SEND_RATE * (args.lead + args.broadcast_seconds + 10) * 1.5)
                _insert_broadcast(psql, database, min(count, args.recipients))
                time.sleep(args.lead)
            psql("postgres", "SELECT pg_stat_statements_reset()")
            emulator.stdin.write("go\n")
            events.expect("start")
            cpu_start, emulator_start = h.cpu_seconds(bot.pid), h.cpu_seconds(emulator.pid)
            result = events.expect("result")
            open_step = (result, cpu_start, emulator_start)
            if index == 0:
                trial.latency = result
            elif broadcast:
                trial.broadcast = result
            else:
                trial.steps.append(result)
                if result["sustained"]:
                    trial.max_sustained = max(trial.max_sustained, result["rate"])
                else:
                    failed = True
        if trial.latency.get("settled"):
            offered = max(1, int(trial.latency["offered"]))
            trial.cpu_per_update = trial.latency["cpu"] / offered
            trial.statements_per_update = trial.latency["statements"] / offered
        trial.statements = trial.latency.get("statement_list", [])
    except BaseException:
        bot_log.seek(0)
        print(f"  {side} failed; its output ends:\n{bot_log.read()[-3000:]}", file=sys.stderr)
        raise
    finally:
        if bot is not None:
            trial.bot_exit = _stop(bot)
        emulator.stdin.close()
        _stop(emulator)
        bot_log.seek(0)
        trial.stderr_tail = bot_log.read()[-1500:]
        bot_log.close()
        psql("postgres", f"DROP DATABASE IF EXISTS {database} WITH (FORCE)")
    return trial


# ---------------------------------------------------------------------------------------------
# Reporting


def _step_line(side: str, result: dict[str, Any]) -> None:
    span = result["seconds"]
    print(
        f"  {side}: step {result['step']} at {result['rate']:g}/s: handled {result['handled']}/"
        f"{result['offered']}, p50 {_ms(result['p50'])}, p99 {_ms(result['p99_all_offered'])}, "
        f"sustained {result['sustained']}, broadcast {result['broadcast_per_s']:.1f}/s; until all "
        f"answered (settled {result['settled']}): bot CPU {result['cpu']:.1f} s, emulator CPU "
        f"{result['emulator_cpu']:.1f} s (window {span:g} s), {result['statements']} statements; "
        f"{h.load_line()}",
        file=sys.stderr,
    )


def _ms(value: float | None) -> str:
    return "n/a" if value is None else f"{value * 1000:.0f} ms"


def _med(trials: list[Trial], get: Any) -> float:
    # A trial that did not settle has no CPU or statement count (NaN): left out, not averaged in.
    values = [float(v) for v in (get(t) for t in trials) if v is not None and v == v]
    return h.median(values) if values else float("nan")


def _report(args: argparse.Namespace, trials: list[Trial], load_before: str, command: str) -> None:
    peer = [t for t in trials if t.side == "peer"]
    atlas = [t for t in trials if t.side == "atlas"]
    print(h.machine_line().replace(h.load_line(), f"{load_before} before, {h.load_line()} after"))
    print(f"command: {command}")
    print("peer SQL: " + ("equal to Atlas's (no reset query on release)" if PEER_NO_RESET
                          else "as a plain aiogram + asyncpg bot sends it (asyncpg's reset on release)"))
    print(
        f"trials: {len(peer)} peer, {len(atlas)} atlas (ABBA); users {args.users}, recipients "
        f"{args.recipients}; latency {args.latency_rate:g}/s × {args.latency_seconds:g} s; steps "
        f"{', '.join(f'{r:g}' for r in args.max_rates)} /s × {args.step_seconds:g} s; broadcast "
        f"{args.latency_rate:g}/s × {args.broadcast_seconds:g} s"
    )
    print()
    rows = [
        ("max sustained updates/s (≥0.97 handled, p99 < 1 s)", lambda t: t.max_sustained, "rate",
         "≥ 1.0× equal SQL, ≥ 1.2× as shipped"),
        (f"first reply p50 at {args.latency_rate:g}/s (all offered)",
         lambda t: _late(t.latency, "p50_all_offered"), "ms", "≤ 1.5×"),
        (f"first reply p99 at {args.latency_rate:g}/s (all offered)",
         lambda t: _late(t.latency, "p99_all_offered"), "ms", "≤ 1.5×"),
        (f"first reply p50 / p99 at {args.latency_rate:g}/s, answered updates only", "answered", "", ""),
        (f"answered of offered at {args.latency_rate:g}/s (by the window's end + 2 s)",
         lambda t: t.latency["handled"] / max(1, t.latency["offered"]) if t.latency else None, "{:.1%}",
         "≥ 97 %"),
        ("CPU per update (bot process)", lambda t: t.cpu_per_update, "cpu", "≤ 1.2×"),
        ("SQL statements per update (pg_stat_statements)", lambda t: t.statements_per_update, "{:.2f}", "="),
        (f"broadcast messages/s while {args.latency_rate:g} updates/s flow",
         lambda t: t.broadcast.get("broadcast_per_s"), "{:.1f}", f"≥ {0.97 * SEND_RATE:.1f}/s"),
        ("broadcast: seconds over 30 sends", lambda t: t.broadcast.get("broadcast_over_rate_seconds"),
         "{:.0f}", "0"),
        ("broadcast: most sends in any 1 s", lambda t: t.broadcast.get("broadcast_max_1s"), "{:.0f}", "≤ 30"),
        ("first reply p50 / p99 during the broadcast", None, "", ""),
    ]
    print("| measure | peer (aiogram + asyncpg) | `atlas run` | Atlas / peer | goal |")
    print("|---|---|---|---|---|")
    for name, get, style, goal in rows:
        if get == "answered":
            cells = []
            for side in (peer, atlas):
                p50 = _med(side, lambda t: t.latency.get("p50"))
                p99 = _med(side, lambda t: t.latency.get("p99"))
                cells.append(f"{_fmt(p50, 'ms')} / {_fmt(p99, 'ms')}")
            print(f"| {name} | {cells[0]} | {cells[1]} | | |")
            continue
        if get is None:
            cells = []
            for side in (peer, atlas):
                p50 = _med(side, lambda t: _late(t.broadcast, "p50_all_offered"))
                p99 = _med(side, lambda t: _late(t.broadcast, "p99_all_offered"))
                cells.append(f"{_fmt(p50, 'ms')} / {_fmt(p99, 'ms')}")
            print(f"| {name} | {cells[0]} | {cells[1]} | | |")
            continue
        p, a = _med(peer, get), _med(atlas, get)
        cells = [_fmt(p, style), _fmt(a, style)]
        if style == "rate":  # no step sustained: below the first one
            first = f"< {args.max_rates[0]:g}" if args.max_rates else "n/a (--cpu-only)"
            cells = [c if v else first for c, v in zip(cells, (p, a), strict=True)]
        print(f"| {name} | {cells[0]} | {cells[1]} | {h.ratio(a, p)} | {goal} |")
    print()
    for t in trials:
        steps = ", ".join(
            f"{s['rate']:g}{'✓' if s['sustained'] else '✗'} (p99 {_ms(s['p99_all_offered'])})"
            for s in t.steps
        )
        print(f"- {t.side}: steps {steps}; latency step handled {t.latency.get('handled')}/"
              f"{t.latency.get('offered')} (settled {t.latency.get('settled')}), CPU "
              f"{_fmt(t.cpu_per_update, 'cpu')} and {_fmt(t.statements_per_update, '{:.2f}')} statements "
              f"per update; broadcast per second {t.broadcast.get('broadcast_per_second')}; "
              f"bot exit {t.bot_exit}")
    pair_ratios = _pair_ratios(trials)
    if pair_ratios:
        print()
        print(
            "CPU per update, Atlas / peer, per interleaved pair (ABBA neighbours): "
            + ", ".join(f"{r:.2f}" for r in pair_ratios)
            + f"; median {h.median(pair_ratios):.2f}×"
        )
    for side in (peer, atlas):
        if not side:
            continue
        t = side[0]
        offered = max(1, int(t.latency.get("offered") or 1))
        print()
        print(f"{t.side}: statements of the latency step (until all answered), calls per offered update")
        for calls, query in t.statements[:16]:
            print(f"    {calls / offered:6.3f}  {query}")


def _pair_ratios(trials: list[Trial]) -> list[float]:
    """Atlas / peer CPU per update of each neighbouring (peer, atlas) pair, in run order.

    Neighbours ran under about the same machine load, so their ratio is steadier than the ratio
    of the two medians when other work on the machine comes and goes.
    """
    ratios = []
    for first, second in zip(trials[0::2], trials[1::2], strict=False):
        by_side = {first.side: first.cpu_per_update, second.side: second.cpu_per_update}
        peer, atlas = by_side.get("peer"), by_side.get("atlas")
        if peer and atlas and peer == peer and atlas == atlas:
            ratios.append(atlas / peer)
    return ratios


def _late(result: dict[str, Any], key: str) -> float | None:
    """A percentile over all offered updates; infinite when too many went unanswered."""
    if not result:
        return None
    value = result.get(key)
    return math.inf if value is None else float(value)


def _fmt(value: float, style: str) -> str:
    if value != value:
        return "n/a"
    if math.isinf(value):
        return "∞ (unanswered)"
    if style == "ms":
        return f"{value * 1000:.0f} ms"
    if style == "cpu":
        return f"{value * 1000:.2f} ms"
    if style == "rate":
        return f"{value:.0f}"
    return style.format(value)


# ---------------------------------------------------------------------------------------------


def main() -> None:
    """Run the interleaved trials and print a Markdown table."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="one trial per side, short steps (~2 min)")
    parser.add_argument("--trials", type=int, default=2, help="trials per side")
    parser.add_argument("--users", type=int, default=1000)
    parser.add_argument("--recipients", type=int, default=5000, help="broadcast recipients")
    parser.add_argument("--warm-up-rate", type=float, default=200.0)
    parser.add_argument("--latency-rate", type=float, default=100.0)
    parser.add_argument("--latency-seconds", type=float, default=20.0)
    parser.add_argument("--max-rates", default="60,80,100,120,150,180,220,260,300,350")
    parser.add_argument("--step-seconds", type=float, default=10.0)
    parser.add_argument("--broadcast-seconds", type=float, default=20.0)
    parser.add_argument("--lead", type=float, default=2.0, help="s the broadcast drains before its window")
    parser.add_argument("--seed", type=int, default=5)
    parser.add_argument("--sides", default="peer,atlas", help="which bots to run (peer, atlas or both)")
    parser.add_argument(
        "--peer-no-reset", action="store_true",
        help="equal SQL: the peer skips asyncpg's reset on release, as Atlas does (default: as a plain bot)",
    )
    parser.add_argument(
        "--cpu-only", action="store_true",
        help="only the latency step (CPU per update, first reply): no max-rate steps, no broadcast; "
        "with --trials N for N interleaved pairs",
    )
    args = parser.parse_args()
    global PEER_NO_RESET
    PEER_NO_RESET = args.peer_no_reset
    command = "bench/bench_bot_load.py " + " ".join(sys.argv[1:])
    if args.quick:
        args.trials = 1 if not args.cpu_only else args.trials
        args.users = min(args.users, 600)
        args.latency_seconds = 10.0
        args.step_seconds = 6.0
        args.broadcast_seconds = 10.0
        args.max_rates = "80,120,180,260,350"
    args.max_rates = [] if args.cpu_only else [float(r) for r in str(args.max_rates).split(",")]
    menu_data = {a.value: MenuCb(action=a).pack() for a in MenuAction}
    if menu_data != peer_bot.MENU_DATA:
        raise SystemExit(f"peer_bot.MENU_DATA is out of date: Atlas packs {menu_data}")
    sides = [s.strip() for s in args.sides.split(",") if s.strip()]
    order: list[str] = []
    for n in range(args.trials):
        order += sides if n % 2 == 0 else list(reversed(sides))

    load_before = h.load_line()
    trials: list[Trial] = []
    with tempfile.TemporaryDirectory(prefix="atlas-bench-bot-") as tmp:
        # Our own fresh directory: open it for traversal (not listing) so the embedded server's user
        # (atlas-pg, when we run as root) can reach its data directory inside.
        os.chmod(tmp, 0o711)
        work = Path(tmp)
        server = h.embedded_server(work / "pg", with_statements=True)
        h.start_server(server)
        psql = Psql(server.dsn)
        try:
            psql("postgres", "CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
            psql("postgres", f"CREATE DATABASE {TEMPLATE}")
            trio.run(_prepare_template, server.dsn(TEMPLATE), args.recipients)
            for number, side in enumerate(order):
                print(f"trial {number + 1}/{len(order)}: {side}; {h.load_line()}", file=sys.stderr)
                trial = run_trial(side, number, args, psql, server.dsn, work)
                if trial.bot_exit not in (0, -signal.SIGTERM):
                    print(f"  {side} exited {trial.bot_exit}:\n{trial.stderr_tail}", file=sys.stderr)
                trials.append(trial)
        finally:
            h.stop_server(server)
    _report(args, trials, load_before, command)


if __name__ == "__main__":
    main()
