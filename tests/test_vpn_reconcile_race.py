"""A full reconcile racing convergence on the same node, and the node leases.

The race (issue 13): controller A reconciles the node while controller B converges it. The node
emulator's ``change_gate`` holds A's delete of an orphan at the node until B has put the same
key back (or ``HOLD`` seconds have passed), which is the exact interleaving of the race: A
re-checked "not wanted", the key was then wanted again and B put it, A's delete lands. Without
the node lease the delete removes a wanted key that the database records as applied; with it, B's
claims are refused while A holds the lease, so B puts the key after the delete. Checked at the
node after every round, in two set-ups:

* two separate OS processes (:mod:`tests._vpn_race_child`: a real ``VpnController`` and its own
  pool each, driven by commands on stdin), the node emulator in the test process over HTTP: the
  set-up of the issue, several ``atlas run`` on one database;
* two :class:`Database` pools in this process: the same race, quicker, and at each step
  inspectable.

Without the lease (``take_reconcile_lease`` granting at once and writing no row, tried by hand)
both fail in their first round: "wanted keys absent from the node".
"""

from __future__ import annotations

import datetime as dt
import os
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Protocol

import pytest
import trio

from atlas.actors.vpn_controller import VpnController
from atlas.clock import Clock
from atlas.storage import Database, DatabaseSettings, Tx
from atlas.storage.units.vpn import claim_leased_node_work, plan_key_changes
from atlas.storage.units.vpn_node_lease import (
    release_node_lease,
    take_converge_lease,
    take_reconcile_lease,
)
from atlas.testing.node_emulator import NodeEmulator
from atlas.vpn import Fleet
from tests._vpn_race_child import controller, converge_until_settled, node_config

TOKEN = "node-token-0123456789abcdef"
NOW = dt.datetime(2025, 3, 1, 12, 0, tzinfo=dt.UTC)
ROUNDS = 4
HOLD = 1.0  # how long the node holds the reconcile's delete, waiting for the competing put
PROCESS_ROUNDS = 5
PROCESS_HOLD = 3.0
"""Across processes the competing put crosses a pipe and another process's event loop: without
the lease it lands within ~0.2 s, so 3 s keeps a wide margin on a loaded machine. With the lease
every round waits the whole hold (the put can only come after the delete)."""
ROOT = Path(__file__).resolve().parent.parent


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


# -- the two sides of the race -------------------------------------------------------------------


class Side(Protocol):
    """A controller taking part in the race, wherever it runs."""

    async def reconcile(self) -> None:
        """One full reconcile of the node."""

    async def converge(self) -> None:
        """Convergence passes until no key change is pending."""

    async def chase(self, done: trio.Event) -> None:
        """Convergence passes as fast as it can until ``done`` is set and nothing is pending."""


class InProcess:
    """A side in this process: a controller on its own pool."""

    def __init__(self, vpn: VpnController, db: Database) -> None:
        self.vpn, self.db = vpn, db

    async def reconcile(self) -> None:
        await self.vpn.reconcile()

    async def converge(self) -> None:
        await converge_until_settled(self.vpn, self.db)

    async def chase(self, done: trio.Event) -> None:
        await converge_until_settled(self.vpn, self.db, done)


class ChildProcess:
    """A side in a process of its own (:mod:`tests._vpn_race_child`), driven over its stdin."""

    def __init__(self, name: str, process: trio.Process) -> None:
        self.name, self.process = name, process
        self._buffer = b""

    async def _send(self, command: str) -> None:
        assert self.process.stdin is not None
        await self.process.stdin.send_all(command.encode() + b"\n")

    async def _answer(self, expected: str, within: float = 60.0) -> str:
        """The next line the process writes, which must start with ``expected``."""
        assert self.process.stdout is not None
        with trio.fail_after(within):
            while b"\n" not in self._buffer:
                chunk = await self.process.stdout.receive_some(4096)
                assert chunk, f"{self.name} exited ({self.process.returncode}) before answering {expected!r}"
                self._buffer += chunk
        line, self._buffer = self._buffer.split(b"\n", 1)
        answer = line.decode()
        assert answer.startswith(expected), f"{self.name} answered {answer!r}, expected {expected!r}"
        return answer

    async def reconcile(self) -> None:
        await self._send("reconcile")
        answer = await self._answer("reconciled")
        assert answer.endswith(" -"), f"{self.name}: the reconcile failed on a node: {answer!r}"

    async def converge(self) -> None:
        await self._send("converge")
        await self._answer("converged")

    async def chase(self, done: trio.Event) -> None:
        await self._send("chase")
        await self._answer("chasing")
        await done.wait()
        await self._send("settle")
        await self._answer("settled")


