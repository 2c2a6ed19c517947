"""Expiry reminders and trial warnings: a keyset walk over active subscriptions into the outbox.

Which reminder is due, and its dedupe key (per subscription, expiry and threshold), are the
domain's (:func:`atlas.domain.due_reminder`). Writing them here is idempotent: a reminder that is
due on every tick of an hour is one outbox row, and a worker restarted after a crash sends nothing
twice (the predecessor set ``*_sent`` flags after sending, and double-sent).

Nothing is locked: the walk only reads and inserts outbox rows. A subscription renewed or converted
between the read and the insert gets at worst one reminder about the expiry it had a moment ago,
and only if that reminder was due then; the next walk sees the new expiry and its fresh keys.
A paid subscription whose auto-renewal the balance already covers gets no reminder (it will not
end). Banned users get none.
"""

from __future__ import annotations

import datetime as dt

from atlas.domain import (
    DEFAULT_SCHEDULE,
    ReminderSchedule,
    SubscriptionKind,
    due_reminder,
    threshold_label,
)
from atlas.storage.tx import Tx
from atlas.storage.units._rows import check_limit, check_now
from atlas.storage.units.outbox import enqueue_many
from atlas.storage.units.records import ReminderBatch


async def enqueue_due_reminders(
    tx: Tx,
    *,
    now: dt.datetime,
    after_id: int,
    limit: int,
    currency: str,
    schedule: ReminderSchedule = DEFAULT_SCHEDULE,
    kind: SubscriptionKind | None = None,
) -> ReminderBatch:
    """Look at up to ``limit`` active subscriptions with id > ``after_id``; enqueue due reminders.

    ``currency`` is the balance currency (to tell whether a renewal is covered); ``kind`` restricts
    the walk (the trial worker passes ``trial``). Start with ``after_id=0`` and pass back
    ``next_after_id`` until it is None.
    """
    check_now(now)
    check_limit(limit)
    only = None if kind is None else SubscriptionKind(kind).value
    horizon = max((*schedule.paid, *schedule.trial), default=dt.timedelta(0))
    rows = await tx.fetch(
        """
        SELECT s.id, s.user_id, s.kind, s.expires_at, s.auto_renew, u.balance_minor, u.banned_at,
               (p.prices ->> $4)::bigint AS price
        FROM subscriptions s
        JOIN users u ON u.id = s.user_id
        LEFT JOIN plans p ON p.code = s.plan_code
        WHERE s.status = 'active' AND s.id > $1 AND s.expires_at > $3 AND ($5::text IS NULL OR s.kind = $5)
        ORDER BY s.id
        LIMIT $2
        """,
        after_id,
        limit,
        now,
        currency,
        only,
    )
    messages = []
    for row in rows:
        if row["banned_at"] is not None or row["expires_at"] - now > horizon:
            continue
        covered = (
            bool(row["auto_renew"]) and row["price"] is not None and row["balance_minor"] >= row["price"]
        )
        reminder = due_reminder(
            subscription_id=row["id"],
            kind=SubscriptionKind(row["kind"]),
            expires_at=row["expires_at"],
            now=now,
            schedule=schedule,
            renewal_covered=covered,
        )
        if reminder is None:
            continue
        payload = {
            "expires_at": reminder.expires_at,
            "remaining_seconds": int(reminder.remaining.total_seconds()),
            "threshold": threshold_label(reminder.threshold),
        }
        messages.append((row["user_id"], reminder.text_key, payload, reminder.dedupe_key))
    enqueued = await enqueue_many(tx, messages, now=now)
    next_after = rows[-1]["id"] if len(rows) == limit else None
    return ReminderBatch(examined=len(rows), enqueued=enqueued, next_after_id=next_after)
