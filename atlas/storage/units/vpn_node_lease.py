"""Per-node leases: a full reconcile of a node excludes convergence on it, in one process or many.

The race they close: a reconcile lists a node, decides that user X is an orphan, re-checks the
database (X is not wanted), then deletes X. If another controller makes X wanted and puts it on
the node between the re-check and the delete, the delete removes a wanted key, and the database
says it is there until the next reconcile. So the re-check and the delete run under a
**reconcile lease** of the node, and every convergence claim on the node needs a **converge
lease**, which a reconcile lease refuses:

==================  ===================================  ======================================
taken by            refused while another holder has     lasts
==================  ===================================  ======================================
converge (shared)   a live reconcile row, granted or     renewed by every claim (claim time +
                    waiting                              the row lease); dropped at pass end
reconcile (excl.)   a live converge row, or a granted    until its deletes are done (bounded by
                    reconcile row                        half the lease); then dropped
==================  ===================================  ======================================

A refused reconcile leaves a *waiting* row (short expiry, refreshed by its next try): new
convergence claims are refused from then on, so running passes end, drop their leases, and the
reconcile gets in (writer preference, as in a reader-writer lock). A convergence call is made
only under a converge lease taken by the claim of its row, and is bounded by half that lease, so
once a reconcile holds its lease no convergence call is in flight on the node and none starts
until it is dropped. Liveness does not depend on releases: a holder that crashes lets its row run
out.

Why rows with an expiry and not a lock: the work done under the lease is network I/O to the node,
and a connection never meets I/O (contract 1); a row lock or a session advisory lock would tie a
connection to the node's latency. Each take is a short unit that serialises on a transaction-scoped
advisory lock of the node (released at commit, so no connection waits on a node), which rules out
two takers both seeing "nobody else" (write skew). Times are business time passed in (contract 4);
processes share a clock up to the usual skew, which the half-lease margin absorbs.
"""

from __future__ import annotations

import datetime as dt
from typing import Final, Literal

from atlas.storage.tx import Tx
from atlas.storage.units._rows import check_now, status_count

LeaseKind = Literal["converge", "reconcile"]
MAX_HOLDER_LENGTH: Final = 240


def _check_holder(holder: str) -> str:
    if not isinstance(holder, str) or not 1 <= len(holder) <= MAX_HOLDER_LENGTH:
        raise ValueError(f"holder must be a non-empty string of at most {MAX_HOLDER_LENGTH} characters")
    return holder


async def _serialise_node(tx: Tx, node: str, now: dt.datetime) -> None:
    """Take the node's transaction-scoped lock and drop rows that ran out."""
    await tx.execute("SELECT pg_advisory_xact_lock(hashtextextended('atlas.vpn_node_lease:' || $1, 0))", node)
    await tx.execute("DELETE FROM vpn_node_leases WHERE node = $1 AND lease_until <= $2", node, now)


async def take_converge_lease(
    tx: Tx, *, node: str, holder: str, now: dt.datetime, until: dt.datetime
) -> bool:
    """Take or renew ``holder``'s shared converge lease of ``node`` until ``until``.

    Returns False (and takes nothing) while another holder has a live reconcile row, granted or
    waiting. Renewing never shortens a lease.

    The common case, a claim by a pass that holds the lease, reads the row and writes nothing
    while the lease still covers three quarters of ``until - now`` (the controller bounds the
    calls of a claim by half the lease; the margin covers the claim itself), so the claims of a
    node's lanes queue neither on the node's advisory lock nor on the row's lock. A renewal is
    one UPDATE without the advisory lock. Both are safe because a reconcile is granted only under
    that lock, after deleting rows that ran out and finding no live converge row: a row seen live
    here cannot be deleted under us, and a row found missing sends us to the locked path. The
    read of reconcile rows in these paths only serves writer preference (liveness), not
    exclusion.
    """
    _check_holder(holder)
    check_now(now)
    check_now(until)
    current = await tx.fetchval(
        """
        SELECT lease_until FROM vpn_node_leases
        WHERE node = $1 AND holder = $2 AND kind = 'converge' AND lease_until > $3
          AND NOT EXISTS (SELECT 1 FROM vpn_node_leases r WHERE r.node = $1 AND r.holder <> $2
                          AND r.kind = 'reconcile' AND r.lease_until > $3)
        """,
        node,
        holder,
        now,
    )
    if current is not None:
        if current >= now + (until - now) * 3 / 4:
            return True
        await tx.execute(
            "UPDATE vpn_node_leases SET lease_until = greatest(lease_until, $3) "
            "WHERE node = $1 AND holder = $2",
            node,
            holder,
            until,
        )
        return True
    await _serialise_node(tx, node, now)
    blocked = await tx.fetchval(
        "SELECT EXISTS (SELECT 1 FROM vpn_node_leases "
        "WHERE node = $1 AND holder <> $2 AND kind = 'reconcile')",
        node,
        holder,
    )
    if blocked:
        return False
    await tx.execute(
        """
        INSERT INTO vpn_node_leases (node, holder, kind, granted, lease_until)
        VALUES ($1, $2, 'converge', true, $3)
        ON CONFLICT (node, holder) DO UPDATE
            SET kind = 'converge', granted = true,
                lease_until = greatest(vpn_node_leases.lease_until, EXCLUDED.lease_until)
        """,
        node,
        holder,
        until,
    )
    return True


async def take_reconcile_lease(
    tx: Tx, *, node: str, holder: str, now: dt.datetime, until: dt.datetime, wait_until: dt.datetime
) -> bool:
    """Take ``holder``'s exclusive reconcile lease of ``node`` until ``until``; True if granted.

    Refused while another holder has a live converge row or a granted reconcile row; then the
    holder's row is left *waiting* until ``wait_until`` (which already refuses new convergence).
    Call again to retry; each try refreshes the wait.
    """
    _check_holder(holder)
    for value in (now, until, wait_until):
        check_now(value)
    if not now < wait_until <= until:
        raise ValueError("take_reconcile_lease needs now < wait_until <= until")
    await _serialise_node(tx, node, now)
    busy = await tx.fetchval(
        """
        SELECT EXISTS (SELECT 1 FROM vpn_node_leases
                       WHERE node = $1 AND holder <> $2 AND (kind = 'converge' OR granted))
        """,
        node,
        holder,
    )
    await tx.execute(
        """
        INSERT INTO vpn_node_leases (node, holder, kind, granted, lease_until)
        VALUES ($1, $2, 'reconcile', $3, $4)
        ON CONFLICT (node, holder) DO UPDATE
            SET kind = 'reconcile', granted = EXCLUDED.granted, lease_until = EXCLUDED.lease_until
        """,
        node,
        holder,
        not busy,
        wait_until if busy else until,
    )
    return not busy


async def release_node_lease(tx: Tx, *, node: str, holder: str) -> bool:
    """Drop ``holder``'s lease (or wait) on ``node``; False if it had none (it ran out)."""
    _check_holder(holder)
    status = await tx.execute("DELETE FROM vpn_node_leases WHERE node = $1 AND holder = $2", node, holder)
    return status_count(status) == 1