@asynccontextmanager
async def child_process(name: str, dsn: str, node_url: str) -> AsyncIterator[ChildProcess]:
    """Start a race side as its own ``python`` process; on exit close its stdin and reap it."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    command = [sys.executable, "-m", "tests._vpn_race_child", dsn, node_url, TOKEN]
    process = await trio.lowlevel.open_process(
        command, cwd=ROOT, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE
    )
    try:
        yield ChildProcess(name, process)
        assert process.stdin is not None
        await process.stdin.aclose()  # end of commands: the process closes its pool and exits
        with trio.fail_after(30):
            code = await process.wait()
        assert code == 0, f"{name} exited with {code}"
    finally:
        if process.returncode is None:
            process.kill()
            with trio.CancelScope(shield=True):
                await process.wait()


# -- the race --------------------------------------------------------------------------------------


class Race:
    """One round: A reconciles; once A's delete of ``key`` reaches the node, the key is wanted
    again and B converges."""

    def __init__(self, key: uuid.UUID, hold: float) -> None:
        self.key, self.hold = key, hold
        self.delete_arrived = trio.Event()
        self.put_back = trio.Event()
        self.reconciled = trio.Event()

    async def gate(self, kind: str, email: str) -> None:
        """The node's change gate: hold A's delete until B's put has landed (or the hold passed)."""
        if email != str(self.key):
            return
        if kind == "put":
            self.put_back.set()
            return
        self.delete_arrived.set()  # A has re-checked "not wanted" and sent the delete
        with trio.move_on_after(self.hold):
            await self.put_back.wait()

    async def run(self, db: Database, a: Side, b: Side, now: dt.datetime) -> None:
        async def reconcile() -> None:
            await a.reconcile()
            self.reconciled.set()

        async def want_again_and_converge() -> None:
            await self.delete_arrived.wait()
            await db.run(_set_desired, key=self.key, desired="present", now=now)
            await b.chase(self.reconciled)  # B converges as fast as it can until both have settled

        with trio.fail_after(60 + self.hold):
            async with trio.open_nursery() as both:
                both.start_soon(reconcile)
                both.start_soon(want_again_and_converge)


async def race_rounds(
    db: Database, emulator: NodeEmulator, a: Side, b: Side, *, rounds: int, hold: float, now: dt.datetime
) -> None:
    """``rounds`` races of A's reconcile against B's convergence; the node checked after each."""
    for user in range(10):  # some keys that stay wanted throughout
        await db.run(_new_key, user_id=500 + user, now=now)
    await b.converge()
    raced = 0
    for round_ in range(rounds):
        # A key on the node that the database no longer wants: an orphan to the reconcile.
        key = await db.run(_new_key, user_id=1000 + round_, now=now)
        await b.converge()
        assert str(key) in emulator.users
        await db.run(_set_desired, key=key, desired="absent", now=now)
        race = Race(key, hold)
        emulator.change_gate = race.gate
        try:
            await race.run(db, a, b, now)
        finally:
            emulator.change_gate = None
        raced += race.put_back.is_set()
        assert await db.run(_applied_present, key=key), "the database records the key as applied"
        wanted = await db.run(_wanted_present)
        missing = wanted - set(emulator.users)
        assert not missing, f"round {round_}: wanted keys absent from the node: {sorted(missing)}"
        assert set(emulator.users) == wanted  # and the reconcile still removed what it should
    assert raced == rounds  # the competing put did come, every round


@pytest.mark.slow
async def test_a_reconcile_in_one_process_racing_convergence_in_another_never_loses_a_wanted_key(
    db: Database, fresh_database: str, nursery: trio.Nursery
) -> None:
    emulator = NodeEmulator(TOKEN)
    await nursery.start(emulator.run)
    url = str(emulator.url)
    async with (
        child_process("reconciler", fresh_database, url) as a,
        child_process("converger", fresh_database, url) as b,
    ):
        # The children run on the wall clock (their leases must agree): so do the rows.
        await race_rounds(
            db, emulator, a, b, rounds=PROCESS_ROUNDS, hold=PROCESS_HOLD, now=dt.datetime.now(dt.UTC)
        )


async def test_reconcile_racing_convergence_never_leaves_a_wanted_key_off_the_node(
    db: Database, fresh_database: str, nursery: trio.Nursery
) -> None:
    emulator = NodeEmulator(TOKEN)
    await nursery.start(emulator.run)
    node = node_config(str(emulator.url), TOKEN)
    other_db = await Database.open(DatabaseSettings(dsn=fresh_database, pool_size=5))
    try:
        async with Fleet([node], timeout=5) as fleet_a, Fleet([node], timeout=5) as fleet_b:
            a = InProcess(controller(db, fleet_a, Clock(NOW)), db)
            b = InProcess(controller(other_db, fleet_b, Clock(NOW)), other_db)
            await race_rounds(db, emulator, a, b, rounds=ROUNDS, hold=HOLD, now=NOW)
    finally:
        await other_db.close()


async def test_a_reconcile_never_granted_its_lease_reports_the_node_and_deletes_nothing(
    db: Database, nursery: trio.Nursery
) -> None:
    emulator = NodeEmulator(TOKEN)
    await nursery.start(emulator.run)
    node = node_config(str(emulator.url), TOKEN)
    orphan = str(uuid.uuid4())
    emulator.put_orphan(orphan, orphan)
    # Another process converges n0 for the next hour (a stuck pass, say).
    hour = NOW + dt.timedelta(hours=1)
    assert await db.run(take_converge_lease, node="n0", holder="other/converge", now=NOW, until=hour)
    async with Fleet([node], timeout=5) as fleet:
        report = await controller(db, fleet, Clock(NOW), lease=1.0).reconcile()  # waits at most 1 s
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
