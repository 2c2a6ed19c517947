"""Referrals: who may refer whom, the /start payload parser, and rewards that never exceed a payment."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from atlas.domain import (
    ConfigError,
    ReferralAlreadySet,
    ReferralPolicy,
    ReferralTrigger,
    RewardKind,
    SelfReferral,
    check_referrer,
    parse_referral_payload,
    referral_payload,
    referral_reward,
)


def test_check_referrer() -> None:
    assert check_referrer(1, 2, referrer_exists=True) is True
    assert check_referrer(1, 2, referrer_exists=False) is False  # forged link: ignored, no error
    with pytest.raises(SelfReferral) as info:
        check_referrer(7, 7, referrer_exists=True)
    assert info.value.code == "referral.self"
    with pytest.raises(ReferralAlreadySet) as already:
        check_referrer(1, 3, referrer_exists=True, current_referrer_id=2)
    assert already.value.code == "referral.already_set"


def test_parse_referral_payload() -> None:
    assert parse_referral_payload("ref_ABC123") == "ABC123"
    assert parse_referral_payload("ref_a-b_c") == "a-b_c"
    for garbage in (None, "", "ref_", "ABC123", "ref_ABC 123", "ref_ABC!", "ref_" + "a" * 61, "реф_1", 42):
        assert parse_referral_payload(garbage) is None  # type: ignore[arg-type]
    assert referral_payload("ABC123") == "ref_ABC123"
    with pytest.raises(ValueError):
        referral_payload("")
    with pytest.raises(ValueError):
        referral_payload("a b")


@given(st.from_regex(r"[A-Za-z0-9_-]{1,60}", fullmatch=True))
def test_payload_round_trip(code: str) -> None:
    assert parse_referral_payload(referral_payload(code)) == code


@given(st.text(max_size=80))
def test_payload_parser_never_raises(text: str) -> None:
    result = parse_referral_payload(text)
    assert result is None or (text == "ref_" + result and len(text) <= 64)


def test_policy_validation() -> None:
    assert ReferralPolicy("percent", 10, "every_payment").trigger is ReferralTrigger.EVERY_PAYMENT  # type: ignore[arg-type]
    for kind, value, field in [
        (RewardKind.PERCENT, 0, "referral.value"),
        (RewardKind.PERCENT, 101, "referral.value"),
        (RewardKind.FIXED, 0, "referral.value"),
        (RewardKind.FIXED, 1.5, "referral.value"),
        ("bonus", 10, "referral.kind"),
    ]:
        with pytest.raises(ConfigError) as info:
            ReferralPolicy(kind, value)  # type: ignore[arg-type]
        assert info.value.field == field


def test_reward_rules() -> None:
    pct = ReferralPolicy(RewardKind.PERCENT, 10)
    assert referral_reward(pct, payment_amount_minor=19900, is_first_payment=True) == 1990
    assert referral_reward(pct, payment_amount_minor=19900, is_first_payment=False) == 0  # first payment only
    assert referral_reward(pct, payment_amount_minor=5, is_first_payment=True) == 0  # 0.5: tie goes down
    every = ReferralPolicy(RewardKind.PERCENT, 10, ReferralTrigger.EVERY_PAYMENT)
    assert referral_reward(every, payment_amount_minor=19900, is_first_payment=False) == 1990
    fixed = ReferralPolicy(RewardKind.FIXED, 5000)
    assert referral_reward(fixed, payment_amount_minor=19900, is_first_payment=True) == 5000
    assert referral_reward(fixed, payment_amount_minor=3000, is_first_payment=True) == 3000  # capped
    assert (
        referral_reward(fixed, payment_amount_minor=0, is_first_payment=True) == 0
    )  # a free (100%) purchase
    off = ReferralPolicy(RewardKind.FIXED, 5000, enabled=False)
    assert referral_reward(off, payment_amount_minor=19900, is_first_payment=True) == 0
    with pytest.raises(ValueError):
        referral_reward(pct, payment_amount_minor=-1, is_first_payment=True)


policies = st.builds(
    ReferralPolicy,
    st.sampled_from(RewardKind),
    st.integers(1, 100),
    st.sampled_from(ReferralTrigger),
    st.booleans(),
) | st.builds(
    ReferralPolicy, st.just(RewardKind.FIXED), st.integers(1, 10**9), st.sampled_from(ReferralTrigger)
)


@given(policies, st.integers(0, 10**12), st.booleans())
def test_reward_never_exceeds_payment(policy: ReferralPolicy, amount: int, first: bool) -> None:
    reward = referral_reward(policy, payment_amount_minor=amount, is_first_payment=first)
    assert 0 <= reward <= amount
    if not policy.enabled or (policy.trigger is ReferralTrigger.FIRST_PAYMENT and not first):
        assert reward == 0
