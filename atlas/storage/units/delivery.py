"""Units of work for delivering the outbox: claim due rows under a lease, record what happened.

The outbox sender (:mod:`atlas.actors.outbox_sender`) runs these; they never call Telegram.

* :func:`claim_outbox` takes at most ``limit`` due rows — personal notices (priority 0) before
  broadcasts (priority 1), oldest first — with ``FOR UPDATE SKIP LOCKED`` and stamps them with a
  lease ``(lease_owner, leased_until)`` (migration 0005). Two senders never claim the same row; a
  row whose lease ran out (its sender crashed) is due again.
* :func:`record_deliveries` writes a batch of :class:`Delivery` results in one transaction, only
  for rows the caller still owns, and marks users who blocked the bot (``users.bot_blocked_at``).
* :func:`broadcast_progress` counts a broadcast's rows by state, for the admin's progress message.
* :func:`user_language` reads a user's language, for the dispatcher's apology.

The window in which a message can be sent twice is exactly "sent, but its result not yet recorded":
a sender that dies there leaves the row leased and pending, and it is sent again after the lease
expires. Everything else is decided by the table.
"""

from __future__ import annotations

import datetime as dt
import enum
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from atlas.storage.tx import Tx
from atlas.storage.units._rows import check_limit, check_now, from_json, status_count

MAX_CLAIM = 1000
MAX_RECORD = 5000
MAX_ERROR = 500


class DeliveryStatus(enum.StrEnum):
    """What happened to one claimed row; decides its next state.

    ========  ===============  ==========================================================
    status    row becomes      when
    ========  ===============  ==========================================================
    SENT      ``sent``         Telegram accepted the message
    BLOCKED   ``blocked``      403: the user blocked the bot (``users.bot_blocked_at`` set)
    FAILED    ``failed``       400 and the like, a bad payload, or attempts used up
    RETRY     ``pending``      5xx or network: ``attempts + 1``, due at ``next_attempt_at``
    DEFERRED  ``pending``      not tried (429 pause, lease running out): due at ``next_attempt_at``
    ========  ===============  ==========================================================
    """

    SENT = "sent"
    BLOCKED = "blocked"
    FAILED = "failed"
    RETRY = "retry"
    DEFERRED = "deferred"


@dataclass(frozen=True, slots=True)
class ClaimedMessage:
    """One claimed outbox row, with the recipient's language (None: no such user row)."""

    id: int
    chat_id: int
    kind: str
    payload: dict[str, Any]
    priority: int
    broadcast_id: int | None
    attempts: int
    next_attempt_at: dt.datetime
    language: str | None


@dataclass(frozen=True, slots=True)
class Delivery:
    """The result of one claimed row. ``next_attempt_at`` is required for RETRY and DEFERRED."""

    id: int
    chat_id: int
    status: DeliveryStatus
    error: str | None = None
    next_attempt_at: dt.datetime | None = None

    def __post_init__(self) -> None:
        needs_time = self.status in (DeliveryStatus.RETRY, DeliveryStatus.DEFERRED)
        if needs_time != (self.next_attempt_at is not None):
            raise ValueError(
                f"Delivery.next_attempt_at must be given exactly for retry/deferred, got "
                f"status={self.status!r} next_attempt_at={self.next_attempt_at!r}"
            )


@dataclass(frozen=True, slots=True)
class RecordSummary:
    """What :func:`record_deliveries` wrote. ``not_owned``: results for rows the caller no longer owns."""

    recorded: int
    not_owned: int
    users_marked_blocked: int


@dataclass(frozen=True, slots=True)
class BroadcastProgress:
    """A broadcast's outbox rows by state."""

    pending: int
    sent: int
    blocked: int
    failed: int
    cancelled: int

    @property
    def total(self) -> int:
        """Every row of the broadcast."""
        return self.pending + self.sent + self.blocked + self.failed + self.cancelled

    @property
    def done(self) -> bool:
        """True when no row is left to send."""
        return self.pending == 0


async def claim_outbox(
    tx: Tx, *, now: dt.datetime, owner: uuid.UUID, lease_until: dt.datetime, limit: int
) -> list[ClaimedMessage]:
    """Lease at most ``limit`` due rows to ``owner`` until ``lease_until``; return them in send order.

    Due: ``pending``, ``next_attempt_at <= now`` and no live lease. Rows locked by another claim are
    skipped, not waited for. ``ValueError`` on a naive time, a lease that ends before ``now`` or a
    limit outside 1..1000; nothing is changed then.
    """
    check_now(now)
    check_now(lease_until)
    check_limit(limit, most=MAX_CLAIM)
    if lease_until <= now:
        raise ValueError(f"lease_until must be after now, got {lease_until!r} <= {now!r}")
    rows = await tx.fetch(
        """
        WITH due AS (
            SELECT id FROM outbox
            WHERE state = 'pending' AND next_attempt_at <= $1
              AND (leased_until IS NULL OR leased_until <= $1)
            ORDER BY priority, next_attempt_at, id
            LIMIT $4
            FOR UPDATE SKIP LOCKED
        )
        UPDATE outbox AS o SET lease_owner = $2, leased_until = $3
        FROM due WHERE o.id = due.id
        RETURNING o.id, o.chat_id, o.kind, o.payload, o.priority, o.broadcast_id, o.attempts,
                  o.next_attempt_at, (SELECT u.language FROM users AS u WHERE u.id = o.chat_id) AS language
        """,
        now,
        owner,
        lease_until,
        limit,
        bounded_by="the due CTE has LIMIT $4",
    )
    claimed = [
        ClaimedMessage(
            id=row["id"],
            chat_id=row["chat_id"],
            kind=row["kind"],
            payload=_payload(row["payload"]),
            priority=row["priority"],
            broadcast_id=row["broadcast_id"],
            attempts=row["attempts"],
            next_attempt_at=row["next_attempt_at"],
            language=row["language"],
        )
        for row in rows
    ]
    # UPDATE ... RETURNING has no order; the sender relies on this one.
    claimed.sort(key=lambda m: (m.priority, m.next_attempt_at, m.id))
    return claimed


