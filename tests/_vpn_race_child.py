"""One side of the reconcile race as a process of its own: a real ``VpnController``, its own pool.

Run by ``tests/test_vpn_reconcile_race.py`` (twice: the reconciling process and the converging
one)::

    python -m tests._vpn_race_child DSN NODE_URL NODE_TOKEN

It controls the one node ``n0`` at ``NODE_URL`` (the node emulator in the test process) for the
database ``DSN``, on the wall clock (so that two such processes agree on the leases' times), and
obeys one command per line of stdin, answering on stdout:

============  ==========================================================================
command       what it does, and its answer
============  ==========================================================================
reconcile     one full reconcile: ``reconciled <orphans removed> <failed nodes or ->``
converge      convergence passes until no key change is pending: ``converged``
chase         ``chasing`` at once, then convergence passes as fast as it can (a claim the
              node lease refuses is simply tried again) until ``settle`` has come and no
              change is pending: ``settled``
settle        ends a ``chase`` (no answer of its own)
============  ==========================================================================

End of stdin ends the process. A command it does not know ends it with exit code 2.
"""

from __future__ import annotations

import random
import sys

import trio
import trio.lowlevel

from atlas.actors.vpn_controller import VpnController
from atlas.clock import Clock
from atlas.storage import Database, DatabaseSettings, Tx
from atlas.storage.units.vpn import Backoff
from atlas.vpn import Fleet, NodeConfig

NODE = "n0"
LEASE = 30.0
"""Seconds a node or row lease lasts (and the longest a reconcile waits for its node lease)."""
CHASE_PAUSE = 0.01
"""Seconds between two convergence passes of a chase: as fast as it can, without spinning."""


async def pending_changes(tx: Tx) -> int:
    """Key changes not yet converged: keys not planned since their last change, plus pending rows."""
    unplanned = await tx.fetchval("SELECT count(*) FROM vpn_keys WHERE planned_generation <> generation")
    pending = await tx.fetchval("SELECT count(*) FROM vpn_key_nodes WHERE pending")
    return int(unplanned) + int(pending)


def node_config(url: str, token: str) -> NodeConfig:
    """The race's one node, as both sides (and the in-process test) configure it."""
    return NodeConfig(name=NODE, agent_url=url, token=token, public_host="127.0.0.1", port=1, security="none")


def controller(db: Database, fleet: Fleet, clock: Clock, lease: float = LEASE) -> VpnController:
    """A controller that acts only when told: no periodic reconcile, ticks an hour apart."""
    return VpnController(
        db=lambda: db,
        fleet=fleet,
        clock=clock,
        rng=random.Random(3),
        reconcile_every=None,
        batch=16,
        lease=lease,
        backoff=Backoff(base=0.05, cap=0.2),
        period=3600.0,
        first_tick=(3600.0, 3600.0),
    )


async def converge_until_settled(a: VpnController, db: Database, settle: trio.Event | None = None) -> None:
    """Convergence passes until nothing is pending (and, with ``settle``, it has been set)."""
    while not ((settle is None or settle.is_set()) and not await db.run(pending_changes)):
        await a.converge()
        await trio.sleep(CHASE_PAUSE)


def _say(line: str) -> None:
    print(line, flush=True)


async def _lines(stream: trio.lowlevel.FdStream) -> list[str] | None:
    """The next complete lines of stdin (None at its end)."""
    data = await stream.receive_some(4096)
    return None if not data else data.decode().split("\n")


async def main(dsn: str, node_url: str, token: str) -> None:
    """Serve the commands of the module docstring until stdin ends."""
    db = await Database.open(DatabaseSettings(dsn=dsn, pool_size=4, acquire_timeout=30))
    try:
        async with Fleet([node_config(node_url, token)], timeout=10) as fleet, trio.open_nursery() as nursery:
            vpn = controller(db, fleet, Clock())
            settle = trio.Event()

            async def chase(settle: trio.Event) -> None:
                await converge_until_settled(vpn, db, settle)
                _say("settled")

            stdin = trio.lowlevel.FdStream(sys.stdin.fileno())
            partial = ""
            while (lines := await _lines(stdin)) is not None:
                lines[0] = partial + lines[0]
                *complete, partial = lines
                for command in (line.strip() for line in complete):
                    if command == "reconcile":
                        report = await vpn.reconcile()
                        _say(f"reconciled {report.orphans_removed} {','.join(report.failed_nodes) or '-'}")
                    elif command == "converge":
                        await converge_until_settled(vpn, db)
                        _say("converged")
                    elif command == "chase":
                        settle = trio.Event()
                        _say("chasing")
                        nursery.start_soon(chase, settle)
                    elif command == "settle":
                        settle.set()
                    else:
                        _say(f"unknown command {command!r}")
                        raise SystemExit(2)
            nursery.cancel_scope.cancel()
    finally:
        await db.close()


if __name__ == "__main__":
    trio.run(main, sys.argv[1], sys.argv[2], sys.argv[3])
