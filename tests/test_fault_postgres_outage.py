"""A real PostgreSQL outage under load: restarted, then killed (``pg_ctl stop -m immediate``) for 10 s.

The whole tree runs as ``atlas run`` builds it (``tests/_running_tree.py``) against an embedded
PostgreSQL of the test's own, with due work for every worker and users talking to the bot through
the Bot API emulator. Issue 11 found a 10 s stop made the ``workers`` supervisor give up three times
and left no crash report in ``atlas crashes``. Asserted here, against the real fault:

* no supervisor gives up, every child of every supervisor is running afterwards, and actors
  that met the outage were marked as waiting for the database (what ``/status`` shows);
* every update a user sent was answered — normally, or with the apology during the outage — and
  the bot answers normally again after it;
* the due work is done after the restart, and the invariant audit (``atlas.testing.invariants``:
  balances = ledgers, renewals once, no message doubled, every outbox row settled) holds;
* the crash reports made while the database was down were held and are in ``atlas crashes --json``
  (the real CLI, run against the database afterwards).
"""

from __future__ import annotations

import datetime as dt
import functools

import pytest
import trio

from atlas.runtime.services import Services
from atlas.supervision import ChildState
from atlas.testing.botapi import BotApiEmulator
from atlas.testing.invariants import audit, deliveries_from
from tests._fault_support import (
    Conversations,
    add_users,
    atlas_crashes_json,
    due_work,
    keep_users_talking,
    own_postgres,
    seed_due_work,
)
from tests._running_tree import running_tree

ROWS = 200  # per kind of due work
USERS = range(600, 612)
OUTAGE = 10.0  # seconds the server stays down after the immediate stop


def _children(services: Services) -> dict[str, ChildState]:
    return {c.path: c.state for sup in services.supervisors for c in sup.statistics().children}


def _waiting(services: Services) -> set[str]:
    return {
        c.path
        for sup in services.supervisors
        for c in sup.statistics().children
        if c.waiting_for == "database"
    }


@pytest.mark.slow
async def test_a_restart_and_a_ten_second_kill_of_postgres_under_load_lose_nothing(bridge: None) -> None:
    emulator = BotApiEmulator(bot_username="atlas_outage_bot")
    seen = Conversations()
    stop_talking = trio.Event()
    async with (
        own_postgres() as pg,
        running_tree(
            pg.dsn, emulator=emulator, db_pool_size=4,
            seed=2611,  # every batch worker's seeded first tick falls within 10 s
            db_acquire_timeout=5.0, db_unit_timeout=10.0, db_statement_timeout=8.0,
        ) as tree,
    ):  # fmt: skip
        services = tree.services
        db = services.require_db()
        await db.run(seed_due_work, now=services.clock.now(), rows=ROWS)
        waiting_seen: set[str] = set()
        async with trio.open_nursery() as load:
            # A pace that keeps the outage's crash reports (one per apology) under the sink's 500.
            talk = functools.partial(keep_users_talking, pause=1.5)
            load.start_soon(talk, add_users(emulator, USERS), stop_talking, seen)
            await trio.sleep(3)

            # 1. A restart mid-load (fast shutdown: every connection of the pool is dropped).
            await pg.server.restart("fast")
            await trio.sleep(5)

            # 2. A kill: every server process dies at once, and the socket is gone for 10 s.
            went_down = services.clock.now()
            await pg.server.stop("immediate")
            with trio.move_on_after(OUTAGE):
                while True:
                    waiting_seen |= _waiting(services)
                    await trio.sleep(0.5)
            await pg.server.start()
            came_back = services.clock.now()
            back_at = trio.current_time()

            # Users keep talking for a while after the database is back.
            await trio.sleep(15)
            stop_talking.set()

        # The due work is done after the restart (the workers retry what the outage interrupted).
        with trio.move_on_after(300):  # a bound against hangs on a loaded machine, not a speed test
            while not (left := await db.run(due_work)).done:  # noqa: ASYNC110 - polls the database
                await trio.sleep(1)
        assert left.done, left
        store = services.crash_store
        assert store is not None
        with trio.fail_after(30):  # the held reports are written within the storage child's 5 s
            while store.pending:  # noqa: ASYNC110
                await trio.sleep(0.5)
        records = [record for user_id in USERS for record in emulator.chat_log(user_id)]
        report = await audit(
            db, now=services.clock.now(), deliveries=deliveries_from(records), require_outbox_settled=True
        )
        children = _children(services)
        crash_counts = dict(services.crash_counts)
        ring = services.ring.latest()
        listed = await _crashes_listed(pg.dsn)

    # No supervisor gave up; every child is running; the outage was waited out, not crashed through.
    assert crash_counts.get("gave_up", 0) == 0, crash_counts
    assert all(state is ChildState.RUNNING for state in children.values()), children
    assert waiting_seen, "no actor was marked as waiting for the database during the outage"

    # Every update got an answer; the outage's were apologies; after it, normal answers again.
    assert seen.unanswered == [], seen.unanswered
    assert seen.apologies > 0, "nobody met the outage: the load did not reach the database"
    assert any(at > back_at + 5 for at in seen.answered_at), "no normal answer after the restart"

    # Nothing lost: the seeded work is done, every message settled, and every invariant holds.
    assert left.balances_off == 0
    assert report.ok, report.describe()

    # Reports made while the database was down were held, then written: the operator sees them.
    assert store.dropped == 0
    during = [r for r in ring if went_down <= r.time <= came_back]
    assert during, f"no crash report during the outage; kinds: {crash_counts}"
    missing = [(r.path, r.time.isoformat()) for r in during if (r.path, r.time) not in listed]
    assert missing == [], f"reports made during the outage missing from `atlas crashes`: {missing}"


async def _crashes_listed(dsn: str) -> set[tuple[str, dt.datetime]]:
    reports = await atlas_crashes_json(dsn, "--since", "1h", "--limit", "1000")
    return {(r["path"], dt.datetime.fromisoformat(r["time"])) for r in reports}
