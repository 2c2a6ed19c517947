"""The durable record of handled Telegram updates (issue 13), on the real PostgreSQL.

Completions are noted in memory and written in one statement per flush; ids are per bot; a
failed or cancelled write keeps its ids; being hurried writes at once; housekeeping prunes old
records in bounded batches.
"""

from __future__ import annotations

import datetime as dt

import pytest
import trio

from atlas.actors.housekeeping import HandledUpdatePruner
from atlas.clock import Clock, seeded_random
from atlas.storage import Database, DatabaseUnavailable, Tx
from atlas.storage.units.handled_updates import record_handled_updates
from atlas.telegram.handled_log import HandledLog

BOT = 777000


async def _rows(tx: Tx) -> list[tuple[int, int]]:
    rows = await tx.fetch(
        "SELECT bot_id, update_id FROM telegram_handled_updates ORDER BY bot_id, update_id LIMIT 100"
    )
    return [(int(r["bot_id"]), int(r["update_id"])) for r in rows]


async def test_noted_ids_are_written_in_one_statement_per_flush_and_looked_up_per_bot(db: Database) -> None:
    clock = Clock()
    log = HandledLog(db=lambda: db, bot_id=BOT, clock=clock)
    other = HandledLog(db=lambda: db, bot_id=BOT + 1, clock=clock)
    for update_id in (10, 11, 13, 11):
        log.note(update_id)
    other.note(10)
    assert await log.recorded_among([10, 12]) == {10}  # noted, not written yet: known here only
    assert await db.run(_rows) == []
    assert await log.flush() == 3 and await other.flush() == 1
    assert log.flushes == 1 and log.recorded == 3
    assert await db.run(_rows) == [(BOT, 10), (BOT, 11), (BOT, 13), (BOT + 1, 10)]
    fresh = HandledLog(db=lambda: db, bot_id=BOT, clock=clock)  # another process, empty memory
    assert await fresh.recorded_among([9, 10, 11, 12, 13, 14]) == {10, 11, 13}
    assert await fresh.highest() == 13
    assert await HandledLog(db=lambda: db, bot_id=BOT + 2, clock=clock).highest() is None
    assert await log.flush() == 0  # nothing noted: no statement


async def test_run_flushes_on_its_interval_at_once_when_hurried_and_on_cancellation(db: Database) -> None:
    clock = Clock()
    log = HandledLog(db=lambda: db, bot_id=BOT, clock=clock, flush_every=30.0)
    async with trio.open_nursery() as nursery:
        scope = trio.CancelScope()

        async def run() -> None:
            with scope:
                await log.run()

        nursery.start_soon(run)
        log.note(1)
        await trio.sleep(0.2)
        assert log.recorded == 0  # the interval is 30 s: nothing written yet
        log.note(2)
        log.hurry()
        with trio.fail_after(10):
            while log.recorded < 2:  # noqa: ASYNC110 - the log's own counter, no event to wait on
                await trio.sleep(0.01)
        log.note(3)
        scope.cancel()  # a graceful stop writes what is left
    assert log.recorded == 3 and log.flushes == 2
    assert await db.run(_rows) == [(BOT, 1), (BOT, 2), (BOT, 3)]


async def test_a_failed_flush_keeps_its_ids_for_the_next(db: Database) -> None:
    clock = Clock()
    broken = True

    def database() -> Database:
        if broken:
            raise DatabaseUnavailable("the database is away")
        return db

    log = HandledLog(db=database, bot_id=BOT, clock=clock, max_buffered=3)
    for update_id in (1, 2, 3, 4):
        log.note(update_id)
    assert log.dropped == 1  # the oldest, beyond max_buffered
    with pytest.raises(DatabaseUnavailable, match="away"):
        await log.flush()
    broken = False
    assert await log.flush() == 3
    assert await db.run(_rows) == [(BOT, 2), (BOT, 3), (BOT, 4)]


async def test_housekeeping_prunes_records_older_than_two_days_in_batches(db: Database) -> None:
    now = dt.datetime(2026, 12, 2, 12, 0, tzinfo=dt.UTC)
    old = list(range(1, 8))
    await db.run(record_handled_updates, bot_id=BOT, update_ids=old, now=now - dt.timedelta(days=3))
    await db.run(record_handled_updates, bot_id=BOT, update_ids=[100, 101], now=now - dt.timedelta(hours=1))
    pruner = HandledUpdatePruner(db=lambda: db, clock=Clock(now), rng=seeded_random(1), batch=3)
    await pruner.tick()
    assert pruner.pruned == 7  # three batches of at most 3
    assert await db.run(_rows) == [(BOT, 100), (BOT, 101)]
