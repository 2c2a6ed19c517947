"""A full reconcile racing convergence on the same node, from two processes, and the node leases.

Two :class:`Database` pools on one database stand for two processes: controller A (pool 1)
reconciles while controller B (pool 2) converges. The emulator's ``change_gate`` holds A's delete
of an orphan at the node until B has put the same key back (or a second has passed), which is the
exact interleaving of the race: A re-checked "not wanted", B then wanted the key and put it, A's
delete lands. Without the node lease the delete removes a wanted key that the database records as
applied; with it, B's claims are refused while A holds the lease, so B puts the key after the
delete. Checked at the node after every round.
"""

from __future__ import annotations

import datetime as dt
import random
import uuid

import trio

from atlas.actors.vpn_controller import VpnController
from atlas.clock import Clock
from atlas.storage import Database, DatabaseSettings, Tx
from atlas.storage.units.vpn import Backoff, claim_leased_node_work, plan_key_changes
from atlas.storage.units.vpn_node_lease import (
    release_node_lease,
    take_converge_lease,
    take_reconcile_lease,
)
from atlas.testing.node_emulator import NodeEmulator
from atlas.vpn import Fleet, NodeConfig

TOKEN = "node-token-0123456789abcdef"
NOW = dt.datetime(2025, 3, 1, 12, 0, tzinfo=dt.UTC)
ROUNDS = 4
HOLD = 1.0  # how long the node holds the reconcile's delete, waiting for the competing put


def controller(db: Database, fleet: Fleet, lease: float = 30.0) -> VpnController:
    return VpnController(
        db=lambda: db,
        fleet=fleet,
        clock=Clock(NOW),
        rng=random.Random(3),
        reconcile_every=None,
        batch=16,
        lease=lease,
        backoff=Backoff(base=0.05, cap=0.2),
        period=3600.0,
        first_tick=(3600.0, 3600.0),
    )


async def _new_key(tx: Tx, *, user_id: int, now: dt.datetime) -> uuid.UUID:
    await tx.execute(
        "INSERT INTO users (id, language, referral_code, created_at) "
        "VALUES ($1::bigint, 'en', 'ref' || $1::text, $2)",
        user_id,
        now,
    )
    subscription = await tx.fetchval(
        """
        INSERT INTO subscriptions (user_id, kind, status, starts_at, expires_at, token,
                                   created_at, updated_at)
        VALUES ($1::bigint, 'trial', 'active', $2, $2::timestamptz + interval '7 days',
                md5('token' || $1::text), $2, $2)
        RETURNING id
        """,
        user_id,
        now,
    )
    key = uuid.uuid4()
    await tx.execute(
        "INSERT INTO vpn_keys (subscription_id, uuid, desired, created_at, changed_at) "
        "VALUES ($1, $2, 'present', $3, $3)",
        subscription,
        key,
        now,
    )
    return key


async def _set_desired(tx: Tx, *, key: uuid.UUID, desired: str, now: dt.datetime) -> None:
    await tx.execute(
        "UPDATE vpn_keys SET desired = $2, generation = generation + 1, changed_at = $3 WHERE uuid = $1",
        key,
        desired,
        now,
    )


async def _wanted_present(tx: Tx) -> set[str]:
    rows = await tx.fetch(
        "SELECT uuid::text AS email FROM vpn_keys WHERE desired = 'present' LIMIT 10000"
    )
    return {row["email"] for row in rows}


async def _applied_present(tx: Tx, *, key: uuid.UUID) -> bool:
    row = await tx.fetchrow(
        "SELECT kn.applied, kn.pending FROM vpn_key_nodes kn JOIN vpn_keys k ON k.id = kn.key_id "
        "WHERE k.uuid = $1 AND kn.node = 'n0'",
        key,
    )
    return row is not None and row["applied"] == "present" and not row["pending"]


async def _pending(tx: Tx) -> int:
    unplanned = await tx.fetchval("SELECT count(*) FROM vpn_keys WHERE planned_generation <> generation")
    pending = await tx.fetchval("SELECT count(*) FROM vpn_key_nodes WHERE pending")
    return int(unplanned) + int(pending)


