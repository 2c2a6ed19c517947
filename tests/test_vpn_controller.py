"""The VPN controller against emulated nodes over real sockets, and its units of work.

Shown here: convergence onto every node with one "key active" notice per key; a long outage keeps
work pending behind an open breaker and loses nothing (a fresh controller finishes it); the full
reconcile removes orphans and re-adds missing users; garbage answers are failures; two controllers
on two database pools never apply the same (key, node) twice; a node call inside a unit of work
raises; leases, generations and backoff in the units themselves.
"""

from __future__ import annotations

import collections
import datetime as dt
import random
import uuid
from collections.abc import Sequence
from typing import Any

import pytest
import trio
import trio.testing

from atlas.actors.vpn_controller import ReconcileReport, VpnController
from atlas.clock import Clock
from atlas.net import ConnectionHeldAcrossIO
from atlas.storage import Database, DatabaseSettings, Tx
from atlas.storage.units.expiry import expire_due
from atlas.storage.units.subscriptions import start_trial
from atlas.storage.units.users import register_user
from atlas.storage.units.vpn import (
    KEY_ACTIVE_KIND,
    Backoff,
    NodeResult,
    claim_node_work,
    plan_key_changes,
    record_node_results,
)
from atlas.supervision import Backoff as RestartBackoff
from atlas.supervision import CrashReporter, RingSink, Strategy, Supervisor
from atlas.testing.node_emulator import EmulatedUser, NodeEmulator
from atlas.vpn import Fleet, NodeConfig

TOKEN = "node-token-0123456789abcdef"
NOW = dt.datetime(2025, 3, 1, 12, 0, tzinfo=dt.UTC)


# -- helpers ------------------------------------------------------------------------------------


class CountingEmulator(NodeEmulator):
    """Counts puts per email, single or batched (the base emulator counts per kind only)."""

    def __init__(self, token: str, *, latency: float = 0.0) -> None:
        super().__init__(token, latency=latency)
        self.puts: collections.Counter[str] = collections.Counter()

    async def _apply_put(self, email: str, wanted: EmulatedUser) -> bool:
        self.puts[email] += 1
        return await super()._apply_put(email, wanted)


async def start_nodes(
    nursery: trio.Nursery, count: int, *, latency: float = 0.0, cls: type[NodeEmulator] = NodeEmulator
) -> list[Any]:
    emulators = []
    for _ in range(count):
        emulator = cls(TOKEN, latency=latency)
        await nursery.start(emulator.run)
        emulators.append(emulator)
    return emulators


def node_configs(emulators: Sequence[NodeEmulator]) -> tuple[NodeConfig, ...]:
    return tuple(
        NodeConfig(
            name=f"n{i}",
            agent_url=str(emulator.url),
            token=TOKEN,
            public_host="127.0.0.1",
            port=443,
            security="none",
        )
        for i, emulator in enumerate(emulators)
    )


def make_controller(db: Database, fleet: Fleet, clock: Clock, **overrides: Any) -> VpnController:
    settings: dict[str, Any] = {
        "reconcile_every": None,
        "batch": 10,
        "lease": 30.0,
        "backoff": Backoff(base=10.0, cap=300.0),
        "period": 3600.0,
        "first_tick": (3600.0, 3600.0),
    }
    settings.update(overrides)
    return VpnController(db=lambda: db, fleet=fleet, clock=clock, rng=random.Random(7), **settings)


async def _seed(tx: Tx, *, count: int, first_user: int, now: dt.datetime) -> list[uuid.UUID]:
    await tx.execute(
        """
        INSERT INTO users (id, language, referral_code, created_at)
        SELECT id, 'en', 'ref' || id, $3 FROM generate_series($1::bigint, $2::bigint) AS id
        """,
        first_user,
        first_user + count - 1,
        now,
    )
    await tx.execute(
        """
        INSERT INTO subscriptions (user_id, kind, status, starts_at, expires_at, token,
                                   created_at, updated_at)
        SELECT id, 'trial', 'active', $3::timestamptz, $3::timestamptz + interval '7 days',
               md5('token' || id), $3, $3
        FROM generate_series($1::bigint, $2::bigint) AS id
        """,
        first_user,
        first_user + count - 1,
        now,
    )
    rows = await tx.fetch(
        """
        INSERT INTO vpn_keys (subscription_id, uuid, desired, created_at, changed_at)
        SELECT id, gen_random_uuid(), 'present', $3, $3 FROM subscriptions
        WHERE user_id BETWEEN $1 AND $2
        RETURNING uuid
        """,
        first_user,
        first_user + count - 1,
        now,
        bounded_by="the keys just inserted",
    )
    return [uuid.UUID(str(row["uuid"])) for row in rows]


