"""The one subscription per user: trials, granting paid time, taking it away, the bot's view of it.

Every path here runs with the user's row and then the subscription's row locked, and decides with
the domain (:mod:`atlas.domain.subscriptions`) on the *locked* row, so the predecessor's races
(trial expiry revoking a key that was paid for a moment ago) cannot happen.

Granting paid time (:func:`grant_paid_time`, used by purchases, payments and admin grants):

* no subscription: a new paid one from ``now`` with a new key;
* an active paid one: extended from ``max(expires_at, now)``;
* an active trial: converted into paid **in place**; what is left of the trial is kept and the paid
  days go on top (the domain's rule: paying early must not cost the user the rest of their trial);
* an expired one (trial or paid): reactivated as paid from ``now``, its newest key wanted present
  again (see :mod:`atlas.storage.units.keys`).

A banned user's subscription can gain time (they may have paid before the ban) but no present key.
"""

from __future__ import annotations

import datetime as dt
import math
import secrets
import uuid

from atlas.domain import MAX_EXTEND_DAYS, grant_paid, grant_trial
from atlas.storage.tx import Record, Tx
from atlas.storage.units._rows import (
    SUBSCRIPTION_COLUMNS,
    check_now,
    check_user_id,
    lock_subscription,
    lock_user,
    subscription_state,
)
from atlas.storage.units.errors import NoSubscription, UserBanned
from atlas.storage.units.keys import ensure_present_key, present_key, revoke_keys
from atlas.storage.units.outbox import enqueue_message
from atlas.storage.units.records import SubscriptionView

_DAY = dt.timedelta(days=1)


def new_token() -> str:
    """The ``/sub/<token>`` secret: 24 random bytes (192 bits), URL-safe (32 characters)."""
    return secrets.token_urlsafe(24)


def subscription_view(row: Record, key_uuid: uuid.UUID | None, now: dt.datetime) -> SubscriptionView:
    """A subscriptions row and its present key as the bot's :class:`SubscriptionView` at ``now``."""
    state = subscription_state(row)
    assert state is not None
    active = state.is_active_at(now)
    remaining = max(row["expires_at"] - now, dt.timedelta(0)) if active else dt.timedelta(0)
    return SubscriptionView(
        subscription_id=row["id"],
        user_id=row["user_id"],
        kind=state.kind,
        status=state.status,
        plan_code=row["plan_code"],
        starts_at=row["starts_at"],
        expires_at=row["expires_at"],
        auto_renew=row["auto_renew"],
        last_auto_renewal_at=row["last_auto_renewal_at"],
        token=row["token"],
        key_uuid=key_uuid,
        is_active=active,
        remaining=remaining,
        days_left=math.ceil(remaining / _DAY),
    )


async def grant_paid_time(
    tx: Tx,
    *,
    user: Record,
    sub: Record | None,
    days: int,
    plan_code: str | None,
    now: dt.datetime,
) -> Record:
    """Give ``days`` of paid access (see the module docstring); return the subscription row after.

    The caller holds the locks on ``user`` and ``sub``. ``plan_code`` None keeps the row's plan.
    """
    granted = grant_paid(subscription_state(sub), now=now, days=days)
    if sub is None:
        row = await tx.fetchrow(
            f"""
            INSERT INTO subscriptions (user_id, kind, status, plan_code, starts_at, expires_at, token,
                                       created_at, updated_at)
            VALUES ($1, 'paid', 'active', $2, $3, $4, $5, $3, $3)
            RETURNING {SUBSCRIPTION_COLUMNS}
            """,
            user["id"],
            plan_code,
            now,
            granted.expires_at,
            new_token(),
        )
    else:
        row = await tx.fetchrow(
            f"""
            UPDATE subscriptions SET
                kind = 'paid', status = 'active', plan_code = coalesce($2, plan_code),
                starts_at = CASE WHEN status = 'expired' THEN $3 ELSE starts_at END,
                expires_at = $4, renew_next_try_at = NULL, updated_at = $3
            WHERE id = $1
            RETURNING {SUBSCRIPTION_COLUMNS}
            """,
            sub["id"],
            plan_code,
            now,
            granted.expires_at,
        )
    assert row is not None
    if user["banned_at"] is None:
        await ensure_present_key(tx, subscription_id=row["id"], now=now)
    return row


async def take_days(tx: Tx, *, sub: Record, days: int, now: dt.datetime) -> Record:
    """Move the (locked) subscription's expiry back by ``days``; expire it if that ends its time.

    The expiry never goes before ``starts_at`` (a row CHECK); an expired result has its key wanted
    absent. Only audited admin actions and refunds call this: it is the one way expiry moves back.
    """
    if not 1 <= days <= MAX_EXTEND_DAYS:
        raise ValueError(f"days must be in 1..{MAX_EXTEND_DAYS}, got {days}")
    new_expiry = max(sub["expires_at"] - dt.timedelta(days=days), sub["starts_at"])
    ends = new_expiry <= now
    row = await tx.fetchrow(
        f"""
        UPDATE subscriptions SET expires_at = $2, updated_at = $3,
            status = CASE WHEN $4 THEN 'expired' ELSE status END
        WHERE id = $1
        RETURNING {SUBSCRIPTION_COLUMNS}
        """,
        sub["id"],
        new_expiry,
        now,
        ends,
    )
    assert row is not None
    if ends:
        await revoke_keys(tx, subscription_id=sub["id"], now=now)
    return row


