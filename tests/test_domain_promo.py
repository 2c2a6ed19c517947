"""Promo codes: normalisation, structure, the order of refusals, and the money invariants of quotes."""

from __future__ import annotations

import dataclasses
import datetime as dt
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from atlas.domain import (
    XTR,
    Currency,
    InvalidAmount,
    InvalidPromoDefinition,
    MalformedPromoCode,
    Plan,
    PlanNotForSale,
    PromoCode,
    PromoExhausted,
    PromoExpired,
    PromoKind,
    PromoNewUsersOnly,
    PromoNotApplicable,
    PromoNotFound,
    PromoPerUserLimit,
    PromoPurpose,
    PromoSession,
    Quote,
    TopupQuote,
    UnsupportedCurrency,
    check_promo,
    normalise_code,
    quote_plan,
    quote_topup,
    validate_promo_definition,
)

NOW = dt.datetime(2026, 3, 1, 12, 0, tzinfo=dt.UTC)
RUB, USD = Currency("RUB"), Currency("USD")
MONTH = Plan("m1", 30, {RUB: 19900, USD: 249}, 150, {"ru": "Месяц", "en": "Month"})
YEAR = Plan("m12", 365, {RUB: 199000}, None, {"ru": "Год", "en": "Year"})
RETIRED = Plan("old", 30, {RUB: 9900}, None, {"en": "Old"}, for_sale=False)


def promo(**fields: Any) -> PromoCode:
    defaults: dict[str, Any] = {"code": "spring", "kind": PromoKind.PERCENT, "value": 10}
    defaults.update(fields)
    return PromoCode(**defaults)


def quote(plan: Plan = MONTH, code: PromoCode | None = None, currency: Currency = RUB, **kw: Any) -> Quote:
    args: dict[str, Any] = {"user_uses": 0, "user_is_new": True, "now": NOW}
    args.update(kw)
    return quote_plan(plan, currency, code, **args)


# --- codes -----------------------------------------------------------------------------------------


def test_normalise_code() -> None:
    assert normalise_code("  spring-25_x ") == "SPRING-25_X"
    assert promo(code="Spring").code == "SPRING"
    for text, reason in [
        ("", "empty"),
        ("   ", "empty"),
        ("A" * 33, "too_long"),
        ("SPR ING", "bad_characters"),
        ("ВЕСНА", "bad_characters"),
        ("ı", "bad_characters"),
        ("A;DROP", "bad_characters"),
    ]:
        with pytest.raises(MalformedPromoCode) as info:
            normalise_code(text)
        assert info.value.reason == reason
        assert isinstance(info.value, PromoNotFound)  # to a user, garbage reads like an unknown code
        assert info.value.code == "promo.malformed"


@given(st.text(max_size=50))
def test_normalise_untrusted_input(text: str) -> None:
    try:
        code = normalise_code(text)
    except PromoNotFound as exc:
        assert len(str(exc.params["promo"])) <= 32
    else:
        assert code == code.upper().strip() and 1 <= len(code) <= 32
        assert normalise_code(code.lower()) == code


# --- definitions -----------------------------------------------------------------------------------


