"""Messages leave through the ``outbox`` table (contract 2): a unit writes a row, an actor sends it.

A row is ``(chat_id, kind, payload, dedupe_key)``. ``kind`` is the locale key of the message
(``"payment.applied"``, ``"reminder.paid.1d"``) and ``payload`` the JSON object of its placeholders;
the sender renders it in the user's language at send time. ``dedupe_key`` is unique: writing the
same notice twice (a replayed webhook, a worker restarted after a crash, two processes) keeps the
first row and drops the rest, so "notify once" is a constraint, not a flag set after sending (the
predecessor double-sent after crashes for exactly that reason).

The kinds the money units write (money in minor units of ``currency``, times ISO 8601 UTC)::

    kind                              payload                                          dedupe key
    referral.joined                   referred_id, first_name                          referral-joined:<user>
    trial.started                     expires_at, days                                 trial-started:<user>
    purchase.done                     plan, days, charged_minor, currency, expires_at  purchase:<user>:<key>
    payment.applied.topup|.plan       payment_id, amount_minor, currency,              payment-applied:<id>
                                      credit_minor, plan, days, expires_at,
                                      balance_minor
    payment.refunded                  payment_id, amount_minor, currency               payment-refunded:<id>
    referral.reward                   amount_minor, currency, referred_id              referral-reward:<pay>
    renewal.done                      amount_minor, currency, expires_at               notice:<charge key>
    renewal.insufficient              expires_at, shortfall_minor, currency            (domain) one per period
    subscription.expired.trial|.paid  expired_at                                       expired:<sub>:<exp>
    reminder.<trial|paid>.<3d|1d|6h…> expires_at, remaining_seconds, threshold         (domain) per threshold
    key.reissued                      expires_at                                       key-reissued:<uuid>
    admin.days_granted|.days_removed  days, expires_at, status                         admin-audit:<audit id>
    admin.balance_adjusted            amount_minor, balance_minor                      admin:<user>:<key>
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence

from atlas.storage.tx import Tx
from atlas.storage.units._rows import check_now, status_count, to_json

MAX_DEDUPE_KEY = 200


async def enqueue_message(
    tx: Tx,
    *,
    chat_id: int,
    kind: str,
    payload: Mapping[str, object],
    dedupe_key: str,
    now: dt.datetime,
    priority: int = 0,
    broadcast_id: int | None = None,
) -> bool:
    """Write one message for the sender, due at ``now``; return False if ``dedupe_key`` was used.

    ``priority`` 0 is a personal notice, 1 bulk (broadcasts). An empty or over-long key, or an empty
    kind, is a caller's bug (``ValueError``).
    """
    check_now(now)
    if not dedupe_key or len(dedupe_key) > MAX_DEDUPE_KEY:
        raise ValueError(f"dedupe_key must be 1..{MAX_DEDUPE_KEY} chars, got {dedupe_key!r}")
    if not kind:
        raise ValueError("an outbox message needs a kind (its locale key)")
    if priority not in (0, 1):
        raise ValueError(f"priority must be 0 (personal) or 1 (bulk), got {priority!r}")
    inserted = await tx.fetchval(
        """
        INSERT INTO outbox (chat_id, kind, payload, dedupe_key, priority, broadcast_id,
                            next_attempt_at, created_at)
        VALUES ($1, $2, $3::jsonb, $4, $5, $6, $7, $7)
        ON CONFLICT (dedupe_key) DO NOTHING
        RETURNING id
        """,
        chat_id,
        kind,
        to_json(dict(payload)),
        dedupe_key,
        priority,
        broadcast_id,
        now,
    )
    return inserted is not None


async def enqueue_many(
    tx: Tx,
    messages: Sequence[tuple[int, str, Mapping[str, object], str]],
    *,
    now: dt.datetime,
) -> int:
    """Write personal notices ``(chat_id, kind, payload, dedupe_key)`` in one statement (for batch
    workers); keys already used are dropped. Returns how many rows were written."""
    if not messages:
        return 0
    for _, kind, _, key in messages:
        if not kind or not key or len(key) > MAX_DEDUPE_KEY:
            raise ValueError(f"bad outbox message kind={kind!r} dedupe_key={key!r}")
    status = await tx.execute(
        """
        INSERT INTO outbox (chat_id, kind, payload, dedupe_key, next_attempt_at, created_at)
        SELECT chat_id, kind, payload::jsonb, dedupe_key, $5, $5
        FROM unnest($1::bigint[], $2::text[], $3::text[], $4::text[]) AS m(chat_id, kind, payload, dedupe_key)
        ON CONFLICT (dedupe_key) DO NOTHING
        """,
        [m[0] for m in messages],
        [m[1] for m in messages],
        [to_json(dict(m[2])) for m in messages],
        [m[3] for m in messages],
        check_now(now),
    )
    return status_count(status)
