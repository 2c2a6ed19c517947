"""Expiry: subscriptions whose time is up become ``expired`` and their key is wanted absent.

:func:`expire_due` is one batch of the ``expiry`` actor (all kinds) or of ``trial_notices``
(``kind=trial``). Rows are claimed with ``FOR UPDATE SKIP LOCKED``, so two processes never expire
the same row and a row a purchase is converting right now is simply skipped this round.

The predecessor's worst race was "trial expiry revokes a paid key": the trial worker selected a
trial, the user paid (converting it), and the worker then expired the now-paid subscription. Here
the decision is made by the domain (:func:`atlas.domain.expiry_decision`) on the *locked* row: a
converted trial is ``paid`` with a later expiry by then, and the ``kind=trial`` worker skips it;
its time and key are untouched. It is also the same row, so there is no second "paid subscription"
the trial path could miss.

The notice's dedupe key is the subscription and the expiry it ended at: a crash after commit and a
second claimer cannot send it twice, and a later expiry of the same subscription gets its own.
"""

from __future__ import annotations

import datetime as dt

from atlas.domain import ExpiryAction, SubscriptionKind, SubscriptionStatus, expiry_decision
from atlas.storage.tx import Tx
from atlas.storage.units._rows import check_limit, check_now
from atlas.storage.units.outbox import enqueue_many
from atlas.storage.units.records import ExpiryCounts


def expiry_notice_key(subscription_id: int, expires_at: dt.datetime) -> str:
    """``expired:<subscription>:<expiry as unix seconds>``: one notice per expiry."""
    return f"expired:{subscription_id}:{int(expires_at.timestamp())}"


async def expire_due(
    tx: Tx, *, now: dt.datetime, limit: int, kind: SubscriptionKind | None = None
) -> ExpiryCounts:
    """Expire at most ``limit`` active subscriptions with ``expires_at <= now`` (only ``kind`` if given)."""
    check_now(now)
    check_limit(limit)
    only = None if kind is None else SubscriptionKind(kind)
    rows = await tx.fetch(
        """
        SELECT id, user_id, kind, status, expires_at FROM subscriptions
        WHERE status = 'active' AND expires_at <= $1 AND ($2::text IS NULL OR kind = $2)
        ORDER BY expires_at, id
        LIMIT $3
        FOR UPDATE SKIP LOCKED
        """,
        now,
        None if only is None else only.value,
        limit,
    )
    due = [
        row
        for row in rows
        if expiry_decision(
            SubscriptionKind(row["kind"]),
            SubscriptionStatus(row["status"]),
            row["expires_at"],
            now,
            only_kind=only,
        )
        is ExpiryAction.EXPIRE
    ]
    if not due:
        return ExpiryCounts(claimed=len(rows), expired=0)
    ids = [row["id"] for row in due]
    await tx.execute(
        "UPDATE subscriptions SET status = 'expired', updated_at = $2 WHERE id = ANY($1::bigint[])", ids, now
    )
    await tx.execute(
        """
        UPDATE vpn_keys SET desired = 'absent', generation = generation + 1, changed_at = $2
        WHERE subscription_id = ANY($1::bigint[]) AND desired = 'present'
        """,
        ids,
        now,
    )
    await enqueue_many(
        tx,
        [
            (
                row["user_id"],
                f"subscription.expired.{row['kind']}",
                {"expired_at": row["expires_at"]},
                expiry_notice_key(row["id"], row["expires_at"]),
            )
            for row in due
        ],
        now=now,
    )
    return ExpiryCounts(claimed=len(rows), expired=len(due))
