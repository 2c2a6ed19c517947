"""``DurableCrashSink``: two flushes at once write each held report once, in order.

The storage child flushes every 5 s while reports wait, and every new report flushes too; during
a real PostgreSQL outage (tests/test_fault_postgres_outage.py) the two interleaved at the await,
both wrote the oldest report and both popped it: a report written twice, another never, and an
``IndexError`` that crashed the storage child. Fails without the sink's one-writer lock.
"""

from __future__ import annotations

import datetime as dt

import trio

from atlas.runtime.services import DurableCrashSink
from atlas.storage import Database
from atlas.storage.crash_reports import latest_crash_reports

NOW = dt.datetime.now(dt.UTC)


def _report(n: int) -> dict[str, object]:
    return {
        "kind": "crash",
        "time": (NOW + dt.timedelta(milliseconds=n)).isoformat(),
        "host": "test",
        "pid": 1,
        "path": f"root/workers/w{n:02d}",
        "exc_type": "DatabaseUnavailable",
        "message": f"held report {n}",
    }


async def test_two_flushes_at_once_write_every_held_report_once(db: Database) -> None:
    sink = DurableCrashSink(lambda: db)
    sink.pending.extend(_report(n) for n in range(30))  # held while the database was away
    written: list[int] = []

    async def flush() -> None:
        written.append(await sink.flush())

    async with trio.open_nursery() as nursery:  # the storage child's flush and a new report's
        nursery.start_soon(flush)
        nursery.start_soon(flush)
    stored = await db.run(latest_crash_reports, limit=100)
    assert sorted(written) == [0, 30]  # one wrote them all; the other saw it busy and left
    assert list(sink.pending) == []
    assert sorted(str(r.message) for r in stored) == sorted(f"held report {n}" for n in range(30))
