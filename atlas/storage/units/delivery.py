"""Units of work for delivering the outbox: claim due rows under a lease, record what happened.

The outbox sender (:mod:`atlas.actors.outbox_sender`) runs these; they never call Telegram.

* :func:`claim_outbox` takes at most ``limit`` due rows — personal notices (priority 0) before
  broadcasts (priority 1), oldest first — with ``FOR UPDATE SKIP LOCKED`` and stamps them with a
  lease ``(lease_owner, leased_until)`` (migration 0005). Two senders never claim the same row; a
  row whose lease ran out (its sender crashed) is due again.
* :func:`mark_attempts` stamps ``attempt_started_at`` on rows about to be sent at most once (the
  copies of a broadcast), in a unit that commits *before* the sender calls Telegram (migration
  0008).
* :func:`record_deliveries` writes a batch of :class:`Delivery` results in one transaction, only
  for rows the caller still owns, clears the attempt mark, and marks users who blocked the bot
  (``users.bot_blocked_at``).
* :func:`broadcast_progress` counts a broadcast's rows by state, for the admin's progress message.
* :func:`user_language` reads a user's language, for the dispatcher's apology.

What a sender that dies between a send and its record leaves behind, by guarantee:

* an at-least-once row (a personal notice) is leased and pending; it is due again once the lease
  runs out, and is sent again — a second copy only if the first had truly gone out;
* an at-most-once row (a broadcast copy) is leased, pending *and marked*; once the lease runs out,
  :func:`claim_outbox` moves it to the final state ``unknown`` instead of sending it again.

Everything else is decided by the table.
"""

from __future__ import annotations