async def seed_keys(db: Database, count: int, *, first_user: int = 1000) -> set[str]:
    """``count`` users with an active subscription and a present key; returns the key emails."""
    keys = await db.run(_seed, count=count, first_user=first_user, now=NOW)
    return {str(key) for key in keys}


async def _node_rows(tx: Tx, *, node: str) -> list[dict[str, Any]]:
    rows = await tx.fetch(
        """
        SELECT k.uuid::text AS email, kn.applied, kn.pending, kn.attempts, kn.next_attempt_at,
               kn.last_error, kn.lease_owner
        FROM vpn_key_nodes kn JOIN vpn_keys k ON k.id = kn.key_id
        WHERE kn.node = $1 ORDER BY k.uuid LIMIT 10000
        """,
        node,
    )
    return [dict(row) for row in rows]


async def node_rows(db: Database, node: str) -> list[dict[str, Any]]:
    return await db.run(_node_rows, node=node)


async def _outbox(tx: Tx, *, kind: str) -> list[dict[str, Any]]:
    rows = await tx.fetch(
        "SELECT chat_id, payload::text AS payload, dedupe_key FROM outbox "
        "WHERE kind = $1 ORDER BY id LIMIT 1000",
        kind,
    )
    return [dict(row) for row in rows]


async def _pending_count(tx: Tx) -> int:
    unplanned = await tx.fetchval("SELECT count(*) FROM vpn_keys WHERE planned_generation <> generation")
    pending = await tx.fetchval("SELECT count(*) FROM vpn_key_nodes WHERE pending")
    return int(unplanned) + int(pending)


async def outbox(db: Database, kind: str) -> list[dict[str, Any]]:
    return await db.run(_outbox, kind=kind)


async def trial_user(db: Database, user_id: int, now: dt.datetime) -> uuid.UUID:
    await db.run(
        register_user,
        user_id=user_id,
        username=None,
        first_name="T",
        language="en",
        start_payload=None,
        now=now,
    )
    view = await db.run(start_trial, user_id=user_id, trial_days=3, now=now)
    assert view.key_uuid is not None
    return view.key_uuid


# -- convergence --------------------------------------------------------------------------------


async def test_converges_every_node_and_tells_each_user_once(db: Database, nursery: trio.Nursery) -> None:
    emulators = await start_nodes(nursery, 3)
    clock = Clock(NOW)
    first = await trial_user(db, 101, NOW)
    second = await trial_user(db, 102, NOW + dt.timedelta(days=2))  # expires two days later
    async with Fleet(node_configs(emulators), timeout=5) as fleet:
        controller = make_controller(db, fleet, clock)
        report = await controller.converge()
        assert (report.planned, report.converged, report.failed, report.notified) == (2, 6, 0, 2)
        for emulator in emulators:
            assert {email: user.uuid for email, user in emulator.users.items()} == {
                str(first): str(first),
                str(second): str(second),
            }
        notices = await outbox(db, KEY_ACTIVE_KIND)
        assert sorted((n["chat_id"], n["dedupe_key"]) for n in notices) == [
            (101, f"key-active:{first}"),
            (102, f"key-active:{second}"),
        ]
        assert all('"subscription_id"' in n["payload"] for n in notices)

        # Level-triggered and idle: nothing to do, no node call, no second notice.
        puts = [emulator.ops["put"] for emulator in emulators]
        again = await controller.converge()
        assert (again.planned, again.converged, again.failed) == (0, 0, 0)
        assert [emulator.ops["put"] for emulator in emulators] == puts

        # The first trial expires: its key is wanted absent, and removed from every node.
        expired = await db.run(expire_due, now=NOW + dt.timedelta(days=3, seconds=1), limit=10)
        assert expired.expired == 1
        report = await controller.converge()
        assert (report.planned, report.converged, report.failed) == (1, 3, 0)
        for emulator in emulators:
            assert set(emulator.users) == {str(second)}
        assert len(await outbox(db, KEY_ACTIVE_KIND)) == 2
        assert controller.counters().converged == 9


