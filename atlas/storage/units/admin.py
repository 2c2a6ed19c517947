"""Admin actions: grant or remove days, adjust a balance, ban, refund. Each is audited.

Every action takes a non-empty ``reason`` and writes an ``admin_audit`` row in its own transaction
(:mod:`atlas.storage.units.audit`). These are the only paths that move an expiry backwards.

Refunds (:func:`refund_payment`) reverse an applied payment exactly, or refuse and change nothing:

* a top-up: its credit (amount + promo bonus) is debited (ledger ``refund``); if the balance no
  longer covers it (the money was spent), :class:`RefundRefused` ``balance_short``;
* a plan: its days are taken off the expiry (expired, key wanted absent, if that ends the time), and
  a promo balance bonus is debited like a top-up's;
* the referral reward it earned is taken back from the referrer when their balance still covers it;
  otherwise it is kept (a balance never goes negative, and the referrer did nothing wrong) and the
  audit row says how much was kept;
* the promo redemption stays (the code was used); ``first_paid_at`` stays (they did pay once).

Moving the money back to the user (Stars ``refundStarPayment``, a crypto transfer) is I/O, so it is
the caller's, after the commit, with the returned provider and external id.
"""

from __future__ import annotations

import datetime as dt

from atlas.domain import MAX_AMOUNT_MINOR, MAX_EXTEND_DAYS
from atlas.storage.tx import Record, Tx
from atlas.storage.units import ledger
from atlas.storage.units._rows import (
    USER_COLUMNS,
    check_now,
    check_user_id,
    lock_subscription,
    lock_user,
    lock_users,
    subscription_state,
    user_view,
)
from atlas.storage.units.audit import check_admin_id, check_reason, record_audit
from atlas.storage.units.errors import InvalidAdminInput, NoSubscription, PaymentNotFound, RefundRefused
from atlas.storage.units.keys import ensure_present_key, revoke_keys
from atlas.storage.units.ledger import LedgerKind
from atlas.storage.units.outbox import enqueue_message
from atlas.storage.units.purchases import check_idempotency_key
from atlas.storage.units.records import AccessChange, BalanceChange, RefundResult, UserView
from atlas.storage.units.subscriptions import grant_paid_time, take_days

_REWARD = (
    "SELECT referrer_id, amount_minor FROM referral_rewards WHERE payment_id = $1 AND reversed_at IS NULL"
)


def _check_days(days: int) -> int:
    if isinstance(days, bool) or not isinstance(days, int):
        raise InvalidAdminInput("days", days, "not_a_number")
    if days == 0:
        raise InvalidAdminInput("days", days, "zero")
    if abs(days) > MAX_EXTEND_DAYS:
        raise InvalidAdminInput("days", days, "too_large")
    return days


async def admin_grant_days(
    tx: Tx, *, admin_id: int, user_id: int, days: int, reason: str, now: dt.datetime
) -> AccessChange:
    """Give (``days > 0``) or take away (``days < 0``) days of access, audited, with a notice.

    Giving days is paid access (a trial is converted, an expired subscription reactivated, a user
    without one gets one). Taking days needs a subscription (:class:`NoSubscription`) and expires it
    if its time runs out. Raises :class:`InvalidAdminInput` (zero days, > ``MAX_EXTEND_DAYS``, empty
    reason) and changes nothing then.
    """
    check_admin_id(admin_id)
    check_user_id(user_id)
    check_now(now)
    _check_days(days)
    check_reason(reason)
    user = await lock_user(tx, user_id)
    sub = await lock_subscription(tx, user_id)
    before = None if sub is None else sub["expires_at"]
    if days > 0:
        row = await grant_paid_time(tx, user=user, sub=sub, days=days, plan_code=None, now=now)
    else:
        if sub is None:
            raise NoSubscription(user_id)
        row = await take_days(tx, sub=sub, days=-days, now=now)
    audit_id = await record_audit(
        tx,
        admin_id=admin_id,
        action="grant_days",
        target_user_id=user_id,
        details={"days": days, "expires_before": before, "expires_after": row["expires_at"]},
        reason=reason,
        now=now,
    )
    await enqueue_message(
        tx,
        chat_id=user_id,
        kind="admin.days_granted" if days > 0 else "admin.days_removed",
        payload={"days": abs(days), "expires_at": row["expires_at"], "status": row["status"]},
        dedupe_key=f"admin-audit:{audit_id}",
        now=now,
    )
    state = subscription_state(row)
    assert state is not None
    return AccessChange(
        user_id=user_id, subscription_id=row["id"], status=state.status, expires_at=row["expires_at"]
    )


