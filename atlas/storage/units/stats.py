"""Deployment statistics for the admin: users, active subscriptions, revenue per currency by period."""

from __future__ import annotations

import datetime as dt

from atlas.storage.tx import Tx
from atlas.storage.units._rows import check_now
from atlas.storage.units.records import Stats

# Currencies are a handful per deployment (the balance currency, Stars, perhaps one more).
_MAX_CURRENCIES = 100


async def stats(tx: Tx, *, now: dt.datetime, period: dt.timedelta) -> Stats:
    """Counts at ``now``; new users and revenue over ``[now - period, now)``.

    Active means status active and time not yet up; revenue is applied payments (refunded ones are
    not revenue; balance purchases are not counted again: their money was counted as a top-up).
    """
    check_now(now)
    if period <= dt.timedelta(0):
        raise ValueError(f"period must be positive, got {period}")
    since = now - period
    row = await tx.fetchrow(
        """
        SELECT
            (SELECT count(*) FROM users) AS users,
            (SELECT count(*) FROM users WHERE created_at >= $2 AND created_at < $1) AS new_users,
            (SELECT count(*) FROM users WHERE banned_at IS NOT NULL) AS banned,
            count(*) FILTER (WHERE s.kind = 'trial') AS trial,
            count(*) FILTER (WHERE s.kind = 'paid') AS paid
        FROM subscriptions s WHERE s.status = 'active' AND s.expires_at > $1
        """,
        now,
        since,
    )
    assert row is not None
    revenue = await tx.fetch(
        """
        SELECT currency, sum(amount_minor) AS total FROM payments
        WHERE status = 'applied' AND applied_at >= $2 AND applied_at < $1
        GROUP BY currency ORDER BY currency LIMIT $3
        """,
        now,
        since,
        _MAX_CURRENCIES,
    )
    return Stats(
        users=int(row["users"]),
        new_users=int(row["new_users"]),
        active=int(row["trial"]) + int(row["paid"]),
        trial=int(row["trial"]),
        paid=int(row["paid"]),
        banned=int(row["banned"]),
        revenue={r["currency"]: int(r["total"]) for r in revenue},
    )