BAD_DEFINITIONS = [
    ({"value": 0}, "value"),
    ({"value": 101}, "value"),
    ({"value": True}, "value"),
    ({"value": 10.5}, "value"),
    ({"kind": PromoKind.FIXED, "value": 0, "currency": RUB}, "value"),
    ({"kind": PromoKind.FIXED, "value": 100}, "currency"),
    ({"kind": PromoKind.BALANCE_BONUS, "value": 100}, "currency"),
    ({"kind": PromoKind.FREE_DAYS, "value": 0}, "value"),
    ({"kind": PromoKind.FREE_DAYS, "value": 10_000}, "value"),
    ({"cap_minor": 500}, "currency"),
    ({"cap_minor": 0, "currency": RUB}, "cap_minor"),
    ({"kind": PromoKind.FIXED, "value": 100, "currency": RUB, "cap_minor": 50}, "cap_minor"),
    ({"max_uses": 0}, "max_uses"),
    ({"uses_so_far": -1}, "uses_so_far"),
    ({"per_user_limit": 0}, "per_user_limit"),
    ({"expires_at": dt.datetime(2026, 4, 1)}, "expires_at"),
    ({"applies_to": frozenset()}, "applies_to"),
    ({"applies_to": "m1"}, "applies_to"),
    ({"applies_to": frozenset({"Bad Code"})}, "applies_to"),
    ({"purpose": PromoPurpose.TOPUP}, "purpose"),
    (
        {
            "kind": PromoKind.BALANCE_BONUS,
            "value": 100,
            "currency": RUB,
            "purpose": "topup",
            "applies_to": frozenset({"m1"}),
        },
        "applies_to",
    ),
    ({"kind": "bogus"}, "kind"),
    ({"code": "no spaces"}, "code"),
]


@pytest.mark.parametrize(("fields", "field"), BAD_DEFINITIONS)
def test_structure_is_checked_at_construction(fields: dict[str, Any], field: str) -> None:
    with pytest.raises(InvalidPromoDefinition) as info:
        promo(**fields)
    assert info.value.field == field
    assert info.value.code == "promo.invalid_definition"
    assert info.value.params["field"] == field


def test_validate_definition_for_admin_create() -> None:
    good = promo(expires_at=NOW + dt.timedelta(days=7), applies_to=["m1"])
    assert good.applies_to == frozenset({"m1"})
    assert validate_promo_definition(good, now=NOW, known_plans={"m1", "m12"}) is good
    cases = [
        (promo(expires_at=NOW), "expires_at"),
        (promo(uses_so_far=3), "uses_so_far"),
        (promo(applies_to=frozenset({"m7"})), "applies_to"),
    ]
    for code, field in cases:
        with pytest.raises(InvalidPromoDefinition) as info:
            validate_promo_definition(code, now=NOW, known_plans={"m1"})
        assert info.value.field == field
    assert promo(kind="percent", purpose="plan").kind is PromoKind.PERCENT  # database strings accepted


# --- refusals, in order ----------------------------------------------------------------------------


def test_refusals_raise_the_right_error() -> None:
    with pytest.raises(PromoExpired) as expired:
        quote(code=promo(expires_at=NOW))
    assert expired.value.params == {"promo": "SPRING", "expired_at": NOW.isoformat()}
    assert quote(code=promo(expires_at=NOW + dt.timedelta(seconds=1))).discount_minor > 0
    with pytest.raises(PromoExhausted):
        quote(code=promo(max_uses=5, uses_so_far=5))
    assert quote(code=promo(max_uses=5, uses_so_far=4)).promo_code == "SPRING"
    with pytest.raises(PromoPerUserLimit) as limit:
        quote(code=promo(per_user_limit=2), user_uses=2)
    assert limit.value.params == {"promo": "SPRING", "limit": 2}
    assert quote(code=promo(per_user_limit=None), user_uses=1000).promo_code == "SPRING"
    with pytest.raises(PromoNewUsersOnly):
        quote(code=promo(new_users_only=True), user_is_new=False)
    cases: list[tuple[PromoCode, str, dict[str, Any]]] = [
        (promo(applies_to=frozenset({"m12"})), "plan", {}),
        (promo(kind=PromoKind.FIXED, value=100, currency=USD), "currency", {}),
        (promo(cap_minor=100, currency=RUB), "currency", {"currency": XTR}),
        (
            promo(kind=PromoKind.BALANCE_BONUS, value=100, currency=RUB, purpose=PromoPurpose.TOPUP),
            "purpose",
            {},
        ),
    ]
    for code, reason, kw in cases:
        with pytest.raises(PromoNotApplicable) as info:
            quote(code=code, **kw)
        assert info.value.reason == reason
        assert info.value.params["reason"] == reason