import datetime as dt
import enum
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from atlas.storage.tx import Record, Tx
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
    UNKNOWN   ``unknown``      an at-most-once send got no answer: maybe delivered, never resent
    ========  ===============  ==========================================================
    """

    SENT = "sent"
    BLOCKED = "blocked"
    FAILED = "failed"
    RETRY = "retry"
    DEFERRED = "deferred"
    UNKNOWN = "unknown"


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

    @property
    def at_most_once(self) -> bool:
        """True for a broadcast copy: never sent twice, even at the price of never being sent."""
        return self.broadcast_id is not None


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
    unknown: int = 0
    """Copies whose send got no answer (maybe delivered); never resent."""

    @property
    def total(self) -> int:
        """Every row of the broadcast."""
        return self.pending + self.sent + self.blocked + self.failed + self.cancelled + self.unknown

    @property
    def done(self) -> bool:
        """True when no row is left to send."""
        return self.pending == 0


async def claim_outbox(
    tx: Tx, *, now: dt.datetime, owner: uuid.UUID, lease_until: dt.datetime, limit: int
) -> list[ClaimedMessage]:
    """Lease at most ``limit`` due rows to ``owner`` until ``lease_until``; return them in send order.

    Due: ``pending``, ``next_attempt_at <= now``, no live lease and no attempt mark. First, at most
    ``limit`` abandoned marked rows (an at-most-once send whose sender stopped before recording it)
    become ``unknown``. Rows locked by another claim are skipped, not waited for. ``ValueError`` on a
    naive time, a lease that ends before ``now`` or a limit outside 1..1000; nothing is changed then.
    """
    check_now(now)
    check_now(lease_until)
    check_limit(limit, most=MAX_CLAIM)
    if lease_until <= now:
        raise ValueError(f"lease_until must be after now, got {lease_until!r} <= {now!r}")
    await tx.execute(
        """
        WITH abandoned AS (
            SELECT id FROM outbox
            WHERE state = 'pending' AND attempt_started_at IS NOT NULL AND leased_until <= $1
            ORDER BY leased_until LIMIT $2
            FOR UPDATE SKIP LOCKED
        )
        UPDATE outbox AS o SET state = 'unknown', lease_owner = NULL, leased_until = NULL,
            last_error = 'no answer recorded for the attempt started at '
                         || to_char(o.attempt_started_at AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS')
                         || ' UTC; not resent (at most once)'
        FROM abandoned WHERE o.id = abandoned.id
        """,
        now,
        limit,
    )
    rows = await tx.fetch(
        """
        WITH due AS (
            SELECT id FROM outbox
            WHERE state = 'pending' AND next_attempt_at <= $1 AND attempt_started_at IS NULL
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
    claimed = [claimed_message(row) for row in rows]
    # UPDATE ... RETURNING has no order; the sender relies on this one.
    claimed.sort(key=lambda m: (m.priority, m.next_attempt_at, m.id))
    return claimed


async def end_other_leases(tx: Tx, *, owner: uuid.UUID, now: dt.datetime) -> int:
    """End, at ``now``, every live outbox lease not held by ``owner``; return how many ended.

    Only for the elected sender, once it holds the sender's lock and has waited out the old
    leader: a leader that died leaves up to a claim's worth of rows leased for the whole lease
    (120 s), and nobody else may be sending them. Marked rows (an at-most-once attempt in the air
    when the old leader died) then become ``unknown`` at the next claim, as after a lease runs out;
    the others are sent again at once.
    """
    check_now(now)
    status = await tx.execute(
        """
        UPDATE outbox SET leased_until = $2
        WHERE state = 'pending' AND lease_owner IS DISTINCT FROM $1 AND leased_until > $2
        """,
        owner,
        now,
    )
    return status_count(status)


def claimed_message(row: Record) -> ClaimedMessage:
    """An outbox row (with its recipient's ``language``) as the sender renders it."""
    return ClaimedMessage(
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


def _payload(value: Any) -> dict[str, Any]:
    decoded = from_json(value)
    # A non-object payload is kept visible (the sender fails the row with a clear error).
    return decoded if isinstance(decoded, dict) else {"__invalid__": decoded}


async def mark_attempts(
    tx: Tx, *, now: dt.datetime, owner: uuid.UUID, ids: Sequence[int]
) -> list[int]:
    """Mark the rows ``ids`` (at most 1000) as being sent by ``owner``; return the ids marked.

    Only rows still pending and leased to ``owner`` are marked; the caller sends exactly those
    (a row missing from the answer was lost to another sender). The unit must have committed
    before the send starts: that is what makes the send at most once.
    """
    check_now(now)
    check_limit(len(ids) or 1, most=MAX_CLAIM)
    if not ids:
        return []
    rows = await tx.fetch(
        """
        UPDATE outbox SET attempt_started_at = $3
        WHERE id = ANY($2::bigint[]) AND lease_owner = $1 AND state = 'pending'
        RETURNING id
        """,
        owner,
        list(ids),
        now,
        bounded_by="one row per id passed in, at most 1000",
    )
    return sorted(int(row["id"]) for row in rows)


async def record_deliveries(
    tx: Tx, *, now: dt.datetime, owner: uuid.UUID, deliveries: Sequence[Delivery]
) -> RecordSummary:
    """Write ``deliveries`` (at most 5000) for rows leased to ``owner``; release their leases.

    A result for a row ``owner`` no longer holds (its lease ran out and another sender took it) is
    not written and is counted in ``not_owned``; a lease that ran out while nobody else claimed the
    row still counts as owned (results kept through a database outage land late, not never).
    BLOCKED also stamps ``users.bot_blocked_at`` (if not set). ``ValueError`` on a naive ``now`` or
    too many results; nothing is changed then.
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
                                  WHEN 'failed' THEN 'failed' WHEN 'unknown' THEN 'unknown'
                                  ELSE 'pending' END,
            sent_at = CASE WHEN d.status = 'sent' THEN $2 ELSE o.sent_at END,
            attempts = o.attempts + CASE WHEN d.status IN ('retry', 'failed', 'unknown') THEN 1 ELSE 0 END,
            last_error = CASE WHEN d.status = 'sent' THEN NULL ELSE coalesce(d.error, o.last_error) END,
            next_attempt_at = coalesce(d.next_at, o.next_attempt_at),
            lease_owner = NULL,
            leased_until = NULL,
            attempt_started_at = NULL
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
        bounded_by="one row per outbox state, at most 6",
    )
    counts = {row["state"]: int(row["n"]) for row in rows}
    return BroadcastProgress(
        pending=counts.get("pending", 0),
        sent=counts.get("sent", 0),
        blocked=counts.get("blocked", 0),
        failed=counts.get("failed", 0),
        cancelled=counts.get("cancelled", 0),
        unknown=counts.get("unknown", 0),
    )


async def user_language(tx: Tx, *, user_id: int) -> str | None:
    """The language stored for ``user_id`` (``'ru'``/``'en'``), or None for an unknown user."""
    value = await tx.fetchval("SELECT language FROM users WHERE id = $1", user_id)
    return None if value is None else str(value)
