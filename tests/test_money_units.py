"""The units of work one path at a time, against a real PostgreSQL."""

from __future__ import annotations

import datetime as dt

import pytest
from _money_support import (
    ADMIN,
    CATALOG,
    DAY,
    EVERY_POLICY,
    NOW,
    POLICY,
    RUB,
    TTL,
    add_promo,
    add_user,
    attach_and_apply,
    ledger_consistent,
    rows,
    scalar,
    setup_catalog,
    snapshot,
    topup,
    topup_intent,
)

from atlas.domain import (
    PromoKind,
    PromoPerUserLimit,
    ReminderSchedule,
    SubscriptionKind,
    SubscriptionStatus,
    TrialAlreadyUsed,
)
from atlas.storage import Database
from atlas.storage.units import (
    ApplyOutcome,
    RefundRefused,
    admin_adjust_balance,
    admin_grant_days,
    admin_set_banned,
    apply_payment,
    audit_log,
    buy_plan_from_balance,
    claim_and_renew,
    clear_promo_session,
    create_payment_intent,
    enqueue_due_reminders,
    expire_due,
    expire_payment_intents,
    get_subscription_view,
    get_user,
    ledger_entries,
    list_promo_codes,
    pending_payments,
    plans_for_sale,
    promo_session_code,
    prune_promo_sessions,
    referral_stats,
    refund_payment,
    register_user,
    reissue_key,
    remember_promo,
    set_auto_renew,
    set_language,
    start_trial,
    stats,
    subscription_by_token,
    sync_plans,
)


async def _present_keys(db: Database, user_id: int) -> list[str]:
    found = await rows(
        db,
        """
        SELECT k.uuid::text AS uuid FROM vpn_keys k JOIN subscriptions s ON s.id = k.subscription_id
        WHERE s.user_id = $1 AND k.desired = 'present'
        """,
        user_id,
    )
    return [r["uuid"] for r in found]


async def _outbox(db: Database, chat_id: int) -> list[str]:
    return [
        r["kind"] for r in await rows(db, "SELECT kind FROM outbox WHERE chat_id = $1 ORDER BY id", chat_id)
    ]


async def test_register_is_idempotent_and_attributes_referrals_once(db: Database) -> None:
    code = await add_user(db, 1)
    first = await db.run(
        register_user,
        user_id=2,
        username="b",
        first_name="B",
        language="en-US",
        start_payload=f"ref_{code}",
        now=NOW,
    )
    again = await db.run(
        register_user,
        user_id=2,
        username="b2",
        first_name="B",
        language="ru",
        start_payload="ref_zzzz",
        now=NOW,
    )
    assert first.created and not again.created
    assert first.user.referrer_id == 1 and again.user.referrer_id == 1
    assert again.user.username == "b2" and again.user.language == "en"
    assert first.user.referral_code != code and len(first.user.referral_code) == 8
    garbage = await db.run(
        register_user,
        user_id=3,
        username=None,
        first_name=None,
        language=None,
        start_payload="ref_<>!",
        now=NOW,
    )
    assert garbage.created and garbage.user.referrer_id is None
    assert await _outbox(db, 1) == ["referral.joined"]


