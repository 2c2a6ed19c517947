"""Bad input: each refusal is the right domain error and leaves every money table exactly as it was."""

from __future__ import annotations

import datetime as dt
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from _money_support import (
    ADMIN,
    CATALOG,
    DAY,
    NOW,
    RUB,
    TTL,
    add_promo,
    add_user,
    setup_catalog,
    snapshot,
    topup,
)

from atlas.domain import (
    DomainError,
    InsufficientBalance,
    InvalidAmount,
    InvalidPromoDefinition,
    MalformedPromoCode,
    PlanNotForSale,
    PromoCode,
    PromoExhausted,
    PromoExpired,
    PromoKind,
    PromoNewUsersOnly,
    PromoNotApplicable,
    PromoNotFound,
    PromoPurpose,
    ReferralAlreadySet,
    SelfReferral,
    TrialAlreadyUsed,
    TrialNotAllowed,
    UnknownPlan,
    UnsupportedCurrency,
)
from atlas.storage import Database
from atlas.storage.units import (
    InvalidAdminInput,
    NoSubscription,
    NothingToPay,
    UnknownUser,
    UserBanned,
    admin_adjust_balance,
    admin_grant_days,
    admin_set_banned,
    buy_plan_from_balance,
    create_payment_intent,
    create_promo_code,
    reissue_key,
    remember_promo,
    set_referrer,
    start_trial,
)


async def _world(db: Database) -> dict[str, str]:
    """Users 1 (referrer of 2), 2 (paid 10 000 RUB, has a 30-day plan), 3 (trial used), 4 (banned)."""
    await setup_catalog(db)
    code_1 = await add_user(db, 1)
    await add_user(db, 2, ref_of=code_1)
    await add_user(db, 3)
    await add_user(db, 4)
    await topup(db, 2, 10_000)
    await db.run(
        buy_plan_from_balance,
        user_id=2,
        plan_code="m1",
        currency=RUB,
        promo_code=None,
        idempotency_key="w",
        now=NOW,
    )
    await db.run(start_trial, user_id=3, trial_days=3, now=NOW)
    await db.run(admin_set_banned, admin_id=ADMIN, user_id=4, banned=True, reason="test", now=NOW)
    await add_promo(db, "OLD", PromoKind.PERCENT, 10, expires_at=NOW + DAY)
    await add_promo(db, "ONCE", PromoKind.PERCENT, 10, max_uses=1)
    await add_promo(db, "NEWBIE", PromoKind.PERCENT, 10, new_users_only=True)
    await add_promo(db, "TOPUP", PromoKind.BALANCE_BONUS, 100, purpose=PromoPurpose.TOPUP)
    await add_promo(db, "FREE", PromoKind.PERCENT, 100)
    await topup(db, 3, 20_000)
    await db.run(
        buy_plan_from_balance,
        user_id=3,
        plan_code="d1",
        currency=RUB,
        promo_code="ONCE",
        idempotency_key="o",
        now=NOW,
    )
    return {"code_1": code_1}


def _intent(**overrides: Any) -> dict[str, Any]:
    args: dict[str, Any] = {
        "user_id": 1,
        "provider": "cryptopay",
        "purpose": "plan",
        "plan_code": "m1",
        "currency": RUB,
        "balance_currency": RUB,
        "ttl": TTL,
        "now": NOW,
    }
    args.update(overrides)
    return args


def _buy(**overrides: Any) -> dict[str, Any]:
    args: dict[str, Any] = {
        "user_id": 1,
        "plan_code": "m1",
        "currency": RUB,
        "promo_code": None,
        "idempotency_key": "bad",
        "now": NOW,
    }
    args.update(overrides)
    return args