def test_refusal_order_expired_first() -> None:
    everything_wrong = promo(
        expires_at=NOW, max_uses=1, uses_so_far=1, new_users_only=True, applies_to=frozenset({"m12"})
    )
    with pytest.raises(PromoExpired):
        quote(code=everything_wrong, user_is_new=False, user_uses=9)
    with pytest.raises(PromoExhausted):
        quote(code=promo(max_uses=1, uses_so_far=1, applies_to=frozenset({"m12"})))
    with pytest.raises(PromoNotApplicable):
        quote(code=promo(applies_to=frozenset({"m12"}), new_users_only=True), user_is_new=False)
    with pytest.raises(PromoNewUsersOnly):
        quote(code=promo(new_users_only=True), user_is_new=False, user_uses=1)


def test_check_promo_alone() -> None:
    check_promo(promo(), user_uses=0, user_is_new=True, now=NOW)
    with pytest.raises(PromoPerUserLimit):
        check_promo(promo(), user_uses=1, user_is_new=True, now=NOW)
    with pytest.raises(ValueError, match="aware"):
        check_promo(promo(), user_uses=0, user_is_new=True, now=dt.datetime(2026, 1, 1))


# --- quotes ----------------------------------------------------------------------------------------


def test_quote_without_promo_and_plan_errors() -> None:
    q = quote()
    assert (q.base_minor, q.discount_minor, q.total_minor, q.days, q.promo_code) == (
        19900,
        0,
        19900,
        30,
        None,
    )
    assert quote(currency=XTR).total_minor == 150
    with pytest.raises(UnsupportedCurrency):
        quote(plan=YEAR, currency=XTR)
    with pytest.raises(PlanNotForSale):
        quote(plan=RETIRED)


def test_quote_kinds() -> None:
    pct = quote(code=promo(value=15))
    assert (pct.discount_minor, pct.total_minor) == (2985, 16915)
    capped = quote(code=promo(value=50, cap_minor=5000, currency=RUB))
    assert capped.discount_minor == 5000
    fixed = quote(code=promo(kind=PromoKind.FIXED, value=5000, currency=RUB))
    assert fixed.total_minor == 14900
    days = quote(code=promo(kind=PromoKind.FREE_DAYS, value=7))
    assert (days.total_minor, days.bonus_days, days.days) == (19900, 7, 37)
    bonus = quote(code=promo(kind=PromoKind.BALANCE_BONUS, value=1000, currency=RUB))
    assert (bonus.total_minor, bonus.balance_bonus_minor) == (19900, 1000)
    stars = quote(code=promo(value=10), currency=XTR)
    assert (stars.base_minor, stars.total_minor) == (150, 135)


def test_full_discount_is_free_and_still_grants_the_plan() -> None:
    free = quote(code=promo(value=100))
    assert free.total_minor == 0 and free.is_free and free.days == 30
    over = quote(code=promo(kind=PromoKind.FIXED, value=10**6, currency=RUB))
    assert over.total_minor == 0 and over.discount_minor == over.base_minor


def test_percent_tie_favours_the_customer() -> None:
    plan = Plan("odd", 30, {RUB: 1005}, None, {"en": "Odd"})
    q = quote(plan=plan, code=promo(value=50))
    assert (q.total_minor, q.discount_minor) == (502, 503)  # 502.5 to pay: the customer pays 502


codes = st.one_of(
    st.builds(
        lambda v, cap: promo(value=v, cap_minor=cap, currency=RUB if cap else None),
        st.integers(1, 100),
        st.none() | st.integers(1, 10**7),
    ),
    st.builds(lambda v: promo(kind=PromoKind.FIXED, value=v, currency=RUB), st.integers(1, 10**9)),
    st.builds(lambda v: promo(kind=PromoKind.FREE_DAYS, value=v), st.integers(1, 3660)),
    st.builds(lambda v: promo(kind=PromoKind.BALANCE_BONUS, value=v, currency=RUB), st.integers(1, 10**9)),
)