async def test_a_long_outage_loses_nothing_and_converges_after_recovery(
    db: Database, nursery: trio.Nursery, mock_clock: trio.testing.MockClock
) -> None:
    # Time only moves when the test jumps it (a safety net jumps if something waits > 1 s).
    mock_clock.autojump_threshold = 1.0
    emulators = await start_nodes(nursery, 3)
    nodes = node_configs(emulators)
    clock = Clock(NOW)
    wanted = await seed_keys(db, 30)
    down = emulators[1]
    await down.outage()

    fleet = Fleet(nodes, timeout=5, max_concurrency=4, failure_threshold=3, reset_timeout=60)
    controller = make_controller(db, fleet, clock, backoff=Backoff(base=10.0, cap=300.0))
    for _minute in range(60):  # an hour down, a tick a minute
        await controller.converge()
        mock_clock.jump(60)

    assert set(emulators[0].users) == wanted
    assert set(emulators[2].users) == wanted
    rows = await node_rows(db, "n1")
    assert len(rows) == 30  # every key still has its pending row: nothing lost
    assert all(row["pending"] and row["applied"] == "absent" for row in rows)
    assert max(row["attempts"] for row in rows) >= 2
    assert all(row["lease_owner"] is None for row in rows)
    assert any("NodeUnavailable" in (row["last_error"] or "") for row in rows)
    stats = fleet.for_node("n1").statistics()
    assert stats.breaker.opened >= 2  # opened, then re-opened by failed probes
    # Lanes stop claiming while the circuit is open, so the node sees at most the threshold (plus
    # the other lanes' requests already in flight) and then one probe per reset period.
    assert stats.successes == 0
    assert stats.unavailable <= 4 + 60
    assert await outbox(db, KEY_ACTIVE_KIND) == []  # not active everywhere yet: nobody told
    await fleet.aclose()

    # The node comes back; a NEW controller (a restarted process) finds the work in the database.
    await down.recover()
    mock_clock.jump(300)  # past the backoff cap: every row is due again
    async with Fleet(nodes, timeout=5, max_concurrency=4) as fresh_fleet:
        fresh = make_controller(db, fresh_fleet, clock)
        for _ in range(5):
            report = await fresh.converge()
            if report.converged == 0:
                break
        assert set(down.users) == wanted
        rows = await node_rows(db, "n1")
        assert all(not row["pending"] and row["applied"] == "present" for row in rows)
        assert all(row["attempts"] == 0 and row["last_error"] is None for row in rows)
        assert len(await outbox(db, KEY_ACTIVE_KIND)) == 30


async def test_garbage_answers_are_failures_never_success(
    db: Database, nursery: trio.Nursery, mock_clock: trio.testing.MockClock
) -> None:
    mock_clock.autojump_threshold = 1.0
    (emulator,) = await start_nodes(nursery, 1)
    clock = Clock(NOW)
    wanted = await seed_keys(db, 3)
    async with Fleet(node_configs([emulator]), timeout=5, failure_threshold=5) as fleet:
        controller = make_controller(db, fleet, clock)
        # One batch request carries all three keys; each garbage answer fails the whole batch.
        for attempt, kind in enumerate(("not_json", "wrong_shape", "wrong_types")):
            emulator.garbage_next(1, kind)  # wrong_types: {"ok": "true", ...}: the right keys, strings
            report = await controller.converge()
            assert (report.converged, report.failed) == (0, 3)
            assert emulator.users == {}
            rows = await node_rows(db, "n0")
            assert all(row["pending"] and row["applied"] == "absent" for row in rows)
            assert all("NodeProtocolError" in row["last_error"] for row in rows)
            mock_clock.jump(10 * 2**attempt)  # the backoff step
        assert fleet.for_node("n0").statistics().protocol_errors == 3

        report = await controller.converge()
        assert (report.converged, report.failed, report.notified) == (3, 0, 3)
        assert set(emulator.users) == wanted