async def admin_adjust_balance(
    tx: Tx,
    *,
    admin_id: int,
    user_id: int,
    amount_minor: int,
    reason: str,
    idempotency_key: str,
    now: dt.datetime,
) -> BalanceChange:
    """Credit (``> 0``) or debit (``< 0``) a balance, audited; idempotent on ``idempotency_key``.

    Never below zero: :class:`~atlas.domain.InsufficientBalance`. :class:`InvalidAdminInput` for a
    zero or absurd amount or an empty reason. A repeated key returns ``applied=False``, no change.
    """
    check_admin_id(admin_id)
    check_user_id(user_id)
    check_now(now)
    if isinstance(amount_minor, bool) or not isinstance(amount_minor, int):
        raise InvalidAdminInput("amount_minor", amount_minor, "not_a_number")
    if amount_minor == 0:
        raise InvalidAdminInput("amount_minor", amount_minor, "zero")
    if abs(amount_minor) > MAX_AMOUNT_MINOR:
        raise InvalidAdminInput("amount_minor", amount_minor, "too_large")
    check_reason(reason)
    key = f"admin:{user_id}:{check_idempotency_key(idempotency_key)}"
    user = await lock_user(tx, user_id)
    balance = await ledger.post(
        tx,
        user_id=user_id,
        balance_minor=user["balance_minor"],
        amount_minor=amount_minor,
        kind=LedgerKind.ADMIN_ADJUST,
        reference=f"admin:{admin_id}",
        idempotency_key=key,
        now=now,
    )
    if balance is None:
        return BalanceChange(user_id=user_id, balance_minor=user["balance_minor"], applied=False)
    if amount_minor > 0:
        sub = await lock_subscription(tx, user_id)
        if sub is not None:  # money arrived: a waiting renewal may try again at once
            await tx.execute("UPDATE subscriptions SET renew_next_try_at = NULL WHERE id = $1", sub["id"])
    await record_audit(
        tx,
        admin_id=admin_id,
        action="adjust_balance",
        target_user_id=user_id,
        details={"amount_minor": amount_minor, "balance_after": balance, "key": key},
        reason=reason,
        now=now,
    )
    await enqueue_message(
        tx,
        chat_id=user_id,
        kind="admin.balance_adjusted",
        payload={"amount_minor": amount_minor, "balance_minor": balance},
        dedupe_key=key,
        now=now,
    )
    return BalanceChange(user_id=user_id, balance_minor=balance, applied=True)


async def admin_set_banned(
    tx: Tx, *, admin_id: int, user_id: int, banned: bool, reason: str, now: dt.datetime
) -> UserView:
    """Ban (key wanted absent) or unban (key wanted present again if the time is not up); audited.

    Setting the state the user is already in changes and records nothing.
    """
    check_admin_id(admin_id)
    check_user_id(user_id)
    check_now(now)
    check_reason(reason)
    user = await lock_user(tx, user_id)
    sub = await lock_subscription(tx, user_id)
    if (user["banned_at"] is not None) == bool(banned):
        return user_view(user)
    row = await tx.fetchrow(
        f"UPDATE users SET banned_at = $2 WHERE id = $1 RETURNING {USER_COLUMNS}",
        user_id,
        now if banned else None,
    )
    assert row is not None
    if sub is not None:
        state = subscription_state(sub)
        assert state is not None
        if banned:
            await revoke_keys(tx, subscription_id=sub["id"], now=now)
        elif state.is_active_at(now):
            await ensure_present_key(tx, subscription_id=sub["id"], now=now)
    await record_audit(
        tx,
        admin_id=admin_id,
        action="ban" if banned else "unban",
        target_user_id=user_id,
        details={},
        reason=reason,
        now=now,
    )
    return user_view(row)