async def test_trial_then_paid_keeps_trial_remainder_and_key(db: Database) -> None:
    await setup_catalog(db)
    await add_user(db, 1)
    trial = await db.run(start_trial, user_id=1, trial_days=3, now=NOW)
    assert trial.kind is SubscriptionKind.TRIAL and trial.is_active and trial.days_left == 3
    assert len(trial.token) >= 32 and trial.key_uuid is not None
    with pytest.raises(TrialAlreadyUsed):
        await db.run(start_trial, user_id=1, trial_days=3, now=NOW)
    await topup(db, 1, 10_000)
    later = NOW + DAY
    bought = await db.run(
        buy_plan_from_balance,
        user_id=1,
        plan_code="m1",
        currency=RUB,
        promo_code=None,
        idempotency_key="k1",
        now=later,
    )
    assert bought.expires_at == NOW + 3 * DAY + 30 * DAY  # two trial days left, then 30 paid
    view = await db.run(get_subscription_view, user_id=1, now=later)
    assert view is not None and view.kind is SubscriptionKind.PAID and view.key_uuid == trial.key_uuid
    assert view.subscription_id == trial.subscription_id and bought.balance_minor == 0
    assert await db.run(subscription_by_token, token=trial.token, now=later) == view
    # The same key again: no second charge, no second grant.
    repeat = await db.run(
        buy_plan_from_balance,
        user_id=1,
        plan_code="m1",
        currency=RUB,
        promo_code=None,
        idempotency_key="k1",
        now=later,
    )
    assert repeat.already_done and repeat.charged_minor == 10_000
    assert (await db.run(get_subscription_view, user_id=1, now=later)) == view
    assert await ledger_consistent(db) == []


async def test_topup_applies_once_and_mismatch_is_flagged(db: Database) -> None:
    await add_user(db, 1)
    intent = await db.run(
        create_payment_intent,
        user_id=1,
        provider="cryptopay",
        purpose="topup",
        amount_minor=5_000,
        currency="rub",
        balance_currency=RUB,
        ttl=TTL,
        now=NOW,
    )
    assert intent.currency == RUB and intent.credit_minor == 5_000 and len(intent.payload) >= 32
    args = {
        "provider": "cryptopay",
        "external_id": "inv-1",
        "payload": intent.payload,
        "paid_amount_minor": 5_000,
        "paid_currency": RUB,
        "referral_policy": POLICY,
        "balance_currency": RUB,
        "now": NOW,
    }
    assert (await db.run(apply_payment, **args)).outcome is ApplyOutcome.APPLIED
    assert (await db.run(apply_payment, **args)).outcome is ApplyOutcome.ALREADY_APPLIED
    user = await db.run(get_user, user_id=1)
    assert user is not None and user.balance_minor == 5_000 and user.first_paid_at == NOW
    assert await _outbox(db, 1) == ["payment.applied.topup"]

    short = await topup_intent(db, 1, 7_000)
    result = await db.run(
        apply_payment, **{**args, "external_id": "inv-2", "payload": short.payload, "paid_amount_minor": 700}
    )
    assert result.outcome is ApplyOutcome.FLAGGED and "amount" in (result.reason or "")
    again = await db.run(
        apply_payment,
        **{**args, "external_id": "inv-2", "payload": short.payload, "paid_amount_minor": 7_000},
    )
    assert again.outcome is ApplyOutcome.FLAGGED
    unknown = await db.run(apply_payment, **{**args, "external_id": "nope", "payload": "nope"})
    assert unknown.outcome is ApplyOutcome.UNKNOWN
    assert (await db.run(get_user, user_id=1)).balance_minor == 5_000  # type: ignore[union-attr]


async def test_stars_plan_payment_by_payload_and_a_second_charge_is_flagged(db: Database) -> None:
    await setup_catalog(db)
    await add_user(db, 1)
    intent = await db.run(
        create_payment_intent,
        user_id=1,
        provider="stars",
        purpose="plan",
        plan_code="m1",
        currency="XTR",
        balance_currency=RUB,
        ttl=TTL,
        now=NOW,
    )
    assert intent.amount_minor == 50 and intent.days == 30
    pending = await db.run(pending_payments, provider="stars", after_id=0, limit=10)
    assert [p.payment_id for p in pending] == [intent.payment_id]

    def paid(charge: str) -> dict[str, object]:
        return {
            "provider": "stars",
            "external_id": charge,
            "payload": intent.payload,
            "paid_amount_minor": 50,
            "paid_currency": "XTR",
            "referral_policy": POLICY,
            "balance_currency": RUB,
            "now": NOW,
        }

    first = await db.run(apply_payment, **paid("charge-A"))
    assert first.outcome is ApplyOutcome.APPLIED and first.expires_at == NOW + 30 * DAY
    assert (await db.run(apply_payment, **paid("charge-A"))).outcome is ApplyOutcome.ALREADY_APPLIED
    second = await db.run(apply_payment, **paid("charge-B"))
    assert second.outcome is ApplyOutcome.FLAGGED and second.reason == "second_charge"
    assert (await db.run(apply_payment, **paid("charge-B"))).outcome is ApplyOutcome.FLAGGED
    statuses = await rows(db, "SELECT external_id, status FROM payments ORDER BY id")
    assert statuses == [
        {"external_id": "charge-A", "status": "applied"},
        {"external_id": "charge-B", "status": "flagged"},
    ]
    view = await db.run(get_subscription_view, user_id=1, now=NOW)
    assert view is not None and view.expires_at == NOW + 30 * DAY