async def test_two_controllers_never_apply_the_same_key_twice(
    db: Database, fresh_database: str, nursery: trio.Nursery
) -> None:
    emulators = await start_nodes(nursery, 2, latency=0.01, cls=CountingEmulator)
    nodes = node_configs(emulators)
    wanted = await seed_keys(db, 150)
    other_db = await Database.open(DatabaseSettings(dsn=fresh_database, pool_size=5))
    try:
        async with (
            Fleet(nodes, timeout=5, max_concurrency=4) as fleet_a,
            Fleet(nodes, timeout=5, max_concurrency=4) as fleet_b,
        ):
            a = make_controller(db, fleet_a, Clock(NOW), batch=8)
            b = make_controller(other_db, fleet_b, Clock(NOW), batch=8)
            assert a.owner != b.owner

            async def drain(controller: VpnController) -> None:
                # Until nothing is pending anywhere: a pass that finds every due row leased by
                # the other controller converges nothing, yet the work is not done.
                for _ in range(1000):
                    if not await db.run(_pending_count):
                        return
                    await controller.converge()
                    await trio.sleep(0.001)
                raise AssertionError("the two controllers did not converge")

            async with trio.open_nursery() as both:
                both.start_soon(drain, a)
                both.start_soon(drain, b)
    finally:
        await other_db.close()

    for emulator in emulators:
        assert set(emulator.users) == wanted
        assert set(emulator.puts) == wanted
        assert max(emulator.puts.values()) == 1, "a (key, node) was applied twice"
    done_a, done_b = a.counters(), b.counters()
    assert done_a.converged > 0 and done_b.converged > 0, "both controllers must have worked"
    assert done_a.converged + done_b.converged == 300
    assert done_a.stale == done_b.stale == 0
    assert len(await outbox(db, KEY_ACTIVE_KIND)) == 150


async def test_batches_carry_the_claimed_rows_and_an_older_agent_gets_single_calls(
    db: Database, nursery: trio.Nursery
) -> None:
    current = CountingEmulator(TOKEN)
    older = NodeEmulator(TOKEN, batch_route=False)
    for emulator in (current, older):
        await nursery.start(emulator.run)
    wanted = await seed_keys(db, 25)
    async with Fleet(node_configs([current, older]), timeout=5, max_concurrency=2) as fleet:
        controller = make_controller(db, fleet, Clock(NOW), batch=10)
        report = await controller.converge()
        assert (report.converged, report.failed) == (50, 0)
    assert set(current.users) == set(older.users) == wanted
    # 25 rows in claims of 10 over two lanes: three batch requests, no single-user call.
    assert current.calls["batch"] == 3
    assert current.calls["put_user"] == 0 and max(current.puts.values()) == 1
    # The older agent answered 404 to the batch route; every row then went by PUT, once each.
    assert "batch" not in older.calls and older.calls["put_user"] == 25


async def test_no_node_call_inside_a_unit_of_work(db: Database, nursery: trio.Nursery) -> None:
    (emulator,) = await start_nodes(nursery, 1)
    async with Fleet(node_configs([emulator]), timeout=5) as fleet:
        client = fleet.for_node("n0")
        key = str(uuid.uuid4())

        async def sneaky(tx: Tx) -> None:
            await client.put_user(key, key)

        with pytest.raises(ConnectionHeldAcrossIO, match="inside unit of work"):
            await db.run(sneaky)
        assert emulator.ops["put"] == 0
        assert client.statistics().calls == 0  # refused before the breaker and the network

        # The controller does the same call with the guard on, outside its units: it works.
        wanted = await seed_keys(db, 1)
        report = await make_controller(db, fleet, Clock(NOW)).converge()
        assert report.converged == 1
        assert set(emulator.users) == wanted


# -- full reconcile -----------------------------------------------------------------------------


async def test_reconcile_removes_orphans_and_readds_missing_users(
    db: Database, nursery: trio.Nursery
) -> None:
    emulators = await start_nodes(nursery, 2)
    clock = Clock(NOW)
    wanted = await seed_keys(db, 7)
    async with Fleet(node_configs(emulators), timeout=5) as fleet:
        # Pages of 2 on both sides: the merge join crosses many page boundaries.
        controller = make_controller(db, fleet, clock, page_size=2)
        await controller.converge()
        spare, lost, wrong = sorted(wanted)[:3]

        # Drift on node 0: users the database does not want.
        orphan = str(uuid.uuid4())
        emulators[0].put_orphan(orphan, orphan)
        emulators[0].put_orphan("stranger@example.com", str(uuid.uuid4()))
        emulators[0].put_orphan("~after-every-uuid", str(uuid.uuid4()))
        # A key revoked in the database but not yet converged is an orphan too.
        await db.run(_revoke, email=spare, now=NOW)
        # Drift on node 1: a wanted user lost, another with the wrong account.
        del emulators[1].users[lost]
        emulators[1].put_orphan(wrong, str(uuid.uuid4()))

        report = await controller.reconcile()
        # Node 0: three strangers and the revoked key; node 1: the revoked key. Missing: lost, wrong.
        assert report == ReconcileReport(orphans_removed=4 + 1, readded=2, failed_nodes=())
        still_wanted = wanted - {spare}
        assert set(emulators[0].users) == still_wanted
        assert set(emulators[1].users) == still_wanted - {lost}

        puts = emulators[1].ops["put"]
        await controller.converge()
        for emulator in emulators:
            assert {email: user.uuid for email, user in emulator.users.items()} == {
                email: email for email in still_wanted
            }
        assert emulators[1].ops["put"] == puts + 2  # the lost one and the wrong one

        # Nothing left to repair; and the admin's "reconcile now" reaches the running actor.
        async with trio.open_nursery() as tree_nursery:
            tree = Supervisor(
                "root",
                Strategy.ONE_FOR_ONE,
                [controller.child_spec(stall_after=60)],
                max_restarts=3,
                backoff=RestartBackoff(initial=0.1, jitter=0.0),
                reporter=CrashReporter([RingSink()], now=clock.now),
                rng=random.Random(0),
            )
            await tree_nursery.start(tree.run)
            again = await controller.call("reconcile", timeout=30)
            assert again == ReconcileReport(orphans_removed=0, readded=0, failed_nodes=())
            tree_nursery.cancel_scope.cancel()
        assert controller.counters().reconciles == 2