async def refund_payment(
    tx: Tx, *, payment_id: int, admin_id: int, reason: str, now: dt.datetime
) -> RefundResult:
    """Reverse an applied payment exactly (see the module docstring), audited, with a notice.

    Raises :class:`PaymentNotFound`, :class:`RefundRefused` (``not_applied``, ``balance_short``),
    :class:`InvalidAdminInput` (empty reason); nothing changes then.
    """
    check_admin_id(admin_id)
    check_now(now)
    check_reason(reason)
    probe = await tx.fetchrow("SELECT user_id FROM payments WHERE id = $1", payment_id)
    if probe is None:
        raise PaymentNotFound(payment_id)
    payer_id = probe["user_id"]
    reward = await tx.fetchrow(_REWARD, payment_id)
    users = await lock_users(tx, [payer_id] if reward is None else [payer_id, reward["referrer_id"]])
    sub = await lock_subscription(tx, payer_id)
    payment = await tx.fetchrow(
        """
        SELECT user_id, provider, external_id, purpose, amount_minor, currency, credit_minor, days, status
        FROM payments WHERE id = $1 FOR UPDATE
        """,
        payment_id,
    )
    assert payment is not None
    if payment["status"] != "applied":
        raise RefundRefused(payment_id, "not_applied")
    # Read again under the locks: an apply_payment that committed after the probe wrote it.
    reward = await tx.fetchrow(_REWARD, payment_id)
    if reward is not None and reward["referrer_id"] not in users:
        users.update(await lock_users(tx, [reward["referrer_id"]]))
    payer = users[payer_id]
    debit = payment["credit_minor"]
    if debit > payer["balance_minor"]:
        raise RefundRefused(payment_id, "balance_short")
    if debit > 0:
        await ledger.post(
            tx,
            user_id=payer_id,
            balance_minor=payer["balance_minor"],
            amount_minor=-debit,
            kind=LedgerKind.REFUND,
            reference=f"payment:{payment_id}",
            idempotency_key=f"refund:payment:{payment_id}",
            now=now,
        )
    days = payment["days"] if payment["purpose"] == "plan" else 0
    expires_at = None if sub is None else sub["expires_at"]
    if days > 0 and sub is not None:
        expires_at = (await take_days(tx, sub=sub, days=days, now=now))["expires_at"]
    reversed_, kept = await _reverse_reward(tx, payment_id, reward, users, now)
    await tx.execute(
        "UPDATE payments SET status = 'refunded', refunded_at = $2 WHERE id = $1 AND status = 'applied'",
        payment_id,
        now,
    )
    await record_audit(
        tx,
        admin_id=admin_id,
        action="refund",
        target_user_id=payer_id,
        details={
            "payment_id": payment_id,
            "debited_minor": debit,
            "days_removed": days,
            "referral_reversed": reversed_,
            "referral_kept_minor": kept,
        },
        reason=reason,
        now=now,
    )
    await enqueue_message(
        tx,
        chat_id=payer_id,
        kind="payment.refunded",
        payload={
            "payment_id": payment_id,
            "amount_minor": payment["amount_minor"],
            "currency": payment["currency"],
        },
        dedupe_key=f"payment-refunded:{payment_id}",
        now=now,
    )
    return RefundResult(
        payment_id=payment_id,
        user_id=payer_id,
        provider=payment["provider"],
        external_id=payment["external_id"],
        amount_minor=payment["amount_minor"],
        currency=payment["currency"],
        debited_minor=debit,
        days_removed=days,
        referral_reversed=reversed_,
        referral_kept_minor=kept,
        expires_at=expires_at,
    )


async def _reverse_reward(
    tx: Tx, payment_id: int, reward: Record | None, users: dict[int, Record], now: dt.datetime
) -> tuple[bool, int]:
    if reward is None:
        return False, 0
    referrer = users[reward["referrer_id"]]
    amount = reward["amount_minor"]
    if referrer["balance_minor"] < amount:
        return False, amount
    key = f"referral:payment:{payment_id}:reversal"
    await ledger.post(
        tx,
        user_id=referrer["id"],
        balance_minor=referrer["balance_minor"],
        amount_minor=-amount,
        kind=LedgerKind.REFERRAL_REWARD,
        reference=f"payment:{payment_id}",
        idempotency_key=key,
        now=now,
    )
    await tx.execute("UPDATE referral_rewards SET reversed_at = $2 WHERE payment_id = $1", payment_id, now)
    return True, 0
