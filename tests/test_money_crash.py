"""Crash safety: every money unit, interrupted after each of its statements, leaves no partial effect.

A :class:`FailingTx` runs the first k statements of a unit and then raises, for k = 0, 1, 2, ... until
the unit completes. After every interrupted run all money tables must equal the snapshot taken
before; the completed run must have changed something (so the unit was really exercised).
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest
from _money_support import (
    ADMIN,
    CATALOG,
    DAY,
    EVERY_POLICY,
    NOW,
    RUB,
    TTL,
    InjectedFailure,
    add_promo,
    add_user,
    ledger_consistent,
    run_failing,
    scalar,
    setup_catalog,
    snapshot,
    topup,
    topup_intent,
)

from atlas.domain import PromoCode, PromoKind
from atlas.storage import Database
from atlas.storage.units import (
    ApplyOutcome,
    admin_adjust_balance,
    admin_grant_days,
    admin_set_banned,
    apply_payment,
    attach_external_id,
    buy_plan_from_balance,
    claim_and_renew,
    create_payment_intent,
    create_promo_code,
    enqueue_due_reminders,
    expire_due,
    expire_payment_intents,
    refund_payment,
    register_user,
    reissue_key,
    remember_promo,
    set_auto_renew,
    set_referrer,
    start_trial,
    sync_plans,
)


async def _interrupt_everywhere(db: Database, name: str, unit: Any, kwargs: dict[str, Any]) -> Any:
    before = await snapshot(db)
    for allowed in range(200):
        try:
            result = await db.run(run_failing, unit=unit, allowed=allowed, kwargs=kwargs)
        except InjectedFailure:
            after = await snapshot(db)
            changed = [table for table in before if before[table] != after[table]]
            assert changed == [], f"{name} interrupted after {allowed} statements left {changed} changed"
            continue
        assert allowed >= 1, f"{name} ran no statement: the scenario exercises nothing"
        assert await snapshot(db) != before, f"{name} completed without changing anything"
        return result
    pytest.fail(f"{name} did not complete within 200 statements")


def _pay(intent: Any, external_id: str, **overrides: Any) -> dict[str, Any]:
    args = {
        "provider": intent.provider,
        "external_id": external_id,
        "payload": intent.payload,
        "paid_amount_minor": intent.amount_minor,
        "paid_currency": intent.currency,
        "referral_policy": EVERY_POLICY,
        "balance_currency": RUB,
        "now": NOW,
    }
    args.update(overrides)
    return args


async def test_every_money_unit_is_all_or_nothing(db: Database) -> None:
    await setup_catalog(db)
    code = await add_user(db, 1)
    await add_user(db, 11)
    await add_promo(db, "BONUS", PromoKind.BALANCE_BONUS, 500)
    await add_promo(db, "DAYS", PromoKind.FREE_DAYS, 3)
    step = _interrupt_everywhere

    await step(db, "sync_plans", sync_plans, {"catalog": type(CATALOG)([CATALOG.get("m1")]), "now": NOW})
    await db.run(sync_plans, catalog=CATALOG, now=NOW)
    await step(
        db,
        "register_user",
        register_user,
        {
            "user_id": 10,
            "username": "x",
            "first_name": "X",
            "language": "ru",
            "start_payload": f"ref_{code}",
            "now": NOW,
        },
    )
    await step(db, "set_referrer", set_referrer, {"user_id": 11, "referral_code": code, "now": NOW})
    await step(db, "start_trial", start_trial, {"user_id": 10, "trial_days": 3, "now": NOW})
    topup_payment = await step(
        db,
        "create_payment_intent",
        create_payment_intent,
        {
            "user_id": 10,
            "provider": "cryptopay",
            "purpose": "topup",
            "amount_minor": 20_000,
            "currency": RUB,
            "balance_currency": RUB,
            "promo_code": "BONUS",
            "ttl": TTL,
            "now": NOW,
        },
    )
    await step(
        db,
        "attach_external_id",
        attach_external_id,
        {"payment_id": topup_payment.payment_id, "external_id": "inv-t"},
    )
    applied = await step(db, "apply_payment (top-up)", apply_payment, _pay(topup_payment, "inv-t"))
    assert applied.outcome is ApplyOutcome.APPLIED and applied.referral_reward_minor == 2_000
    plan_intent = await db.run(
        create_payment_intent,
        user_id=10,
        provider="stars",
        purpose="plan",
        plan_code="m1",
        currency="XTR",
        balance_currency=RUB,
        promo_code="DAYS",
        ttl=TTL,
        now=NOW,
    )
    plan_paid = await step(db, "apply_payment (plan)", apply_payment, _pay(plan_intent, "charge-1"))
    assert plan_paid.outcome is ApplyOutcome.APPLIED and plan_paid.referral_reward_minor == 1_000
    second = await step(db, "apply_payment (second charge)", apply_payment, _pay(plan_intent, "charge-2"))
    assert second.reason == "second_charge"
    odd = await topup_intent(db, 11, 300)
    flagged = await step(
        db, "apply_payment (mismatch)", apply_payment, _pay(odd, "inv-odd", paid_amount_minor=30)
    )
    assert flagged.outcome is ApplyOutcome.FLAGGED
    await step(
        db,
        "buy_plan_from_balance",
        buy_plan_from_balance,
        {
            "user_id": 10,
            "plan_code": "d1",
            "currency": RUB,
            "promo_code": None,
            "idempotency_key": "p",
            "now": NOW,
        },
    )
    await step(db, "reissue_key", reissue_key, {"user_id": 10, "now": NOW})
    await step(
        db,
        "admin_grant_days",
        admin_grant_days,
        {"admin_id": ADMIN, "user_id": 11, "days": 2, "reason": "gift", "now": NOW},
    )
    await step(
        db,
        "admin_adjust_balance",
        admin_adjust_balance,
        {
            "admin_id": ADMIN,
            "user_id": 11,
            "amount_minor": 700,
            "reason": "r",
            "idempotency_key": "a",
            "now": NOW,
        },
    )
    # Renewal: user 10 renews (d1 plan would be due), user 11 is short.
    await db.run(set_auto_renew, user_id=10, enabled=True, now=NOW)
    await db.run(set_auto_renew, user_id=11, enabled=True, now=NOW)
    await db.run(admin_grant_days, admin_id=ADMIN, user_id=11, days=1, reason="plan", now=NOW)
    await _set_plan(db, 11, "m1")
    renewal_at = await scalar(db, "SELECT expires_at FROM subscriptions WHERE user_id = 10") - dt.timedelta(
        hours=1
    )
    renewal = await step(
        db,
        "claim_and_renew",
        claim_and_renew,
        {
            "now": renewal_at,
            "limit": 10,
            "renew_window": 40 * DAY,
            "retry_after": dt.timedelta(hours=1),
            "catalog": CATALOG,
            "currency": RUB,
        },
    )
    reminders = await step(
        db,
        "enqueue_due_reminders",
        enqueue_due_reminders,
        {"now": NOW + 2 * DAY + dt.timedelta(hours=20), "after_id": 0, "limit": 10, "currency": RUB},
    )
    await step(
        db,
        "admin_grant_days (remove)",
        admin_grant_days,
        {"admin_id": ADMIN, "user_id": 11, "days": -1, "reason": "oops", "now": NOW},
    )
    await db.run(start_trial, user_id=1, trial_days=1, now=NOW)
    expired = await step(db, "expire_due", expire_due, {"now": NOW + 2 * DAY, "limit": 10})
    assert expired.expired == 2
    await step(
        db,
        "admin_set_banned",
        admin_set_banned,
        {"admin_id": ADMIN, "user_id": 10, "banned": True, "reason": "spam", "now": NOW},
    )
    refund = await step(
        db,
        "refund_payment",
        refund_payment,
        {"payment_id": plan_intent.payment_id, "admin_id": ADMIN, "reason": "asked", "now": NOW},
    )
    await step(
        db,
        "create_promo_code",
        create_promo_code,
        {"admin_id": ADMIN, "promo": PromoCode("NEW", PromoKind.PERCENT, 15), "reason": "launch", "now": NOW},
    )
    await step(db, "remember_promo", remember_promo, {"user_id": 1, "code": "NEW", "ttl": TTL, "now": NOW})
    await topup_intent(db, 1, 100)
    await step(db, "expire_payment_intents", expire_payment_intents, {"now": NOW + DAY, "limit": 10})
    await topup(db, 1, 100)
    assert (renewal.renewed, renewal.insufficient) == (1, 1)
    assert reminders.enqueued == 1
    assert refund.referral_reversed and refund.days_removed == 33
    assert await ledger_consistent(db) == []


async def _set_plan(db: Database, user_id: int, plan: str) -> None:
    from atlas.storage import Tx

    async def unit(tx: Tx) -> None:
        await tx.execute("UPDATE subscriptions SET plan_code = $2 WHERE user_id = $1", user_id, plan)

    await db.run(unit)