async def _revoke(tx: Tx, *, email: str, now: dt.datetime) -> None:
    await tx.execute(
        "UPDATE vpn_keys SET desired = 'absent', generation = generation + 1, changed_at = $2 "
        "WHERE uuid = $1",
        uuid.UUID(email),
        now,
    )


async def test_a_failed_listing_is_reported_and_other_nodes_are_repaired(
    db: Database, nursery: trio.Nursery
) -> None:
    emulators = await start_nodes(nursery, 2)
    wanted = await seed_keys(db, 3)
    async with Fleet(node_configs(emulators), timeout=5) as fleet:
        controller = make_controller(db, fleet, Clock(NOW))
        await controller.converge()
        orphan = str(uuid.uuid4())
        for emulator in emulators:
            emulator.put_orphan(orphan, orphan)
        emulators[1].garbage_next(1, "wrong_shape")  # the listing of node 1 is garbage
        report = await controller.reconcile()
        assert report == ReconcileReport(orphans_removed=1, readded=0, failed_nodes=("n1",))
        assert set(emulators[0].users) == wanted
        assert orphan in emulators[1].users  # garbage is never taken for a listing
        assert controller.counters().reconcile_failures == 1


async def test_a_node_added_later_is_filled_by_the_reconcile(db: Database, nursery: trio.Nursery) -> None:
    emulators = await start_nodes(nursery, 2)
    nodes = node_configs(emulators)
    wanted = await seed_keys(db, 5)
    async with Fleet(nodes[:1], timeout=5) as fleet:
        await make_controller(db, fleet, Clock(NOW)).converge()
    assert set(emulators[0].users) == wanted and emulators[1].users == {}
    async with Fleet(nodes, timeout=5) as fleet:
        controller = make_controller(db, fleet, Clock(NOW))
        assert (await controller.converge()).converged == 0  # every key was planned already
        assert (await controller.reconcile()).readded == 5
        assert (await controller.converge()).converged == 5
    assert set(emulators[1].users) == wanted


# -- the units ----------------------------------------------------------------------------------


async def test_planning_finds_only_changed_keys(db: Database) -> None:
    await seed_keys(db, 3)
    assert await db.run(plan_key_changes, nodes=["n0", "n1"], now=NOW, limit=2) == 2
    assert await db.run(plan_key_changes, nodes=["n0", "n1"], now=NOW, limit=2) == 1
    assert await db.run(plan_key_changes, nodes=["n0", "n1"], now=NOW, limit=2) == 0  # idle
    assert len(await node_rows(db, "n0")) == len(await node_rows(db, "n1")) == 3
    with pytest.raises(ValueError, match="nodes must not repeat"):
        await db.run(plan_key_changes, nodes=["n0", "n0"], now=NOW, limit=2)
    with pytest.raises(ValueError, match="limit"):
        await db.run(plan_key_changes, nodes=["n0"], now=NOW, limit=0)


async def test_an_absent_key_with_no_rows_needs_nothing(db: Database) -> None:
    (email,) = await seed_keys(db, 1)
    await db.run(_revoke, email=email, now=NOW)
    assert await db.run(plan_key_changes, nodes=["n0"], now=NOW, limit=10) == 1
    assert await node_rows(db, "n0") == []


