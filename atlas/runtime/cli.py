"""The ``atlas`` command line.

::

    atlas run        the whole process: storage, web, telegram, workers, under the root supervisor
    atlas migrate    apply pending database migrations and exit
    atlas check      validate settings and reach the database; exit non-zero with the reason if not
    atlas crashes    print the latest crash reports, newest first
    atlas node       the VPN node agent that runs beside Xray/V2Ray on each server
    atlas demo       the whole shop against emulators, with a crowd of simulated users

Exit codes: 0 success, 1 the root supervisor gave up or a check failed, 2 bad settings or usage.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import os
import signal
import sys
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import trio

from atlas.clock import Clock
from atlas.runtime.bridge import open_bridge
from atlas.runtime.database import open_database
from atlas.runtime.logs import LogPipeline, configure_logging
from atlas.runtime.settings import Settings, SettingsError, load_settings
from atlas.storage import EmbeddedPostgresError, StorageError, Tx, migrate
from atlas.storage.crash_reports import CrashReportFilter, latest_crash_reports
from atlas.supervision import ReportKind

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2

_log = logging.getLogger("atlas.cli")


async def _migrate(settings: Settings) -> int:
    async with open_bridge(), open_database(settings) as db:
        applied = await migrate(db, now=Clock().now())
    print(f"applied {len(applied)} migration(s)" + (": " + ", ".join(applied) if applied else ""))
    return EXIT_OK


async def _check(settings: Settings) -> int:
    async def probe(tx: Tx) -> str:
        return str(await tx.fetchval("SELECT version()"))

    async with open_bridge(), open_database(settings) as db:
        version = await db.run(probe)
    print(f"settings ok; database reachable: {version}")
    return EXIT_OK


_SINCE_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_since(text: str, now: dt.datetime) -> dt.datetime:
    """``--since``: an ISO date/time (UTC unless it has an offset) or an age: ``30m``, ``2h``, ``7d``."""
    value = text.strip()
    unit = _SINCE_UNITS.get(value[-1:].lower())
    if unit is not None and value[:-1].isdigit():
        return now - dt.timedelta(seconds=int(value[:-1]) * unit)
    try:
        moment = dt.datetime.fromisoformat(value)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"--since {text!r}: give an ISO date/time (2026-12-01T10:00) or an age (30m, 2h, 7d)"
        ) from None
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=dt.UTC)


async def _crashes(settings: Settings, limit: int, as_json: bool, where: CrashReportFilter) -> int:
    async with open_bridge(), open_database(settings) as db:
        reports = await db.run(latest_crash_reports, limit=limit, where=where)
    if as_json:
        for report in reports:
            print(json.dumps(report.report, default=str))
        return EXIT_OK
    if not reports:
        print("no crash reports")
    for report in reports:
        print(
            f"#{report.id} {report.occurred_at.isoformat()} {report.kind:<14} {report.path} "
            f"{report.exc_type or ''}: {report.message or ''}".rstrip()
        )
        decision = report.report.get("decision")
        if decision:
            print(f"    decision: {decision}")
    return EXIT_OK


async def _run(settings: Settings, pipeline: LogPipeline) -> int:
    from atlas.runtime.app import run_app

    def hard_exit(code: int) -> None:
        # Only when a task would not stop (run_root): trio.run cannot return, so flush and go.
        pipeline.stop()
        os._exit(code)

    return await run_app(settings, hard_exit=hard_exit)


def _node() -> int:
    from pydantic import ValidationError

    from atlas.vpn.agent import run_agent
    from atlas.vpn.agent_settings import NodeAgentSettings

    try:
        node_settings = NodeAgentSettings()  # type: ignore[call-arg]  # fields come from the environment
    except ValidationError as exc:
        problems = "; ".join(
            f"ATLAS_NODE_{'_'.join(str(p) for p in e['loc']).upper()}: {e['msg']}" for e in exc.errors()
        )
        print(f"atlas node: invalid settings: {problems}", file=sys.stderr)
        return EXIT_USAGE
    pipeline = configure_logging("INFO", "json")

    async def serve() -> int:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_cancel_on_signals, nursery.cancel_scope)
            await run_agent(node_settings)
        return EXIT_OK

    try:
        return trio.run(serve)
    except KeyboardInterrupt:
        return EXIT_OK
    finally:
        pipeline.stop()


def _demo(args: argparse.Namespace) -> int:
    from rich.console import Console

    from atlas.demo.options import DemoOptions
    from atlas.demo.runner import run_demo
    from atlas.demo.world import prepare_data_dir

    try:
        options = DemoOptions(
            users=args.users, days=args.days, speed=args.speed, seed=args.seed, interactive=args.interactive,
            data_dir=prepare_data_dir(args.data_dir), concurrency=args.concurrency,
            corrupt_balance_for_test=args.corrupt_balance_for_test,
        )  # fmt: skip
    except ValueError as exc:
        print(f"atlas demo: {exc}", file=sys.stderr)
        return EXIT_USAGE
    assert options.data_dir is not None  # prepare_data_dir always gives one
    # The terminal belongs to the live view: the tree's JSON log goes to a file in the data directory.
    log_file = (options.data_dir / "atlas.log").open("a", encoding="utf-8")
    pipeline = configure_logging("INFO", "json", stream=log_file)
    try:
        return trio.run(run_demo, options, Console())
    except KeyboardInterrupt:
        return EXIT_OK
    except BaseExceptionGroup as group:
        # Nurseries wrap the one error that ended the run: say what it was, as the other commands do.
        reason = _leaf(group, (StorageError, EmbeddedPostgresError, OSError))
        if reason is None:
            raise
        print(f"atlas demo: {reason.__class__.__name__}: {reason}", file=sys.stderr)
        return EXIT_FAILED
    finally:
        pipeline.stop()
        log_file.close()


def _leaf(error: BaseException, kinds: tuple[type[BaseException], ...]) -> BaseException | None:
    """The first error of one of ``kinds`` inside (nested) exception groups, or None."""
    if isinstance(error, kinds):
        return error
    if isinstance(error, BaseExceptionGroup):
        for inner in error.exceptions:
            found = _leaf(inner, kinds)
            if found is not None:
                return found
    return None


async def _cancel_on_signals(scope: trio.CancelScope) -> None:
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async for signum in signals:
            _log.info("received %s; stopping", signal.Signals(signum).name)
            scope.cancel()
            return


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (exposed for tests and shell completion)."""
    parser = argparse.ArgumentParser(prog="atlas", description="Sell and run VPN access through Telegram.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    commands.add_parser("run", help="run the bot process under its supervisor")
    commands.add_parser("migrate", help="apply pending database migrations")
    commands.add_parser("check", help="validate settings and reach the database")
    crashes = commands.add_parser("crashes", help="show the latest crash reports, newest first")
    crashes.add_argument("--limit", type=int, default=20, help="how many (default 20, at most 1000)")
    crashes.add_argument("--json", action="store_true", help="one JSON report per line")
    crashes.add_argument("--actor", help="an actor path, a subtree (root/workers) or a name (renewal)")
    crashes.add_argument("--kind", choices=[kind.value for kind in ReportKind], help="only this kind")
    crashes.add_argument("--since", help="an ISO date/time or an age: 30m, 2h, 7d")
    commands.add_parser("node", help="run the VPN node agent (settings: ATLAS_NODE_*)")
    _add_demo_parser(commands)
    return parser


def _add_demo_parser(commands: Any) -> None:
    from atlas.demo.options import DEFAULT_CONCURRENCY, DEFAULT_DAYS, DEFAULT_USERS

    demo = commands.add_parser("demo", help="the whole shop against emulators, with simulated users")
    demo.add_argument("--users", type=int, default=DEFAULT_USERS, help=f"simulated users ({DEFAULT_USERS})")
    demo.add_argument("--days", type=int, default=DEFAULT_DAYS, help=f"virtual days ({DEFAULT_DAYS})")
    demo.add_argument(
        "--speed", type=float, default=None,
        help="business seconds per real second (default: what makes the run about a minute)",
    )  # fmt: skip
    demo.add_argument("--seed", type=int, default=1, help="seed of the users' scripts (default 1)")
    demo.add_argument("--interactive", action="store_true", help="stay up for the web chat until Ctrl-C")
    demo.add_argument(
        "--data-dir", type=Path, default=None, help="where the data go (default: a new temp directory)"
    )
    demo.add_argument("--concurrency", type=int, default=DEFAULT_CONCURRENCY, help=argparse.SUPPRESS)
    # Tests of the exit code only: corrupt one balance after the run so that the audit must fail.
    demo.add_argument("--corrupt-balance-for-test", action="store_true", help=argparse.SUPPRESS)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``atlas`` script; returns the process exit code."""
    args = build_parser().parse_args(argv)
    if args.command == "node":
        return _node()
    if args.command == "demo":
        return _demo(args)
    try:
        settings = load_settings()
    except SettingsError as exc:
        print(f"atlas: {exc}", file=sys.stderr)
        return EXIT_USAGE
    pipeline = configure_logging(settings.log_level, settings.log_format)
    command: Callable[[], Awaitable[int]]
    if args.command == "run":
        command = lambda: _run(settings, pipeline)  # noqa: E731
    elif args.command == "migrate":
        command = lambda: _migrate(settings)  # noqa: E731
    elif args.command == "check":
        command = lambda: _check(settings)  # noqa: E731
    else:
        try:
            since = None if args.since is None else parse_since(args.since, dt.datetime.now(dt.UTC))
        except argparse.ArgumentTypeError as exc:
            print(f"atlas crashes: {exc}", file=sys.stderr)
            return EXIT_USAGE
        where = CrashReportFilter(actor=args.actor, kind=args.kind, since=since)
        command = lambda: _crashes(settings, args.limit, args.json, where)  # noqa: E731
    try:
        return trio.run(command)
    except (StorageError, OSError) as exc:
        print(f"atlas {args.command}: {exc.__class__.__name__}: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        return EXIT_OK
    finally:
        pipeline.stop()


if __name__ == "__main__":
    sys.exit(main())