class Race:
    """One round: A reconciles; once A's delete of ``key`` reaches the node, B wants it and converges."""

    def __init__(self, a: VpnController, b: VpnController, b_db: Database, key: uuid.UUID) -> None:
        self.a, self.b, self.b_db, self.key = a, b, b_db, key
        self.delete_arrived = trio.Event()
        self.put_back = trio.Event()
        self.reconciled = trio.Event()

    async def gate(self, kind: str, email: str) -> None:
        """The node's change gate: hold A's delete until B's put has landed (or HOLD passed)."""
        if email != str(self.key):
            return
        if kind == "put":
            self.put_back.set()
            return
        self.delete_arrived.set()  # A has re-checked "not wanted" and sent the delete
        with trio.move_on_after(HOLD):
            await self.put_back.wait()

    async def reconcile(self) -> None:
        await self.a.reconcile()
        self.reconciled.set()

    async def want_again_and_converge(self) -> None:
        await self.delete_arrived.wait()
        await self.b_db.run(_set_desired, key=self.key, desired="present", now=NOW)
        # B converges as fast as it can until both have settled.
        while not (self.reconciled.is_set() and not await self.b_db.run(_pending)):
            await self.b.converge()
            await trio.sleep(0.01)


async def test_reconcile_racing_convergence_never_leaves_a_wanted_key_off_the_node(
    db: Database, fresh_database: str, nursery: trio.Nursery
) -> None:
    emulator = NodeEmulator(TOKEN)
    await nursery.start(emulator.run)
    url = str(emulator.url)
    node = NodeConfig(name="n0", agent_url=url, token=TOKEN, public_host="127.0.0.1", port=1, security="none")
    other_db = await Database.open(DatabaseSettings(dsn=fresh_database, pool_size=5))
    try:
        async with Fleet([node], timeout=5) as fleet_a, Fleet([node], timeout=5) as fleet_b:
            a, b = controller(db, fleet_a), controller(other_db, fleet_b)
            for user in range(10):  # some keys that stay wanted throughout
                await db.run(_new_key, user_id=500 + user, now=NOW)
            await b.converge()
            raced = 0
            for round_ in range(ROUNDS):
                # A key on the node that the database no longer wants: an orphan to the reconcile.
                key = await other_db.run(_new_key, user_id=1000 + round_, now=NOW)
                await b.converge()
                assert str(key) in emulator.users
                await other_db.run(_set_desired, key=key, desired="absent", now=NOW)
                race = Race(a, b, other_db, key)
                emulator.change_gate = race.gate
                async with trio.open_nursery() as both:
                    both.start_soon(race.reconcile)
                    both.start_soon(race.want_again_and_converge)
                emulator.change_gate = None
                raced += race.put_back.is_set()
                assert await db.run(_applied_present, key=key), "the database records the key as applied"
                wanted = await db.run(_wanted_present)
                missing = wanted - set(emulator.users)
                assert not missing, f"round {round_}: wanted keys absent from the node: {sorted(missing)}"
                assert set(emulator.users) == wanted  # and the reconcile still removed what it should
            assert raced == ROUNDS  # the competing put did come, every round
    finally:
        await other_db.close()


async def test_a_reconcile_never_granted_its_lease_reports_the_node_and_deletes_nothing(
    db: Database, nursery: trio.Nursery
) -> None:
    emulator = NodeEmulator(TOKEN)
    await nursery.start(emulator.run)
    url = str(emulator.url)
    node = NodeConfig(name="n0", agent_url=url, token=TOKEN, public_host="127.0.0.1", port=1, security="none")
    orphan = str(uuid.uuid4())
    emulator.put_orphan(orphan, orphan)
    # Another process converges n0 for the next hour (a stuck pass, say).
    hour = NOW + dt.timedelta(hours=1)
    assert await db.run(take_converge_lease, node="n0", holder="other/converge", now=NOW, until=hour)
    async with Fleet([node], timeout=5) as fleet:
        report = await controller(db, fleet, lease=1.0).reconcile()  # waits at most 1 s
    assert report.failed_nodes == ("n0",) and report.orphans_removed == 0
    assert orphan in emulator.users and emulator.ops["delete"] == 0
    # Its waiting row went with it: the other converger is not held off.
    assert await db.run(take_converge_lease, node="n0", holder="other/converge", now=NOW, until=hour)


