"""The storage contract against a real PostgreSQL: budget, guard, closed tx, cancellation, migrations."""

from __future__ import annotations

import datetime as dt

import asyncpg
import httpx
import pytest
import trio
import trio_asyncio

from atlas.net import ConnectionHeldAcrossIO, OutboundHttp
from atlas.storage import (
    BudgetExhausted,
    Database,
    DatabaseSettings,
    DatabaseUnavailable,
    MigrationError,
    Tx,
    TxClosed,
    UnboundedFetch,
    bundled_migrations,
    migrate,
    transaction_settings,
)
from atlas.storage.migrations import Migration


async def _create_scratch(tx: Tx) -> None:
    await tx.execute("CREATE TABLE scratch (id serial PRIMARY KEY, note text NOT NULL)")


async def _count_scratch(tx: Tx) -> int:
    return int(await tx.fetchval("SELECT count(*) FROM scratch"))


async def test_500_concurrent_callers_stay_within_budget_and_all_finish(db: Database) -> None:
    inside = 0
    most_inside = 0
    finished = 0

    async def unit(tx: Tx, *, n: int) -> int:
        nonlocal inside, most_inside
        inside += 1
        most_inside = max(most_inside, inside)
        try:
            # A server round trip that takes a moment, so callers really overlap.
            return int(await tx.fetchval("SELECT $1::int FROM pg_sleep(0.002)", n))
        finally:
            inside -= 1

    async def caller(n: int) -> None:
        nonlocal finished
        assert await db.run(unit, n=n) == n
        finished += 1

    async with trio.open_nursery() as nursery:
        for n in range(500):
            nursery.start_soon(caller, n)

    stats = db.budget_statistics()
    assert finished == 500
    assert most_inside <= db.budget.total == 10
    assert most_inside > 1, "callers never overlapped; the test proves nothing"
    assert stats.in_use == 0 and stats.waiting == 0
    assert stats.borrows >= 500
    assert stats.max_wait > 0


async def test_outbound_http_inside_a_unit_raises_and_rolls_back(db: Database) -> None:
    requests_seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        requests_seen.append(request)
        return httpx.Response(200, text="should never be reached")

    await db.run(_create_scratch)
    async with OutboundHttp(base_url="http://node.invalid", transport=httpx.MockTransport(handler)) as http:

        async def unit(tx: Tx) -> None:
            await tx.execute("INSERT INTO scratch (note) VALUES ('written before the HTTP call')")
            await http.request("GET", "/v1/health")

        with pytest.raises(ConnectionHeldAcrossIO, match="unit"):
            await db.run(unit)
        # The same client works once no connection is held.
        response = await http.request("GET", "/v1/health")

    assert response.status_code == 200
    assert len(requests_seen) == 1
    assert await db.run(_count_scratch) == 0


async def test_tx_used_after_its_unit_raises(db: Database) -> None:
    async def leak(tx: Tx) -> Tx:
        return tx

    tx = await db.run(leak)
    assert not tx.is_open
    with pytest.raises(TxClosed, match="used after the unit ended"):
        await tx.fetchval("SELECT 1")
    with pytest.raises(TxClosed):
        await tx.execute("SELECT 1")


async def test_fetch_without_a_bound_is_refused(db: Database) -> None:
    async def unbounded(tx: Tx) -> object:
        return await tx.fetch("SELECT * FROM crash_reports")

    async def bounded(tx: Tx) -> int:
        rows = await tx.fetch("SELECT generate_series(1, 100) AS n LIMIT $1", 5)
        declared = await tx.fetch("SELECT 1 AS n", bounded_by="a single row")
        return len(rows) + len(declared)

    with pytest.raises(UnboundedFetch, match="LIMIT"):
        await db.run(unbounded)
    assert await db.run(bounded) == 6


async def test_unit_cancelled_mid_query_leaves_no_transaction_and_budget_whole(
    db: Database, fresh_database: str
) -> None:
    await db.run(_create_scratch)

    async def slow(tx: Tx) -> None:
        await tx.execute("INSERT INTO scratch (note) VALUES ('never committed')")
        await tx.execute("SELECT pg_sleep(30)")

    with trio.move_on_after(0.5) as scope:
        await db.run(slow)
    assert scope.cancelled_caught

    stats = db.budget_statistics()
    assert (stats.in_use, stats.waiting) == (0, 0)

    async def server_view() -> list[asyncpg.Record]:
        conn = await asyncpg.connect(fresh_database)
        try:
            return list(
                await conn.fetch(
                    "SELECT state, query FROM pg_stat_activity "
                    "WHERE datname = current_database() AND pid <> pg_backend_pid() "
                    "AND (state LIKE 'idle in transaction%' OR query LIKE '%pg_sleep(30)%')"
                )
            )
        finally:
            await conn.close()

    with trio.fail_after(10):
        while rows := await trio_asyncio.aio_as_trio(server_view)():  # noqa: ASYNC110
            # The server notices the cancel request asynchronously; give it a moment.
            await trio.sleep(0.05)
    assert rows == []
    assert await db.run(_count_scratch) == 0
    # The budget and the pool still work at full width.
    async with trio.open_nursery() as nursery:
        for _ in range(db.budget.total):
            nursery.start_soon(db.run, _count_scratch)