async def test_referral_reward_first_payment_only_and_every_payment(db: Database) -> None:
    code = await add_user(db, 1)
    await add_user(db, 2, ref_of=code)
    await topup(db, 2, 10_000)
    await topup(db, 2, 10_000)
    assert (await db.run(get_user, user_id=1)).balance_minor == 1_000  # type: ignore[union-attr]
    stats_1 = await db.run(referral_stats, user_id=1)
    assert (stats_1.invited, stats_1.invited_paid, stats_1.rewards_count, stats_1.rewards_minor) == (
        1,
        1,
        1,
        1_000,
    )
    intent = await topup_intent(db, 2, 3_000)
    result = await db.run(
        apply_payment,
        provider="cryptopay",
        external_id="x3",
        payload=intent.payload,
        paid_amount_minor=3_000,
        paid_currency=RUB,
        referral_policy=EVERY_POLICY,
        balance_currency=RUB,
        now=NOW,
    )
    assert result.referral_reward_minor == 300
    assert (await db.run(get_user, user_id=1)).balance_minor == 1_300  # type: ignore[union-attr]
    assert await _outbox(db, 1) == ["referral.joined", "referral.reward", "referral.reward"]


async def test_promo_exhausted_between_intent_and_payment_still_applies(db: Database) -> None:
    await setup_catalog(db)
    await add_promo(db, "HALF", PromoKind.PERCENT, 50, max_uses=1)
    for user_id in (1, 2):
        await add_user(db, user_id)
    intents = [
        await db.run(
            create_payment_intent,
            user_id=user_id,
            provider="cryptopay",
            purpose="plan",
            plan_code="m1",
            currency=RUB,
            promo_code="half",
            balance_currency=RUB,
            ttl=TTL,
            now=NOW,
        )
        for user_id in (1, 2)
    ]
    assert [i.amount_minor for i in intents] == [5_000, 5_000]
    for intent in intents:
        await db.run(attach_and_apply, intent=intent, now=NOW)
    assert await scalar(db, "SELECT uses FROM promo_codes WHERE code = 'HALF'") == 1
    assert await scalar(db, "SELECT count(*) FROM promo_redemptions") == 2
    assert await scalar(db, "SELECT count(*) FROM payments WHERE status = 'applied'") == 2


async def test_promo_session_lives_for_its_ttl(db: Database) -> None:
    await setup_catalog(db)
    await add_promo(db, "DAYS", PromoKind.FREE_DAYS, 7)
    await add_user(db, 1)
    await topup(db, 1, 20_000)
    await db.run(remember_promo, user_id=1, code=" days ", ttl=TTL, now=NOW)
    assert await db.run(promo_session_code, user_id=1, now=NOW + TTL - dt.timedelta(seconds=1)) == "DAYS"
    assert await db.run(promo_session_code, user_id=1, now=NOW + TTL) is None
    bought = await db.run(
        buy_plan_from_balance,
        user_id=1,
        plan_code="m1",
        currency=RUB,
        promo_code=None,
        idempotency_key="a",
        now=NOW,
    )
    assert bought.days == 37 and bought.promo_code == "DAYS"
    assert await db.run(promo_session_code, user_id=1, now=NOW) is None  # used up
    with pytest.raises(PromoPerUserLimit):
        await db.run(remember_promo, user_id=1, code="DAYS", ttl=TTL, now=NOW)


