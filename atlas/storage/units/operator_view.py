"""What ``/status`` shows an operator about work still to do: the outbox backlog and keys pending per node.

Every count is capped (``cap``): the page refreshes every few seconds, and counting a million
pending rows exactly on each refresh would cost more than knowing there are "over 10,000". A count
equal to the cap means "at least that many".
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from atlas.storage.tx import Tx
from atlas.storage.units._rows import check_now

DEFAULT_CAP = 10_000


@dataclass(frozen=True, slots=True)
class OperatorView:
    """Capped counts: ``outbox_pending`` (of which ``outbox_due`` may be sent now), messages sent in
    the last minute, failed in the last hour, and keys whose state on a node differs from the wanted
    one, per node name."""

    cap: int
    outbox_pending: int
    outbox_due: int
    outbox_sent_last_minute: int
    outbox_failed_last_hour: int
    keys_pending: dict[str, int]


async def operator_view(
    tx: Tx, *, now: dt.datetime, nodes: list[str], cap: int = DEFAULT_CAP
) -> OperatorView:
    """The counts at ``now`` for the configured ``nodes`` (one capped count each), in two statements."""
    check_now(now)
    if cap < 1:
        raise ValueError(f"cap must be >= 1, got {cap}")
    row = await tx.fetchrow(
        """
        SELECT
            (SELECT count(*) FROM (SELECT 1 FROM outbox WHERE state = 'pending' LIMIT $2) p) AS pending,
            (SELECT count(*) FROM (SELECT 1 FROM outbox
                                   WHERE state = 'pending' AND next_attempt_at <= $1 LIMIT $2) d) AS due,
            (SELECT count(*) FROM (SELECT 1 FROM outbox
                                   WHERE state = 'sent' AND sent_at > $1 - interval '1 minute'
                                     AND sent_at <= $1 LIMIT $2) s) AS sent,
            (SELECT count(*) FROM (SELECT 1 FROM outbox
                                   WHERE state = 'failed' AND created_at > $1 - interval '1 hour'
                                   LIMIT $2) f) AS failed
        """,
        now,
        cap,
    )
    assert row is not None
    # A key is pending on a node when it should be present there and is not applied at its
    # current generation, or should be absent and is still applied as present. One statement for
    # every node: each node's count is its own capped LATERAL subquery.
    per_node = await tx.fetch(
        """
        SELECT node.name, pending.n FROM unnest($1::text[]) AS node(name)
        CROSS JOIN LATERAL (
            SELECT count(*) AS n FROM (
                SELECT 1 FROM vpn_keys k
                LEFT JOIN vpn_key_nodes kn ON kn.key_id = k.id AND kn.node = node.name
                WHERE (k.desired = 'present' AND (kn.key_id IS NULL OR kn.applied <> 'present'
                                                  OR kn.applied_generation < k.generation))
                   OR (k.desired = 'absent' AND kn.applied = 'present')
                LIMIT $2
            ) capped
        ) pending
        """,
        list(nodes),
        cap,
        bounded_by="one row per configured node",
    )
    pending = {str(r["name"]): int(r["n"]) for r in per_node}
    return OperatorView(
        cap=cap,
        outbox_pending=int(row["pending"]),
        outbox_due=int(row["due"]),
        outbox_sent_last_minute=int(row["sent"]),
        outbox_failed_last_hour=int(row["failed"]),
        keys_pending=pending,
    )