async def test_node_leases_are_shared_for_convergence_and_exclusive_for_reconcile(db: Database) -> None:
    later = NOW + dt.timedelta(seconds=30)
    assert await db.run(take_converge_lease, node="n0", holder="a/converge", now=NOW, until=later)
    assert await db.run(take_converge_lease, node="n0", holder="b/converge", now=NOW, until=later)
    assert await db.run(take_converge_lease, node="n1", holder="c/converge", now=NOW, until=later)
    # A reconcile is refused while convergence holds the node, and waits...
    wait = {"until": later, "wait_until": NOW + dt.timedelta(seconds=5)}
    assert not await db.run(take_reconcile_lease, node="n0", holder="r/reconcile", now=NOW, **wait)
    # ...which already refuses new convergence (and renewals) on that node, not on others.
    assert not await db.run(take_converge_lease, node="n0", holder="a/converge", now=NOW, until=later)
    assert await db.run(take_converge_lease, node="n1", holder="a/converge", now=NOW, until=later)
    # A claim under a refused lease claims nothing (None, not "no work"), though work is due.
    await db.run(_new_key, user_id=42, now=NOW)
    assert await db.run(plan_key_changes, nodes=["n0"], now=NOW, limit=10) == 1
    lease = {"now": NOW, "lease_until": later, "limit": 5}
    assert await db.run(claim_leased_node_work, node="n0", owner="a", holder="a/converge", **lease) is None
    # The convergence passes end and drop their leases: the reconcile gets in.
    assert await db.run(release_node_lease, node="n0", holder="a/converge")
    assert await db.run(release_node_lease, node="n0", holder="b/converge")
    assert await db.run(take_reconcile_lease, node="n0", holder="r/reconcile", now=NOW, **wait)
    assert not await db.run(take_reconcile_lease, node="n0", holder="s/reconcile", now=NOW, **wait)
    assert await db.run(release_node_lease, node="n0", holder="r/reconcile")
    assert not await db.run(release_node_lease, node="n0", holder="r/reconcile")
    # s's wait ran out, and leases run out: a crashed holder never blocks a node for good.
    after_wait = NOW + dt.timedelta(seconds=6)
    assert await db.run(take_converge_lease, node="n0", holder="a/converge", now=after_wait, until=later)
    assert not await db.run(take_reconcile_lease, node="n0", holder="r/reconcile", now=after_wait, **{
        "until": after_wait + dt.timedelta(seconds=30),
        "wait_until": after_wait + dt.timedelta(seconds=5),
    })
    expired = later + dt.timedelta(seconds=1)
    assert await db.run(
        take_reconcile_lease,
        node="n0",
        holder="r/reconcile",
        now=expired,
        until=expired + dt.timedelta(seconds=30),
        wait_until=expired + dt.timedelta(seconds=5),
    )
    # Under the reconcile lease even a fresh converger is refused; once it is dropped, the due
    # row is claimed (and an idle node needs no lease at all: "no work" is [], not None).
    fresh = {"now": expired, "lease_until": expired + dt.timedelta(seconds=30), "limit": 5}
    assert await db.run(claim_leased_node_work, node="n0", owner="c", holder="c/converge", **fresh) is None
    assert await db.run(release_node_lease, node="n0", holder="r/reconcile")
    (work,) = await db.run(claim_leased_node_work, node="n0", owner="c", holder="c/converge", **fresh)
    assert work.desired == "present"
    assert await db.run(claim_leased_node_work, node="n9", owner="c", holder="c/converge", **fresh) == []
