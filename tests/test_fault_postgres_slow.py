"""A real slow PostgreSQL: a hot table held under ``ACCESS EXCLUSIVE`` by another session.

While the lock is held every statement that touches ``users`` waits in the server, as it would
behind a long migration or a stuck batch job. The whole tree runs as ``atlas run`` builds it
(``tests/_running_tree.py``) with short timeouts, and users keep pressing ``/start`` (which writes
``users``). Asserted, against the real fault:

* the statement timeout fires in the server: no Atlas session waits on the lock much longer than
  ``ATLAS_DB_STATEMENT_TIMEOUT`` (sampled from ``pg_stat_activity``), although the lock is held far
  longer;
* budget waits stay bounded (the budget's longest wait is within ``ATLAS_DB_ACQUIRE_TIMEOUT``) and
  every user gets an answer within acquire timeout + unit timeout + the apology's time box: the
  apology from the locale file, instead of a hang;
* no supervisor gives up, every child is running, and once the lock is gone users get the bot's
  normal answers again.
"""

from __future__ import annotations

import asyncpg
import pytest
import trio
import trio_asyncio

from atlas.runtime.services import Services
from atlas.supervision import ChildState
from atlas.testing.botapi import BotApiEmulator
from tests._fault_support import APOLOGY, Conversations, add_users, keep_users_talking
from tests._running_tree import running_tree

STATEMENT_TIMEOUT = 2.0
UNIT_TIMEOUT = 4.0
ACQUIRE_TIMEOUT = 2.0
APOLOGY_BOX = 5.0  # the dispatcher's apology_timeout
HOLD = 45.0  # how long the lock is held: far beyond every timeout above
USERS = range(700, 708)


def _children(services: Services) -> dict[str, ChildState]:
    return {c.path: c.state for sup in services.supervisors for c in sup.statistics().children}


async def _hold_users_table(dsn: str, taken: trio.Event, release: trio.Event) -> None:
    """Lock ``users`` in ACCESS EXCLUSIVE mode from a session of its own until ``release``."""
    conn = await trio_asyncio.aio_as_trio(asyncpg.connect)(dsn)
    try:
        await trio_asyncio.aio_as_trio(conn.execute)("BEGIN; LOCK TABLE users IN ACCESS EXCLUSIVE MODE")
        taken.set()
        await release.wait()
        await trio_asyncio.aio_as_trio(conn.execute)("ROLLBACK")
    finally:
        await trio_asyncio.aio_as_trio(conn.close)()


async def _longest_lock_wait(conn: asyncpg.Connection) -> float:
    """The longest time any Atlas session has been waiting on a lock right now, in seconds."""
    value = await trio_asyncio.aio_as_trio(conn.fetchval)(
        """
        SELECT coalesce(max(extract(epoch FROM clock_timestamp() - query_start)), 0)::float8
        FROM pg_stat_activity
        WHERE application_name = 'atlas' AND wait_event_type = 'Lock' AND datname = current_database()
        """
    )
    return float(value)


@pytest.mark.slow
@pytest.mark.xdist_group("realtime")  # bounded answer times: never beside the other real-time tests
async def test_a_table_locked_for_45_s_gets_users_an_apology_not_a_hang(
    bridge: None, fresh_database: str
) -> None:
    emulator = BotApiEmulator(bot_username="atlas_slow_bot")
    async with running_tree(
        fresh_database, emulator=emulator, db_pool_size=4, seed=2611,
        db_acquire_timeout=ACQUIRE_TIMEOUT, db_unit_timeout=UNIT_TIMEOUT,
        db_statement_timeout=STATEMENT_TIMEOUT,
    ) as tree:  # fmt: skip
        services = tree.services
        db = services.require_db()
        users = add_users(emulator, USERS)
        for user in users:  # registered first: the lock meets returning users (the hot path)
            user.send_command("/start")
            first = await user.next_message(within=60)
            assert first.plain_text != APOLOGY

        taken, release, stop_talking = trio.Event(), trio.Event(), trio.Event()
        during = Conversations()
        waits: list[float] = []
        probe = await trio_asyncio.aio_as_trio(asyncpg.connect)(fresh_database)
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(_hold_users_table, fresh_database, taken, release)
                await taken.wait()
                locked_at = trio.current_time()
                nursery.start_soon(keep_users_talking, users, stop_talking, during)
                while trio.current_time() - locked_at < HOLD:
                    waits.append(await _longest_lock_wait(probe))
                    await trio.sleep(0.5)
                stop_talking.set()
                release.set()
        finally:
            with trio.CancelScope(shield=True):
                await trio_asyncio.aio_as_trio(probe.close)()
        budget = db.budget_statistics()

        # After the lock: the bot answers normally again.
        after = Conversations()
        for user in users:
            user.skip_received()
            user.send_command("/start")
            record = await user.next_message(within=60)
            after.answered += int(record.plain_text != APOLOGY)
        children = _children(services)
        crash_counts = dict(services.crash_counts)

    # The statement timeout fired in the server: nobody of Atlas's waited on the lock for long.
    assert max(waits) < STATEMENT_TIMEOUT + 3.0, f"longest lock wait {max(waits):.1f} s"
    # Budget waits bounded; every answer came within the timeouts, and they were apologies.
    assert budget.max_wait <= ACQUIRE_TIMEOUT + 1.0, budget
    assert during.unanswered == [], during.unanswered
    assert during.apologies >= len(USERS), during
    bound = ACQUIRE_TIMEOUT + UNIT_TIMEOUT + APOLOGY_BOX + 5.0
    assert max(during.latencies) < bound, f"slowest answer {max(during.latencies):.1f} s (bound {bound} s)"
    # Nothing gave up; afterwards everything works.
    assert crash_counts.get("gave_up", 0) == 0, crash_counts
    assert all(state is ChildState.RUNNING for state in children.values()), children
    assert after.answered == len(USERS)