CASES: list[
    tuple[str, Callable[..., Awaitable[Any]], Callable[[dict[str, str]], dict[str, Any]], type[Exception]]
] = [
    ("unknown plan (intent)", create_payment_intent, lambda w: _intent(plan_code="nope"), UnknownPlan),
    ("unknown plan (balance)", buy_plan_from_balance, lambda w: _buy(plan_code="nope"), UnknownPlan),
    ("retired plan", create_payment_intent, lambda w: _intent(plan_code="old"), PlanNotForSale),
    ("no such currency", create_payment_intent, lambda w: _intent(currency="USD"), UnsupportedCurrency),
    ("stars with fiat", create_payment_intent, lambda w: _intent(provider="stars"), UnsupportedCurrency),
    (
        "negative top-up",
        create_payment_intent,
        lambda w: _intent(purpose="topup", plan_code=None, amount_minor=-100),
        InvalidAmount,
    ),
    (
        "zero top-up",
        create_payment_intent,
        lambda w: _intent(purpose="topup", plan_code=None, amount_minor=0),
        InvalidAmount,
    ),
    (
        "absurd top-up",
        create_payment_intent,
        lambda w: _intent(purpose="topup", plan_code=None, amount_minor=10**16),
        InvalidAmount,
    ),
    (
        "top-up above the configured limit",
        create_payment_intent,
        lambda w: _intent(purpose="topup", plan_code=None, amount_minor=10**7, max_topup_minor=10**6),
        InvalidAmount,
    ),
    (
        "top-up in Stars",
        create_payment_intent,
        lambda w: _intent(provider="stars", currency="XTR", purpose="topup", plan_code=None, amount_minor=10),
        UnsupportedCurrency,
    ),
    ("balance too low", buy_plan_from_balance, lambda w: _buy(), InsufficientBalance),
    (
        "expired promo",
        create_payment_intent,
        lambda w: _intent(promo_code="OLD", now=NOW + DAY),
        PromoExpired,
    ),
    ("exhausted promo", buy_plan_from_balance, lambda w: _buy(promo_code="once"), PromoExhausted),
    ("exhausted promo (intent)", create_payment_intent, lambda w: _intent(promo_code="ONCE"), PromoExhausted),
    ("unknown promo", create_payment_intent, lambda w: _intent(promo_code="NOSUCH"), PromoNotFound),
    ("garbage promo", create_payment_intent, lambda w: _intent(promo_code="💸; drop"), MalformedPromoCode),
    (
        "new users only",
        create_payment_intent,
        lambda w: _intent(user_id=2, promo_code="NEWBIE"),
        PromoNewUsersOnly,
    ),
    (
        "top-up code on a plan",
        create_payment_intent,
        lambda w: _intent(promo_code="TOPUP"),
        PromoNotApplicable,
    ),
    (
        "free quote needs no invoice",
        create_payment_intent,
        lambda w: _intent(promo_code="FREE"),
        NothingToPay,
    ),
    (
        "remember expired promo",
        remember_promo,
        lambda w: {"user_id": 1, "code": "OLD", "ttl": TTL, "now": NOW + 2 * DAY},
        PromoExpired,
    ),
    (
        "self-referral",
        set_referrer,
        lambda w: {"user_id": 1, "referral_code": w["code_1"], "now": NOW},
        SelfReferral,
    ),
    (
        "second referrer",
        set_referrer,
        lambda w: {"user_id": 2, "referral_code": w["code_1"], "now": NOW},
        ReferralAlreadySet,
    ),
    ("second trial", start_trial, lambda w: {"user_id": 3, "trial_days": 3, "now": NOW}, TrialAlreadyUsed),
    (
        "trial with paid time",
        start_trial,
        lambda w: {"user_id": 2, "trial_days": 3, "now": NOW},
        TrialNotAllowed,
    ),
    ("trial when banned", start_trial, lambda w: {"user_id": 4, "trial_days": 3, "now": NOW}, UserBanned),
    ("unknown user", start_trial, lambda w: {"user_id": 77, "trial_days": 3, "now": NOW}, UnknownUser),
    ("reissue without subscription", reissue_key, lambda w: {"user_id": 1, "now": NOW}, NoSubscription),
    (
        "admin: empty reason",
        admin_grant_days,
        lambda w: {"admin_id": ADMIN, "user_id": 2, "days": 3, "reason": "  ", "now": NOW},
        InvalidAdminInput,
    ),
    (
        "admin: zero days",
        admin_grant_days,
        lambda w: {"admin_id": ADMIN, "user_id": 2, "days": 0, "reason": "r", "now": NOW},
        InvalidAdminInput,
    ),
    (
        "admin: below zero",
        admin_adjust_balance,
        lambda w: {
            "admin_id": ADMIN,
            "user_id": 1,
            "amount_minor": -(10**6),
            "reason": "r",
            "idempotency_key": "k",
            "now": NOW,
        },
        InsufficientBalance,
    ),
    (
        "admin: absurd amount",
        admin_adjust_balance,
        lambda w: {
            "admin_id": ADMIN,
            "user_id": 1,
            "amount_minor": 10**16,
            "reason": "r",
            "idempotency_key": "k",
            "now": NOW,
        },
        InvalidAdminInput,
    ),
    (
        "promo: zero percent",
        create_promo_code,
        lambda w: {"admin_id": ADMIN, "promo": _bad_promo(), "reason": "r", "now": NOW},
        InvalidPromoDefinition,
    ),
    (
        "promo: duplicate",
        create_promo_code,
        lambda w: {
            "admin_id": ADMIN,
            "promo": PromoCode("ONCE", PromoKind.PERCENT, 5),
            "reason": "r",
            "now": NOW,
        },
        InvalidPromoDefinition,
    ),
]


def _bad_promo() -> PromoCode:
    # A structurally valid code that the "new code" checks refuse: already expired.
    return PromoCode("LATE", PromoKind.PERCENT, 5, expires_at=NOW - dt.timedelta(seconds=1))


async def test_every_refusal_is_a_domain_error_and_changes_nothing(db: Database) -> None:
    world = await _world(db)
    assert CATALOG.get("old").for_sale is False
    for name, unit, make_args, expected in CASES:
        before = await snapshot(db)
        with pytest.raises(expected) as caught:
            await db.run(unit, **make_args(world))
        assert isinstance(caught.value, DomainError), name
        assert caught.value.code and "." in caught.value.code, name
        after = await snapshot(db)
        changed = [table for table in before if before[table] != after[table]]
        assert changed == [], f"{name}: {changed} changed"
