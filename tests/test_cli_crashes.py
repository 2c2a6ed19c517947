"""``atlas crashes`` with ``--actor``, ``--kind``, ``--since`` and ``--json``: the operator's filters,
against reports stored in a real PostgreSQL and read back by the real command in a subprocess."""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import subprocess
import sys

import pytest
import trio

from atlas.runtime.cli import parse_since
from atlas.storage import Database
from atlas.storage.crash_reports import CrashReportFilter, latest_crash_reports, record_crash_report

NOW = dt.datetime.now(dt.UTC)


def _report(kind: str, path: str, age: dt.timedelta, message: str) -> dict[str, object]:
    return {
        "kind": kind,
        "time": (NOW - age).isoformat(),
        "host": "test",
        "pid": 1,
        "path": path,
        "exc_type": "ValueError",
        "message": message,
    }


REPORTS = [
    _report("crash", "root/workers/renewal", dt.timedelta(minutes=5), "renewal recent"),
    _report("crash", "root/workers/renewal", dt.timedelta(days=3), "renewal old"),
    _report("stall", "root/workers/expiry", dt.timedelta(minutes=1), "expiry stalled"),
    _report("gave_up", "root/workers", dt.timedelta(minutes=2), "workers gave up"),
    _report("crash", "root/telegram/dispatch", dt.timedelta(minutes=3), "a handler failed"),
    # A name that LIKE would treat as a pattern must match only itself.
    _report("crash", "root/workers/re_ewal", dt.timedelta(minutes=4), "underscore"),
]


async def _seed(db: Database) -> None:
    for report in REPORTS:
        await db.run(record_crash_report, report=report)


async def _messages(db: Database, where: CrashReportFilter) -> list[str]:
    return [str(r.message) for r in await db.run(latest_crash_reports, limit=100, where=where)]


async def test_filters_by_actor_subtree_kind_and_time(db: Database) -> None:
    await _seed(db)
    assert await _messages(db, CrashReportFilter(actor="renewal")) == ["renewal recent", "renewal old"]
    assert await _messages(db, CrashReportFilter(actor="root/workers/renewal", kind="crash")) == [
        "renewal recent",
        "renewal old",
    ]
    last_hour = NOW - dt.timedelta(hours=1)
    assert await _messages(db, CrashReportFilter(actor="root/workers", since=last_hour)) == [
        "expiry stalled",
        "workers gave up",
        "underscore",
        "renewal recent",
    ]
    assert await _messages(db, CrashReportFilter(kind="stall")) == ["expiry stalled"]
    assert await _messages(db, CrashReportFilter(actor="re_ewal")) == ["underscore"]
    assert await _messages(db, CrashReportFilter(actor="nothing")) == []


def test_since_takes_an_age_or_an_iso_time() -> None:
    now = dt.datetime(2026, 12, 1, 12, 0, tzinfo=dt.UTC)
    assert parse_since("30m", now) == now - dt.timedelta(minutes=30)
    assert parse_since("2h", now) == now - dt.timedelta(hours=2)
    assert parse_since("7d", now) == now - dt.timedelta(days=7)
    assert parse_since("2026-11-30T08:00", now) == dt.datetime(2026, 11, 30, 8, 0, tzinfo=dt.UTC)
    assert parse_since("2026-11-30T08:00+03:00", now).utcoffset() == dt.timedelta(hours=3)
    for bad in ("yesterday", "5w", "", "m"):
        with pytest.raises(argparse.ArgumentTypeError, match="--since"):
            parse_since(bad, now)


async def _cli(*args: str, dsn: str) -> subprocess.CompletedProcess[bytes]:
    return await trio.run_process(
        [sys.executable, "-m", "atlas", "crashes", *args],
        env={**os.environ, "ATLAS_DATABASE_URL": dsn, "ATLAS_LOG_LEVEL": "WARNING"},
        capture_stdout=True,
        capture_stderr=True,
        check=False,
    )


async def test_the_command_filters_and_prints_json(db: Database, fresh_database: str) -> None:
    await _seed(db)
    done = await _cli("--actor", "renewal", "--kind", "crash", "--since", "1h", "--json", dsn=fresh_database)
    assert done.returncode == 0, done.stderr
    lines = [json.loads(line) for line in done.stdout.decode().splitlines()]
    assert [line["message"] for line in lines] == ["renewal recent"]
    text = await _cli("--kind", "gave_up", dsn=fresh_database)
    printed = text.stdout.decode()
    assert text.returncode == 0 and "root/workers" in printed and "gave_up" in printed
    bad = await _cli("--since", "last tuesday", dsn=fresh_database)
    assert bad.returncode == 2 and b"--since" in bad.stderr
    wrong_kind = await _cli("--kind", "oops", dsn=fresh_database)
    assert wrong_kind.returncode == 2 and b"invalid choice" in wrong_kind.stderr