async def test_renewal_renews_once_and_notifies_shortfall_once_per_period(db: Database) -> None:
    await setup_catalog(db)
    for user_id in (1, 2):
        await add_user(db, user_id)
        await topup(db, user_id, 10_000)
        await db.run(
            buy_plan_from_balance,
            user_id=user_id,
            plan_code="d1",
            currency=RUB,
            promo_code=None,
            idempotency_key="b",
            now=NOW,
        )
        await db.run(set_auto_renew, user_id=user_id, enabled=True, now=NOW)
    await db.run(
        admin_adjust_balance,
        admin_id=ADMIN,
        user_id=2,
        amount_minor=-9_500,
        reason="test",
        idempotency_key="drain",
        now=NOW,
    )
    window = dt.timedelta(hours=12)
    kwargs = {
        "limit": 100,
        "renew_window": window,
        "retry_after": dt.timedelta(hours=1),
        "catalog": CATALOG,
        "currency": RUB,
    }
    early = await db.run(claim_and_renew, now=NOW, **kwargs)
    assert early.claimed == 0
    at = NOW + DAY - window
    counts = await db.run(claim_and_renew, now=at, **kwargs)
    assert (counts.claimed, counts.renewed, counts.insufficient, counts.charged_minor) == (2, 1, 1, 500)
    again = await db.run(claim_and_renew, now=at, **kwargs)
    assert again.claimed == 0  # user 1 renewed, user 2 rests until retry_after
    later = await db.run(claim_and_renew, now=at + dt.timedelta(hours=1), **kwargs)
    assert (later.claimed, later.insufficient, later.renewed) == (1, 1, 0)
    assert await _outbox(db, 2) == [
        "payment.applied.topup",
        "purchase.done",
        "admin.balance_adjusted",
        "renewal.insufficient",
    ]
    view = await db.run(get_subscription_view, user_id=1, now=at)
    assert view is not None and view.expires_at == NOW + 2 * DAY and view.last_auto_renewal_at == at
    # A top-up lets user 2's renewal try again at once.
    await topup(db, 2, 500, now=at + dt.timedelta(hours=1, minutes=1))
    renewed = await db.run(claim_and_renew, now=at + dt.timedelta(hours=1, minutes=2), **kwargs)
    assert renewed.renewed == 1
    assert await scalar(db, "SELECT count(*) FROM ledger WHERE kind = 'renewal'") == 2
    assert await ledger_consistent(db) == []


async def test_trial_expiry_never_touches_a_converted_trial(db: Database) -> None:
    await setup_catalog(db)
    for user_id in (1, 2):
        await add_user(db, user_id)
        await db.run(start_trial, user_id=user_id, trial_days=1, now=NOW)
    await topup(db, 2, 10_000)
    await db.run(
        buy_plan_from_balance,
        user_id=2,
        plan_code="m1",
        currency=RUB,
        promo_code=None,
        idempotency_key="c",
        now=NOW + dt.timedelta(hours=1),
    )
    after = NOW + 2 * DAY
    trial_counts = await db.run(expire_due, now=after, limit=10, kind=SubscriptionKind.TRIAL)
    assert (trial_counts.claimed, trial_counts.expired) == (1, 1)
    assert await _present_keys(db, 1) == [] and len(await _present_keys(db, 2)) == 1
    paid = await db.run(get_subscription_view, user_id=2, now=after)
    assert paid is not None and paid.status is SubscriptionStatus.ACTIVE and paid.expires_at == NOW + 31 * DAY
    all_counts = await db.run(expire_due, now=NOW + 40 * DAY, limit=10)
    assert all_counts.expired == 1 and await _present_keys(db, 2) == []
    assert await db.run(expire_due, now=NOW + 40 * DAY, limit=10) == type(all_counts)(claimed=0, expired=0)
    # Paying again revives the same key.
    await topup(db, 2, 10_000, now=NOW + 41 * DAY)
    old_key = await scalar(
        db,
        "SELECT uuid::text FROM vpn_keys k JOIN subscriptions s ON s.id = k.subscription_id "
        "WHERE s.user_id = 2",
    )
    await db.run(
        buy_plan_from_balance,
        user_id=2,
        plan_code="m1",
        currency=RUB,
        promo_code=None,
        idempotency_key="d",
        now=NOW + 41 * DAY,
    )
    assert await _present_keys(db, 2) == [old_key]
    assert (await _outbox(db, 1)).count("subscription.expired.trial") == 1


