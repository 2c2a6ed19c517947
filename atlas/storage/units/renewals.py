"""Auto-renewal from the balance: claim due subscriptions, decide, debit and extend, in one transaction.

:func:`claim_and_renew` is one batch of the ``renewal`` actor. Two processes may run it at once:
rows are claimed with ``FOR UPDATE OF s, u SKIP LOCKED``, the subscription *and* its user, so a
claimer never waits on a lock (it skips), and after the claim touches only rows it holds; it cannot
deadlock with a purchase, which takes the user and then the subscription.

For each claimed row the domain (:func:`atlas.domain.decide_renewal`) decides on the locked values:

* ``Renew``: ledger ``renewal`` debit under the domain's charge key (subscription id + the expiry
  being renewed: a repeat can never charge the same period twice), new expiry, ``last_auto_renewal_at``
  (the predecessor's guard against renewing twice in one period), a notice;
* ``InsufficientFunds``: one notice per period (the domain's dedupe key), and the row rests until
  ``now + retry_after`` (``renew_next_try_at``) so it stops filling every batch; a top-up clears that;
* not due (already renewed, too early, awaiting funds): the row rests too, never past the moment it
  becomes due;
* the plan is no longer in the catalogue or has no price in the currency: the row rests; the
  expiry worker ends it at its expiry like any unrenewed subscription.

The batch is written with a handful of set-based statements (unnest), so a batch of hundreds costs
a few round trips, not hundreds. Nothing is refunded here because nothing can half-happen: the debit
and the extension commit together or not at all (the predecessor needed refund paths for that).
"""

from __future__ import annotations

import datetime as dt

from atlas.domain import (
    Currency,
    InsufficientFunds,
    NotDue,
    NotDueReason,
    PlanCatalog,
    Renew,
    RenewalDecision,
    UnknownPlan,
    UnsupportedCurrency,
    decide_renewal,
)
from atlas.storage.tx import Record, Tx
from atlas.storage.units._rows import check_limit, check_now, status_count
from atlas.storage.units.outbox import enqueue_many
from atlas.storage.units.records import RenewalCounts


async def claim_and_renew(
    tx: Tx,
    *,
    now: dt.datetime,
    limit: int,
    renew_window: dt.timedelta,
    retry_after: dt.timedelta,
    catalog: PlanCatalog,
    currency: str,
    notice_period: dt.timedelta | None = None,
) -> RenewalCounts:
    """Claim at most ``limit`` due auto-renew subscriptions and renew those the balance covers.

    Due: active, paid, auto-renew on, user not banned, ``renew_next_try_at`` passed, and expiring
    within ``max(renew_window, notice_period)`` (``notice_period`` defaults to ``renew_window``).
    Prices come from ``catalog`` in ``currency`` (the balance currency). Returns the counts; an
    empty claim (``claimed == 0``) means nothing is due now or everything due is held by another
    claimer.
    """
    check_now(now)
    check_limit(limit)
    notice = renew_window if notice_period is None else notice_period
    if retry_after <= dt.timedelta(0):
        raise ValueError(f"retry_after must be positive, got {retry_after}")
    money = Currency.of(currency)
    rows = await tx.fetch(
        """
        SELECT s.id, s.user_id, s.plan_code, s.expires_at, s.last_auto_renewal_at, u.balance_minor
        FROM subscriptions s JOIN users u ON u.id = s.user_id
        WHERE s.status = 'active' AND s.kind = 'paid' AND s.auto_renew
          AND s.expires_at <= $1
          AND (s.renew_next_try_at IS NULL OR s.renew_next_try_at <= $2)
          AND u.banned_at IS NULL
        ORDER BY s.expires_at, s.id
        LIMIT $3
        FOR UPDATE OF s, u SKIP LOCKED
        """,
        now + max(renew_window, notice),
        now,
        limit,
    )
    renew: list[tuple[Record, Renew]] = []
    notices: list[tuple[Record, InsufficientFunds]] = []
    rest: dict[int, dt.datetime] = {}
    counts = {"not_due": 0, "unpriced": 0}
    for row in rows:
        try:
            plan = catalog.get(row["plan_code"])
            price = plan.price(money)
        except (UnknownPlan, UnsupportedCurrency):
            counts["unpriced"] += 1
            rest[row["id"]] = now + retry_after
            continue
        decision: RenewalDecision = decide_renewal(
            auto_renew=True,
            expires_at=row["expires_at"],
            now=now,
            renew_window=renew_window,
            balance_minor=row["balance_minor"],
            price_minor=price,
            plan_days=plan.duration_days,
            last_auto_renewal_at=row["last_auto_renewal_at"],
            notice_period=notice,
            subscription_id=row["id"],
        )
        if isinstance(decision, Renew):
            renew.append((row, decision))
            continue
        if isinstance(decision, InsufficientFunds):
            notices.append((row, decision))
        else:
            counts["not_due"] += 1
        rest[row["id"]] = _next_try(decision, row, now, renew_window, retry_after, plan.duration_days)
    renewed, charged = await _renew(tx, renew, money.code, now, rest, retry_after)
    await enqueue_many(
        tx,
        [
            (
                row["user_id"],
                "renewal.insufficient",
                {
                    "expires_at": row["expires_at"],
                    "shortfall_minor": d.shortfall_minor,
                    "currency": money.code,
                },
                d.notice_key,
            )
            for row, d in notices
        ],
        now=now,
    )
    if rest:
        await tx.execute(
            """
            UPDATE subscriptions s SET renew_next_try_at = t.next_try
            FROM unnest($1::bigint[], $2::timestamptz[]) AS t(id, next_try)
            WHERE s.id = t.id
            """,
            list(rest),
            list(rest.values()),
        )
    return RenewalCounts(
        claimed=len(rows),
        renewed=renewed,
        insufficient=len(notices),
        not_due=counts["not_due"],
        unpriced=counts["unpriced"],
        charged_minor=charged,
    )