async def _without_settings(tx: Tx) -> tuple[str, str]:
    return (
        str(await tx.fetchval("SELECT current_setting('plan_cache_mode')")),
        str(await tx.fetchval("SELECT current_setting('lock_timeout')")),
    )


@transaction_settings(plan_cache_mode="force_generic_plan", lock_timeout="250")
async def _with_settings(tx: Tx) -> tuple[str, str]:
    return await _without_settings(tx)


async def test_transaction_settings_hold_for_their_unit_only(bridge: None, fresh_database: str) -> None:
    # One connection, so the second unit runs on the connection the first one set.
    db = await Database.open(DatabaseSettings(dsn=fresh_database, pool_size=1))
    try:
        assert await db.run(_with_settings) == ("force_generic_plan", "250ms")
        assert await db.run(_count_noop) == 1
        assert await db.run(_without_settings) == ("auto", "0")
        with pytest.raises(ValueError, match="values identifiers or numbers"):
            transaction_settings(lock_timeout="1; DROP TABLE users")
    finally:
        await db.close()


async def test_a_unit_with_settings_that_raises_rolls_back(db: Database) -> None:
    await db.run(_create_scratch)

    @transaction_settings(lock_timeout="1000")
    async def insert_then_fail(tx: Tx) -> None:
        await tx.execute("INSERT INTO scratch (note) VALUES ('rolled back')")
        raise LookupError("the unit's own error")

    with pytest.raises(LookupError, match="own error"):
        await db.run(insert_then_fail)
    assert await db.run(_count_scratch) == 0


async def test_a_commit_that_fails_raises_and_leaves_the_connection_clean(
    bridge: None, fresh_database: str
) -> None:
    # A deferred constraint is checked at COMMIT: db.run's own COMMIT must raise it, and the one
    # connection must come back outside any transaction (the next unit starts a fresh one).
    db = await Database.open(DatabaseSettings(dsn=fresh_database, pool_size=1))
    try:

        async def create(tx: Tx) -> None:
            await tx.execute(
                "CREATE TABLE deferred (id int PRIMARY KEY, parent int REFERENCES deferred (id)"
                " DEFERRABLE INITIALLY DEFERRED)"
            )

        async def orphan(tx: Tx) -> None:
            await tx.execute("INSERT INTO deferred (id, parent) VALUES (1, 99)")

        async def rows(tx: Tx) -> int:
            return int(await tx.fetchval("SELECT count(*) FROM deferred"))

        await db.run(create)
        with pytest.raises(asyncpg.ForeignKeyViolationError):
            await db.run(orphan)
        # On the same connection: no "current transaction is aborted", and nothing committed.
        assert await db.run(rows) == 0
        assert await db.run(_count_noop) == 1
    finally:
        await db.close()


async def test_budget_deadline_gives_a_clear_error(bridge: None, fresh_database: str) -> None:
    db = await Database.open(DatabaseSettings(dsn=fresh_database, pool_size=1, acquire_timeout=0.2))
    try:
        release = trio.Event()

        async def hold(tx: Tx) -> None:
            await tx.execute("SELECT pg_sleep(1)")

        async with trio.open_nursery() as nursery:
            nursery.start_soon(db.run, hold)
            await trio.sleep(0.05)
            with pytest.raises(BudgetExhausted, match=r"1/1 in use"):
                await db.run(_count_noop)
            release.set()
        assert db.budget_statistics().exhausted == 1
    finally:
        await db.close()


async def _count_noop(tx: Tx) -> int:
    return int(await tx.fetchval("SELECT 1"))


async def test_migrating_twice_changes_nothing(db: Database) -> None:
    now = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    assert await migrate(db, now=now) == []  # the template was migrated already

    async def applied(tx: Tx) -> list[tuple[int, str]]:
        rows = await tx.fetch("SELECT version, checksum FROM schema_migrations ORDER BY version LIMIT 1000")
        return [(r["version"], r["checksum"]) for r in rows]

    before = await db.run(applied)
    assert [v for v, _ in before] == [m.version for m in bundled_migrations()]
    assert await migrate(db, now=now) == []
    assert await db.run(applied) == before


async def test_an_edited_migration_is_refused(db: Database) -> None:
    first, *rest = bundled_migrations()
    edited = Migration(first.version, first.name, first.sql + "\n-- edited")
    with pytest.raises(MigrationError, match="edited after it was applied"):
        await migrate(db, now=dt.datetime(2026, 1, 1, tzinfo=dt.UTC), migrations=[edited, *rest])
    with pytest.raises(MigrationError, match="does not know"):
        await migrate(db, now=dt.datetime(2026, 1, 1, tzinfo=dt.UTC), migrations=[first])


async def test_a_closed_database_says_so_in_storage_terms(bridge: None, fresh_database: str) -> None:
    db = await Database.open(DatabaseSettings(dsn=fresh_database, pool_size=1))
    await db.close()
    with pytest.raises(DatabaseUnavailable, match="pool is closed"):
        await db.run(_count_noop)