async def test_reissue_swaps_keys_atomically(db: Database) -> None:
    await add_user(db, 1)
    trial = await db.run(start_trial, user_id=1, trial_days=3, now=NOW)
    swap = await db.run(reissue_key, user_id=1, now=NOW)
    assert swap.old_uuid == trial.key_uuid and swap.new_uuid != trial.key_uuid
    assert await _present_keys(db, 1) == [str(swap.new_uuid)]
    assert await scalar(db, "SELECT generation FROM vpn_keys WHERE uuid = $1", swap.old_uuid) == 2


async def test_admin_actions_are_audited_and_refunds_reverse_exactly(db: Database) -> None:
    await setup_catalog(db)
    code = await add_user(db, 1)
    await add_user(db, 2, ref_of=code)
    plan = await db.run(
        create_payment_intent,
        user_id=2,
        provider="cryptopay",
        purpose="plan",
        plan_code="m1",
        currency=RUB,
        balance_currency=RUB,
        ttl=TTL,
        now=NOW,
    )
    await db.run(attach_and_apply, intent=plan, now=NOW)
    assert (await db.run(get_user, user_id=1)).balance_minor == 1_000  # type: ignore[union-attr]
    grant = await db.run(admin_grant_days, admin_id=ADMIN, user_id=2, days=5, reason="gift", now=NOW)
    assert grant.expires_at == NOW + 35 * DAY
    result = await db.run(refund_payment, payment_id=plan.payment_id, admin_id=ADMIN, reason="asked", now=NOW)
    assert result.days_removed == 30 and result.referral_reversed and result.expires_at == NOW + 5 * DAY
    assert (await db.run(get_user, user_id=1)).balance_minor == 0  # type: ignore[union-attr]
    with pytest.raises(RefundRefused) as refused:
        await db.run(refund_payment, payment_id=plan.payment_id, admin_id=ADMIN, reason="again", now=NOW)
    assert refused.value.reason == "not_applied"
    removed = await db.run(admin_grant_days, admin_id=ADMIN, user_id=2, days=-10, reason="abuse", now=NOW)
    assert removed.status is SubscriptionStatus.EXPIRED and await _present_keys(db, 2) == []
    # A top-up whose money was spent cannot be refunded; nothing changes.
    top = await topup(db, 2, 10_000)
    await db.run(
        buy_plan_from_balance,
        user_id=2,
        plan_code="m1",
        currency=RUB,
        promo_code=None,
        idempotency_key="e",
        now=NOW,
    )
    before = await snapshot(db)
    with pytest.raises(RefundRefused) as short:
        await db.run(refund_payment, payment_id=top.payment_id, admin_id=ADMIN, reason="x", now=NOW)
    assert short.value.reason == "balance_short" and await snapshot(db) == before
    banned = await db.run(admin_set_banned, admin_id=ADMIN, user_id=2, banned=True, reason="spam", now=NOW)
    assert banned.banned and await _present_keys(db, 2) == []
    await db.run(admin_set_banned, admin_id=ADMIN, user_id=2, banned=False, reason="ok", now=NOW)
    assert len(await _present_keys(db, 2)) == 1
    log = await db.run(audit_log, target_user_id=2, limit=10)
    assert [entry.action for entry in log] == ["unban", "ban", "grant_days", "refund", "grant_days"]
    assert all(entry.reason for entry in log)
    entries = await db.run(ledger_entries, user_id=1, limit=10)
    assert [e.amount_minor for e in entries] == [-1_000, 1_000]
    assert await ledger_consistent(db) == []