def _payload(value: Any) -> dict[str, Any]:
    decoded = from_json(value)
    # A non-object payload is kept visible (the sender fails the row with a clear error).
    return decoded if isinstance(decoded, dict) else {"__invalid__": decoded}


async def record_deliveries(
    tx: Tx, *, now: dt.datetime, owner: uuid.UUID, deliveries: Sequence[Delivery]
) -> RecordSummary:
    """Write ``deliveries`` (at most 5000) for rows leased to ``owner``; release their leases.

    A result for a row ``owner`` no longer holds (its lease ran out and another sender took it) is
    not written and is counted in ``not_owned``. BLOCKED also stamps ``users.bot_blocked_at`` (if
    not set). ``ValueError`` on a naive ``now`` or too many results; nothing is changed then.
    """
    check_now(now)
    if len(deliveries) > MAX_RECORD:
        raise ValueError(f"at most {MAX_RECORD} deliveries per call, got {len(deliveries)}")
    if not deliveries:
        return RecordSummary(0, 0, 0)
    ids = [d.id for d in deliveries]
    if len(set(ids)) != len(ids):
        raise ValueError("deliveries must name each outbox row once")
    written = await tx.fetch(
        """
        UPDATE outbox AS o SET
            state = CASE d.status WHEN 'sent' THEN 'sent' WHEN 'blocked' THEN 'blocked'
                                  WHEN 'failed' THEN 'failed' ELSE 'pending' END,
            sent_at = CASE WHEN d.status = 'sent' THEN $2 ELSE o.sent_at END,
            attempts = o.attempts + CASE WHEN d.status IN ('retry', 'failed') THEN 1 ELSE 0 END,
            last_error = CASE WHEN d.status = 'sent' THEN NULL ELSE coalesce(d.error, o.last_error) END,
            next_attempt_at = coalesce(d.next_at, o.next_attempt_at),
            lease_owner = NULL,
            leased_until = NULL
        FROM unnest($3::bigint[], $4::text[], $5::text[], $6::timestamptz[]) AS d(id, status, error, next_at)
        WHERE o.id = d.id AND o.lease_owner = $1 AND o.state = 'pending'
        RETURNING o.id
        """,
        owner,
        now,
        ids,
        [str(d.status) for d in deliveries],
        [_clip(d.error) for d in deliveries],
        [d.next_attempt_at for d in deliveries],
        bounded_by="one row per delivery passed in, at most 5000",
    )
    blocked_chats = sorted({d.chat_id for d in deliveries if d.status is DeliveryStatus.BLOCKED})
    marked = 0
    if blocked_chats:
        status = await tx.execute(
            "UPDATE users SET bot_blocked_at = $2 WHERE id = ANY($1::bigint[]) AND bot_blocked_at IS NULL",
            blocked_chats,
            now,
        )
        marked = status_count(status)
    return RecordSummary(
        recorded=len(written), not_owned=len(deliveries) - len(written), users_marked_blocked=marked
    )


def _clip(error: str | None) -> str | None:
    if error is None:
        return None
    return error if len(error) <= MAX_ERROR else error[: MAX_ERROR - 1] + "…"


async def broadcast_progress(tx: Tx, *, broadcast_id: int) -> BroadcastProgress:
    """Count the outbox rows of ``broadcast_id`` by state (all zero for an unknown broadcast)."""
    rows = await tx.fetch(
        "SELECT state, count(*) AS n FROM outbox WHERE broadcast_id = $1 GROUP BY state",
        broadcast_id,
        bounded_by="one row per outbox state, at most 5",
    )
    counts = {row["state"]: int(row["n"]) for row in rows}
    return BroadcastProgress(
        pending=counts.get("pending", 0),
        sent=counts.get("sent", 0),
        blocked=counts.get("blocked", 0),
        failed=counts.get("failed", 0),
        cancelled=counts.get("cancelled", 0),
    )


async def user_language(tx: Tx, *, user_id: int) -> str | None:
    """The language stored for ``user_id`` (``'ru'``/``'en'``), or None for an unknown user."""
    value = await tx.fetchval("SELECT language FROM users WHERE id = $1", user_id)
    return None if value is None else str(value)
