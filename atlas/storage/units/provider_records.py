"""What Atlas keeps about its payment providers beyond payments: unusable messages, refunds, cursors.

* **Kept messages** (:func:`keep_provider_message`): an authenticated message Atlas cannot use (a
  signed Crypto Pay webhook with a new ``update_type``, an invoice ``getInvoices`` returned that
  fails the strict parser). The sender is answered as if all went well (so it does not retry and
  switch the webhook off) and the bytes wait here for an operator. The same bytes are kept once.
* **Provider refunds** (:func:`begin_provider_refund`, :func:`finish_provider_refund`): a charge
  Atlas gives back because nothing it could apply matches it. The row is written before the
  provider is asked (``pending``), so a crash between the two is finished by the next pass, and
  ``(provider, external_id)`` is the primary key: a charge is refunded once. Finishing it marks
  the flagged payment (if any) ``refunded`` and tells the payer through the outbox.
* **Cursors** (:func:`reconcile_cursor`, :func:`advance_reconcile_cursor`): where a walk of a
  provider's append-only history may resume.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

from atlas.storage.tx import Tx
from atlas.storage.units._rows import check_now
from atlas.storage.units.outbox import enqueue_message
from atlas.storage.units.payments import Provider, check_external_id

MAX_KEPT_BODY = 262_144
MAX_REASON = 1000


@dataclass(frozen=True, slots=True)
class ProviderRefund:
    """One charge being (or already) given back; ``started`` is False when it was recorded before."""

    provider: str
    external_id: str
    user_id: int
    amount_minor: int
    currency: str
    payment_id: int | None
    state: str
    started: bool


async def keep_provider_message(
    tx: Tx, *, provider: str, source: str, body: bytes, reason: str, now: dt.datetime
) -> bool:
    """Keep ``body`` for an operator; False when the same bytes were kept before (nothing changed).

    A body over 256 KiB is cut (the sender's retries would be no different); ``reason`` is cut to
    1000 characters.
    """
    check_now(now)
    chosen = Provider(provider).value
    if not isinstance(body, bytes):
        raise TypeError(f"body must be bytes, got {type(body).__name__}")
    if not source or len(source) > 64:
        raise ValueError(f"source must be 1..64 characters, got {source!r}")
    kept = body[:MAX_KEPT_BODY]
    inserted = await tx.fetchval(
        """
        INSERT INTO provider_messages_kept (provider, source, body_sha256, body, reason, received_at)
        VALUES ($1, $2, $3, $4, $5, $6)
        ON CONFLICT (provider, body_sha256) DO NOTHING
        RETURNING id
        """,
        chosen,
        source,
        hashlib.sha256(body).hexdigest(),
        kept,
        (reason or "no reason given")[:MAX_REASON],
        now,
    )
    return inserted is not None


async def begin_provider_refund(
    tx: Tx,
    *,
    provider: str,
    external_id: str,
    user_id: int,
    amount_minor: int,
    currency: str,
    reason: str,
    now: dt.datetime,
) -> ProviderRefund:
    """Record that this charge is to be given back (before asking the provider), or return the record.

    The flagged payment carrying ``external_id``, if any, is linked. A charge that was *applied*
    or still open (pending, expired) is never given back here: an applied one is an admin's refund
    (it takes the money back first), an open one is applied instead; ``ValueError`` says so.
    """
    check_now(now)
    chosen = Provider(provider).value
    check_external_id(external_id)
    if isinstance(amount_minor, bool) or not isinstance(amount_minor, int) or amount_minor <= 0:
        raise ValueError(f"amount_minor must be a positive int, got {amount_minor!r}")
    row = await tx.fetchrow(
        """
        WITH linked AS (
            SELECT id, status FROM payments WHERE provider = $1 AND external_id = $2 FOR UPDATE
        ),
        recorded AS (
            INSERT INTO provider_refunds (provider, external_id, user_id, amount_minor, currency,
                                          payment_id, reason, state, created_at)
            SELECT $1, $2, $3, $4, $5, (SELECT id FROM linked), $6, 'pending', $7
            WHERE NOT EXISTS (SELECT 1 FROM linked WHERE status <> 'flagged')
            ON CONFLICT (provider, external_id) DO NOTHING
            RETURNING payment_id, state
        )
        SELECT (SELECT status FROM linked) AS payment_status,
               (SELECT count(*) FROM recorded) AS started,
               coalesce((SELECT payment_id FROM recorded), r.payment_id) AS payment_id,
               coalesce((SELECT state FROM recorded), r.state) AS state,
               coalesce(r.user_id, $3) AS user_id, coalesce(r.amount_minor, $4) AS amount_minor,
               coalesce(r.currency, $5) AS currency
        FROM (SELECT 1) one
        LEFT JOIN provider_refunds r ON r.provider = $1 AND r.external_id = $2
        """,
        chosen,
        external_id,
        user_id,
        amount_minor,
        currency,
        reason[:300] or "unmatched",
        now,
    )
    assert row is not None
    if row["state"] is None:
        status = row["payment_status"]
        raise ValueError(f"{chosen} charge {external_id!r} is {status}: not ours to give back")
    return ProviderRefund(
        provider=chosen,
        external_id=external_id,
        user_id=int(row["user_id"]),
        amount_minor=int(row["amount_minor"]),
        currency=str(row["currency"]),
        payment_id=row["payment_id"],
        state=str(row["state"]),
        started=bool(row["started"]),
    )


async def finish_provider_refund(tx: Tx, *, provider: str, external_id: str, now: dt.datetime) -> bool:
    """The provider gave the charge back: mark it done, its flagged payment ``refunded``, tell the payer.

    Returns False when it was already done (nothing changed). The notice (kind
    ``payment.returned``, dedupe key ``provider-refund:<provider>:<external_id>``) goes to the payer.
    """
    check_now(now)
    chosen = Provider(provider).value
    row = await tx.fetchrow(
        """
        UPDATE provider_refunds SET state = 'done', done_at = $3
        WHERE provider = $1 AND external_id = $2 AND state = 'pending'
        RETURNING user_id, amount_minor, currency, payment_id
        """,
        chosen,
        external_id,
        now,
    )
    if row is None:
        return False
    if row["payment_id"] is not None:
        await tx.execute(
            """
            UPDATE payments SET status = 'refunded', refunded_at = $2,
                status_reason = left(coalesce(status_reason, '') || '; returned to the payer', 1000)
            WHERE id = $1 AND status = 'flagged'
            """,
            row["payment_id"],
            now,
        )
    user_known = await tx.fetchval("SELECT 1 FROM users WHERE id = $1", row["user_id"])
    if user_known:
        await enqueue_message(
            tx,
            chat_id=row["user_id"],
            kind="payment.returned",
            payload={"amount_minor": row["amount_minor"], "currency": row["currency"]},
            dedupe_key=f"provider-refund:{chosen}:{external_id}"[:200],
            now=now,
        )
    return True


async def pending_provider_refunds(tx: Tx, *, provider: str, limit: int) -> list[ProviderRefund]:
    """Refunds recorded but not confirmed done (a crash or a provider error in between), oldest first."""
    rows = await tx.fetch(
        """
        SELECT provider, external_id, user_id, amount_minor, currency, payment_id, state
        FROM provider_refunds WHERE provider = $1 AND state = 'pending'
        ORDER BY created_at, external_id LIMIT $2
        """,
        Provider(provider).value,
        limit,
    )
    return [
        ProviderRefund(
            provider=row["provider"],
            external_id=row["external_id"],
            user_id=row["user_id"],
            amount_minor=row["amount_minor"],
            currency=row["currency"],
            payment_id=row["payment_id"],
            state=row["state"],
            started=False,
        )
        for row in rows
    ]


async def refunded_externally(tx: Tx, *, provider: str, external_ids: Sequence[str]) -> set[str]:
    """Which of these charges already have a refund record (pending or done)."""
    rows = await tx.fetch(
        "SELECT external_id FROM provider_refunds WHERE provider = $1 AND external_id = ANY($2::text[])",
        Provider(provider).value,
        list(external_ids),
        bounded_by="the ids passed in: one provider page, at most 100",
    )
    return {row["external_id"] for row in rows}


async def reconcile_cursor(tx: Tx, *, name: str) -> int:
    """Where the walk called ``name`` may resume (0 before its first pass)."""
    value = await tx.fetchval("SELECT position FROM reconcile_cursors WHERE name = $1", name)
    return 0 if value is None else int(value)


async def advance_reconcile_cursor(tx: Tx, *, name: str, position: int, now: dt.datetime) -> int:
    """Move the cursor forward to ``position`` (never back); return where it is now."""
    check_now(now)
    if isinstance(position, bool) or not isinstance(position, int) or position < 0:
        raise ValueError(f"position must be a non-negative int, got {position!r}")
    value = await tx.fetchval(
        """
        INSERT INTO reconcile_cursors (name, position, updated_at) VALUES ($1, $2, $3)
        ON CONFLICT (name) DO UPDATE SET position = greatest(reconcile_cursors.position, EXCLUDED.position),
                                         updated_at = EXCLUDED.updated_at
        RETURNING position
        """,
        name,
        position,
        now,
    )
    return int(value)