async def start_trial(tx: Tx, *, user_id: int, trial_days: int, now: dt.datetime) -> SubscriptionView:
    """Start the user's one trial: ``trial_days`` from ``now``, a key wanted present, a notice.

    Raises :class:`~atlas.domain.TrialAlreadyUsed` (ever had one), :class:`~atlas.domain.TrialNotAllowed`
    (has paid time now), :class:`UserBanned`, :class:`UnknownUser`; nothing is changed then.
    A lapsed subscriber who never had a trial gets it on their existing (expired) row.
    """
    check_user_id(user_id)
    check_now(now)
    if isinstance(trial_days, bool) or not isinstance(trial_days, int) or not 1 <= trial_days <= 365:
        raise ValueError(f"trial_days must be an int in 1..365, got {trial_days!r}")
    user = await lock_user(tx, user_id)
    if user["banned_at"] is not None:
        raise UserBanned(user_id)
    sub = await lock_subscription(tx, user_id)
    trial = grant_trial(
        subscription_state(sub),
        ever_had_trial=user["trial_used_at"] is not None,
        now=now,
        duration=dt.timedelta(days=trial_days),
    )
    if sub is None:
        row = await tx.fetchrow(
            f"""
            INSERT INTO subscriptions (user_id, kind, status, starts_at, expires_at, token,
                                       created_at, updated_at)
            VALUES ($1, 'trial', 'active', $2, $3, $4, $2, $2)
            RETURNING {SUBSCRIPTION_COLUMNS}
            """,
            user_id,
            now,
            trial.expires_at,
            new_token(),
        )
    else:
        row = await tx.fetchrow(
            f"""
            UPDATE subscriptions SET kind = 'trial', status = 'active', plan_code = NULL,
                starts_at = $2, expires_at = $3, auto_renew = false, renew_next_try_at = NULL,
                updated_at = $2
            WHERE id = $1
            RETURNING {SUBSCRIPTION_COLUMNS}
            """,
            sub["id"],
            now,
            trial.expires_at,
        )
    assert row is not None
    await tx.execute("UPDATE users SET trial_used_at = $2 WHERE id = $1", user_id, now)
    key = await ensure_present_key(tx, subscription_id=row["id"], now=now)
    await enqueue_message(
        tx,
        chat_id=user_id,
        kind="trial.started",
        payload={"expires_at": trial.expires_at, "days": trial_days},
        dedupe_key=f"trial-started:{user_id}",
        now=now,
    )
    return subscription_view(row, key, now)


async def set_auto_renew(tx: Tx, *, user_id: int, enabled: bool, now: dt.datetime) -> SubscriptionView:
    """Turn auto-renewal from the balance on or off (:class:`NoSubscription` if there is none).

    Only paid subscriptions with a plan are ever renewed; the flag on a trial waits for the purchase.
    """
    check_user_id(user_id)
    check_now(now)
    await lock_user(tx, user_id)
    sub = await lock_subscription(tx, user_id)
    if sub is None:
        raise NoSubscription(user_id)
    row = await tx.fetchrow(
        f"""
        UPDATE subscriptions SET auto_renew = $2, renew_next_try_at = NULL, updated_at = $3
        WHERE id = $1 RETURNING {SUBSCRIPTION_COLUMNS}
        """,
        sub["id"],
        bool(enabled),
        now,
    )
    assert row is not None
    return subscription_view(row, await present_key(tx, row["id"]), now)


async def get_subscription_view(tx: Tx, *, user_id: int, now: dt.datetime) -> SubscriptionView | None:
    """The user's subscription as the bot shows it at ``now``, or None if they never had one."""
    check_user_id(user_id)
    check_now(now)
    row = await tx.fetchrow(f"SELECT {SUBSCRIPTION_COLUMNS} FROM subscriptions WHERE user_id = $1", user_id)
    if row is None:
        return None
    return subscription_view(row, await present_key(tx, row["id"]), now)


async def subscription_by_token(tx: Tx, *, token: str, now: dt.datetime) -> SubscriptionView | None:
    """The subscription behind a ``/sub/<token>`` URL, or None for an unknown token."""
    check_now(now)
    if not isinstance(token, str) or not 22 <= len(token) <= 64:
        return None
    row = await tx.fetchrow(f"SELECT {SUBSCRIPTION_COLUMNS} FROM subscriptions WHERE token = $1", token)
    if row is None:
        return None
    return subscription_view(row, await present_key(tx, row["id"]), now)
