"""The durable crash-report sink under concurrency: a report that arrives while the storage child
flushes the waiting ones is written once, and nothing is popped twice (found by ``atlas demo``:
the storage child crashed with ``IndexError: pop from an empty deque``)."""

from __future__ import annotations

import trio

from atlas.runtime.services import make_services
from atlas.runtime.settings import load_settings
from atlas.storage import Database, DatabaseSettings
from atlas.storage.crash_reports import latest_crash_reports
from atlas.supervision import ReportKind


async def test_concurrent_flushes_write_every_waiting_report_exactly_once(
    bridge: None, fresh_database: str
) -> None:
    services = make_services(load_settings(database_url=fresh_database, http_port=0))
    store = services.crash_store
    assert store is not None

    async def report(path: str) -> None:
        composed = services.reporter.compose(
            kind=ReportKind.CRASH, path=path, error=RuntimeError("boom"), decision="restart in 0.5s",
            restarts_in_window=1, max_restarts=5, period=30.0, uptime=1.0,
        )  # fmt: skip
        await services.reporter.report(composed)

    waiting = [f"root/workers/w{i}" for i in range(5)]
    for path in waiting:  # storage is not up: they wait
        await report(path)
    assert [r["path"] for r in store.pending] == waiting

    db = await Database.open(DatabaseSettings(dsn=fresh_database, pool_size=4))
    try:
        services.db = db
        async with trio.open_nursery() as nursery:
            nursery.start_soon(store.flush)  # the storage child, once it is up
            nursery.start_soon(store.flush)  # ... and its next periodic flush
            nursery.start_soon(report, "root/workers/late")  # a report arriving meanwhile
        stored = await db.run(latest_crash_reports, limit=50)
    finally:
        await db.close()
    assert list(store.pending) == []
    assert sorted(r.path for r in stored) == sorted([*waiting, "root/workers/late"])