async def test_reminders_walk_by_keyset_and_go_out_once(db: Database) -> None:
    await setup_catalog(db)
    for user_id in range(1, 6):
        await add_user(db, user_id)
        await db.run(start_trial, user_id=user_id, trial_days=1, now=NOW)
    at = NOW + DAY - dt.timedelta(minutes=30)
    schedule = ReminderSchedule()
    cursor, batches, enqueued = 0, 0, 0
    while cursor is not None:
        batch = await db.run(
            enqueue_due_reminders, now=at, after_id=cursor, limit=2, currency=RUB, schedule=schedule
        )
        cursor, batches, enqueued = batch.next_after_id, batches + 1, enqueued + batch.enqueued
    assert (batches, enqueued) == (3, 5)
    repeat = await db.run(enqueue_due_reminders, now=at, after_id=0, limit=10, currency=RUB)
    assert repeat.enqueued == 0 and repeat.examined == 5
    assert await _outbox(db, 1) == ["trial.started", "reminder.trial.1h"]


async def test_plans_sync_retires_missing_plans_and_stats_count(db: Database) -> None:
    await setup_catalog(db)
    await db.run(sync_plans, catalog=type(CATALOG)([CATALOG.get("m1")]), now=NOW)
    for_sale = await rows(db, "SELECT code FROM plans WHERE for_sale ORDER BY code")
    assert for_sale == [{"code": "m1"}]
    await add_user(db, 1)
    await add_user(db, 2)
    await db.run(start_trial, user_id=1, trial_days=3, now=NOW)
    await topup(db, 2, 10_000)
    await db.run(
        buy_plan_from_balance,
        user_id=2,
        plan_code="m1",
        currency=RUB,
        promo_code=None,
        idempotency_key="s",
        now=NOW,
    )
    numbers = await db.run(stats, now=NOW + dt.timedelta(seconds=1), period=DAY)
    assert (numbers.users, numbers.new_users, numbers.active, numbers.trial, numbers.paid) == (2, 2, 2, 1, 1)
    assert dict(numbers.revenue) == {RUB: 10_000}


async def test_expired_intents_still_apply_when_paid(db: Database) -> None:
    await add_user(db, 1)
    intent = await topup_intent(db, 1, 100)
    assert await db.run(expire_payment_intents, now=NOW + TTL, limit=10) == 1
    assert await db.run(pending_payments, provider="cryptopay", after_id=0, limit=10) == []
    await db.run(attach_and_apply, intent=intent, now=NOW + TTL)
    assert (await db.run(get_user, user_id=1)).balance_minor == 100  # type: ignore[union-attr]


async def test_promo_listing_sessions_language_and_plans_for_sale(db: Database) -> None:
    await setup_catalog(db)
    for code in ("A1", "B2", "C3"):
        await add_promo(db, code, PromoKind.FREE_DAYS, 1)
    first = await db.run(list_promo_codes, after=None, limit=2)
    rest = await db.run(list_promo_codes, after=first[-1].code, limit=2)
    assert [p.code for p in first] == ["A1", "B2"] and [p.code for p in rest] == ["C3"]
    await add_user(db, 1)
    await add_user(db, 2)
    await db.run(remember_promo, user_id=1, code="a1", ttl=TTL, now=NOW)
    await db.run(remember_promo, user_id=2, code="b2", ttl=TTL, now=NOW)
    assert await db.run(clear_promo_session, user_id=1) is True
    assert await db.run(clear_promo_session, user_id=1) is False
    assert await db.run(prune_promo_sessions, now=NOW + TTL, limit=10) == 1
    assert await scalar(db, "SELECT count(*) FROM promo_sessions") == 0
    user = await db.run(set_language, user_id=1, language="en")
    assert user.language == "en"
    assert [plan.code for plan in await db.run(plans_for_sale)] == ["d1", "m1"]
    assert (await db.run(plans_for_sale))[1] == CATALOG.get("m1")