@given(st.integers(1, 10**12), st.none() | codes)
def test_quote_money_invariants(price: int, code: PromoCode | None) -> None:
    plan = Plan("p", 30, {RUB: price}, None, {"en": "P"})
    q = quote(plan=plan, code=code)
    assert q.base_minor == price
    assert q.total_minor == q.base_minor - q.discount_minor
    assert 0 <= q.total_minor <= q.base_minor
    assert q.days >= 30 and q.balance_bonus_minor >= 0
    if code is not None and code.kind is PromoKind.PERCENT:
        if code.cap_minor is not None:
            assert q.discount_minor <= code.cap_minor
        # within half a minor unit of the exact discount (integers only: no floats near money)
        off_by = abs(q.discount_minor * 100 - price * code.value)
        assert off_by * 2 <= 100 or q.discount_minor == code.cap_minor
    if code is None or code.kind in (PromoKind.FREE_DAYS, PromoKind.BALANCE_BONUS):
        assert q.discount_minor == 0


def test_quote_rejects_inconsistent_construction() -> None:
    with pytest.raises(ValueError, match="inconsistent"):
        Quote("p", RUB, base_minor=100, discount_minor=150, total_minor=-50, duration_days=30)
    with pytest.raises(ValueError, match="inconsistent"):
        Quote("p", RUB, base_minor=100, discount_minor=10, total_minor=100, duration_days=30)


# --- top-ups ---------------------------------------------------------------------------------------


def topup(amount: int, code: PromoCode | None = None, **kw: Any) -> TopupQuote:
    args: dict[str, Any] = {"user_uses": 0, "user_is_new": True, "now": NOW, "max_minor": 10**7}
    args.update(kw)
    return quote_topup(amount, RUB, code, **args)


def test_topup_amount_guards() -> None:
    assert topup(50000).credit_minor == 50000
    for amount, reason in [(-100, "negative"), (0, "zero"), (10**7 + 1, "too_large")]:
        with pytest.raises(InvalidAmount) as info:
            topup(amount)
        assert info.value.reason == reason
    with pytest.raises(InvalidAmount):
        topup(50, min_minor=100)


def test_topup_bonus_and_refusals() -> None:
    bonus = promo(kind=PromoKind.BALANCE_BONUS, value=1000, currency=RUB, purpose=PromoPurpose.TOPUP)
    q = topup(50000, bonus)
    assert (q.total_minor, q.bonus_minor, q.credit_minor, q.promo_code) == (50000, 1000, 51000, "SPRING")
    with pytest.raises(PromoNotApplicable) as kind:
        topup(50000, promo())
    assert kind.value.reason == "kind"
    with pytest.raises(PromoNotApplicable) as purpose:
        topup(50000, promo(kind=PromoKind.BALANCE_BONUS, value=1, currency=RUB, purpose=PromoPurpose.PLAN))
    assert purpose.value.reason == "purpose"
    with pytest.raises(PromoNotApplicable) as plan_only:
        topup(50000, promo(kind=PromoKind.BALANCE_BONUS, value=1, currency=RUB, applies_to=frozenset({"m1"})))
    assert plan_only.value.reason == "plan"
    with pytest.raises(PromoExpired):
        topup(50000, dataclasses.replace(bonus, expires_at=NOW))
    with pytest.raises(InvalidAmount):  # the amount is checked before the code
        topup(0, promo(expires_at=NOW))


# --- sessions --------------------------------------------------------------------------------------


def test_promo_session_ttl() -> None:
    session = PromoSession("spring", NOW, dt.timedelta(minutes=10))
    assert session.code == "SPRING"
    assert session.is_live(NOW + dt.timedelta(minutes=9, seconds=59))
    assert not session.is_live(NOW + dt.timedelta(minutes=10))
    with pytest.raises(ValueError):
        PromoSession("spring", NOW, dt.timedelta(0))