def _next_try(
    decision: RenewalDecision,
    row: Record,
    now: dt.datetime,
    renew_window: dt.timedelta,
    retry_after: dt.timedelta,
    plan_days: int,
) -> dt.datetime:
    """When to look at a row that was not renewed: after ``retry_after``, but never later than the
    moment the decision would change by itself (the window opens, the renewal spacing ends)."""
    later = now + retry_after
    if isinstance(decision, NotDue) and decision.reason is NotDueReason.TOO_EARLY:
        opens: dt.datetime = row["expires_at"] - renew_window
        return max(now, min(later, opens))
    if isinstance(decision, NotDue) and decision.reason is NotDueReason.ALREADY_RENEWED:
        spacing = min(renew_window, dt.timedelta(days=plan_days))
        ends: dt.datetime = row["last_auto_renewal_at"] + spacing
        return max(now, min(later, ends))
    return later


async def _renew(
    tx: Tx,
    renew: list[tuple[Record, Renew]],
    currency: str,
    now: dt.datetime,
    rest: dict[int, dt.datetime],
    retry_after: dt.timedelta,
) -> tuple[int, int]:
    if not renew:
        return 0, 0
    posted = await tx.fetch(
        """
        INSERT INTO ledger (user_id, amount_minor, kind, reference, idempotency_key, created_at)
        SELECT user_id, -amount, 'renewal', reference, key, $5
        FROM unnest($1::bigint[], $2::bigint[], $3::text[], $4::text[]) AS t(user_id, amount, reference, key)
        ON CONFLICT (idempotency_key) DO NOTHING
        RETURNING idempotency_key
        """,
        [row["user_id"] for row, _ in renew],
        [d.amount_minor for _, d in renew],
        [f"subscription:{row['id']}" for row, _ in renew],
        [d.charge_key for _, d in renew],
        now,
        bounded_by="one row per renewal in this batch (at most the claim limit)",
    )
    charged_keys = {row["idempotency_key"] for row in posted}
    done = [(row, d) for row, d in renew if d.charge_key in charged_keys]
    for row, d in renew:
        if d.charge_key not in charged_keys:
            # This period was charged already (the expiry was moved back and forth by an admin):
            # never charge it again; the row rests and an admin can look at it.
            rest[row["id"]] = now + retry_after
    if not done:
        return 0, 0
    status = await tx.execute(
        """
        UPDATE users u SET balance_minor = u.balance_minor - t.amount
        FROM unnest($1::bigint[], $2::bigint[]) AS t(id, amount)
        WHERE u.id = t.id
        """,
        [row["user_id"] for row, _ in done],
        [d.amount_minor for _, d in done],
    )
    if status_count(status) != len(done):
        raise AssertionError(f"renewal debited {status} for {len(done)} renewals")
    await tx.execute(
        """
        UPDATE subscriptions s SET expires_at = t.expires_at, last_auto_renewal_at = $3,
            renew_next_try_at = NULL, updated_at = $3
        FROM unnest($1::bigint[], $2::timestamptz[]) AS t(id, expires_at)
        WHERE s.id = t.id
        """,
        [row["id"] for row, _ in done],
        [d.new_expires_at for _, d in done],
        now,
    )
    await enqueue_many(
        tx,
        [
            (
                row["user_id"],
                "renewal.done",
                {"amount_minor": d.amount_minor, "currency": currency, "expires_at": d.new_expires_at},
                f"notice:{d.charge_key}",
            )
            for row, d in done
        ],
        now=now,
    )
    return len(done), sum(d.amount_minor for _, d in done)