async def test_a_lease_keeps_other_claimers_off_until_it_runs_out(db: Database) -> None:
    await seed_keys(db, 2)
    await db.run(plan_key_changes, nodes=["n0"], now=NOW, limit=10)
    lease = dt.timedelta(seconds=30)
    mine = await db.run(claim_node_work, node="n0", owner="a", now=NOW, lease_until=NOW + lease, limit=10)
    assert len(mine) == 2 and all(work.desired == "present" for work in mine)
    later = NOW + dt.timedelta(seconds=5)
    assert (
        await db.run(claim_node_work, node="n0", owner="b", now=later, lease_until=later + lease, limit=10)
        == []
    )

    expired = NOW + dt.timedelta(seconds=31)  # a's lease ran out (a crashed, say)
    theirs = await db.run(
        claim_node_work, node="n0", owner="b", now=expired, lease_until=expired + lease, limit=10
    )
    assert [w.key_id for w in theirs] == [w.key_id for w in mine]
    record = {"node": "n0", "nodes": ["n0"], "now": expired, "backoff": Backoff()}
    late = await db.run(
        record_node_results, owner="a", results=[NodeResult.success(w) for w in mine], **record
    )
    assert (late.converged, late.stale) == (0, 2)  # a's results are not b's to record
    done = await db.run(
        record_node_results, owner="b", results=[NodeResult.success(w) for w in theirs], **record
    )
    assert (done.converged, done.stale, done.notified) == (2, 0, 2)
    assert all(not row["pending"] for row in await node_rows(db, "n0"))


async def test_a_key_changed_during_the_call_stays_pending(db: Database) -> None:
    (email,) = await seed_keys(db, 1)
    await db.run(plan_key_changes, nodes=["n0"], now=NOW, limit=10)
    lease_until = NOW + dt.timedelta(seconds=30)
    (work,) = await db.run(claim_node_work, node="n0", owner="a", now=NOW, lease_until=lease_until, limit=10)
    await db.run(_revoke, email=email, now=NOW)  # revoked while the PUT was in flight
    outcome = await db.run(
        record_node_results,
        node="n0",
        owner="a",
        results=[NodeResult.success(work)],
        nodes=["n0"],
        now=NOW,
        backoff=Backoff(),
    )
    assert (outcome.converged, outcome.still_pending, outcome.notified) == (1, 1, 0)
    (row,) = await node_rows(db, "n0")
    assert (row["applied"], row["pending"]) == ("present", True)
    await db.run(plan_key_changes, nodes=["n0"], now=NOW, limit=10)
    (again,) = await db.run(claim_node_work, node="n0", owner="a", now=NOW, lease_until=lease_until, limit=10)
    assert (again.desired, again.generation) == ("absent", work.generation + 1)


async def test_failures_back_off_exponentially_up_to_the_cap(db: Database) -> None:
    await seed_keys(db, 1)
    await db.run(plan_key_changes, nodes=["n0"], now=NOW, limit=10)
    backoff = Backoff(base=1.0, cap=8.0)
    now = NOW
    delays = []
    for _ in range(6):
        (work,) = await db.run(
            claim_node_work,
            node="n0",
            owner="a",
            now=now,
            lease_until=now + dt.timedelta(seconds=30),
            limit=1,
        )
        await db.run(
            record_node_results,
            node="n0",
            owner="a",
            results=[NodeResult.failure(work, "HTTP 503")],
            nodes=["n0"],
            now=now,
            backoff=backoff,
        )
        (row,) = await node_rows(db, "n0")
        delays.append((row["next_attempt_at"] - now).total_seconds())
        # Not due before its time:
        early = now + dt.timedelta(seconds=delays[-1] / 2)
        assert (
            await db.run(
                claim_node_work,
                node="n0",
                owner="a",
                now=early,
                lease_until=early + dt.timedelta(seconds=30),
                limit=1,
            )
            == []
        )
        now = row["next_attempt_at"]
    assert delays == [1, 2, 4, 8, 8, 8]
    assert [backoff.delay(n) for n in range(1, 7)] == delays
    (row,) = await node_rows(db, "n0")
    assert (row["attempts"], row["last_error"], row["pending"]) == (6, "HTTP 503", True)


def test_backoff_and_controller_arguments_are_checked() -> None:
    with pytest.raises(ValueError, match=r"Backoff\.base"):
        Backoff(base=0)
    with pytest.raises(ValueError, match=r"Backoff\.cap"):
        Backoff(base=10, cap=5)
