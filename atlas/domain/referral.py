"""Referrals: who may refer whom, the deep-link payload, and the reward for a referred payment.

A user arrives with ``/start ref_<code>``; the bot resolves the code to a referrer and records it
once, when the user is created (:func:`check_referrer`). When the referred user pays, the storage
layer computes :func:`referral_reward` and credits the referrer's balance in the same transaction
as the payment (contract 6), with an idempotency key derived from the payment, so a replayed
webhook never rewards twice.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass

from atlas.domain._checks import require_int
from atlas.domain.errors import ConfigError, ReferralAlreadySet, SelfReferral
from atlas.domain.money import MAX_AMOUNT_MINOR, percent_of

#: Telegram's ``start`` parameter alphabet and length.
START_PARAM_PATTERN = re.compile(r"[A-Za-z0-9_-]{1,64}", re.ASCII)
REFERRAL_PREFIX = "ref_"


class RewardKind(enum.StrEnum):
    """How a reward is computed from the referred payment."""

    PERCENT = "percent"
    FIXED = "fixed"


class ReferralTrigger(enum.StrEnum):
    """Which of the referred user's payments earn the referrer a reward."""

    FIRST_PAYMENT = "first_payment"
    EVERY_PAYMENT = "every_payment"


@dataclass(frozen=True)
class ReferralPolicy:
    """The deployment's referral rule (operator configuration).

    ``value`` is a whole percent (1..100) of the payment for ``PERCENT``, or minor units for
    ``FIXED`` (in the balance currency). ``enabled=False`` turns rewards off without losing the
    setting. Construction validates and raises :class:`ConfigError` naming ``referral.<field>``.
    """

    kind: RewardKind
    value: int
    trigger: ReferralTrigger = ReferralTrigger.FIRST_PAYMENT
    enabled: bool = True

    def __post_init__(self) -> None:
        for name, enum_type in (("kind", RewardKind), ("trigger", ReferralTrigger)):
            try:
                object.__setattr__(self, name, enum_type(getattr(self, name)))
            except ValueError:
                raise ConfigError(f"referral.{name}", getattr(self, name), "unknown value") from None
        if isinstance(self.value, bool) or not isinstance(self.value, int):
            raise ConfigError("referral.value", self.value, "must be a whole number")
        if self.kind is RewardKind.PERCENT and not 1 <= self.value <= 100:
            raise ConfigError("referral.value", self.value, "a percent must be between 1 and 100")
        if self.kind is RewardKind.FIXED and not 1 <= self.value <= MAX_AMOUNT_MINOR:
            raise ConfigError("referral.value", self.value, "a fixed reward must be positive minor units")
        if not isinstance(self.enabled, bool):
            raise ConfigError("referral.enabled", self.enabled, "must be true or false")


def referral_reward(policy: ReferralPolicy, *, payment_amount_minor: int, is_first_payment: bool) -> int:
    """The referrer's reward (minor units) for one payment of a referred user; 0 when none is due.

    Zero when the policy is disabled, when the trigger is ``FIRST_PAYMENT`` and this is not the
    first, or when the payment is zero (a 100% promo). Never more than the payment itself: a fixed
    reward is capped at the payment, a percent is at most 100% and rounds ties down (see
    :func:`atlas.domain.percent_of`). A negative payment is a caller's bug (``ValueError``).
    """
    amount = require_int("payment_amount_minor", payment_amount_minor)
    if amount < 0:
        raise ValueError(f"payment_amount_minor must be >= 0, got {amount}")
    if not policy.enabled or amount == 0:
        return 0
    if policy.trigger is ReferralTrigger.FIRST_PAYMENT and not is_first_payment:
        return 0
    if policy.kind is RewardKind.PERCENT:
        return percent_of(amount, policy.value * 100)
    return min(policy.value, amount)


def check_referrer(
    user_id: int,
    referrer_id: int,
    *,
    referrer_exists: bool,
    current_referrer_id: int | None = None,
) -> bool:
    """Decide whether ``referrer_id`` may be recorded as ``user_id``'s referrer.

    Raises :class:`SelfReferral` when they are the same user and :class:`ReferralAlreadySet` when
    the user already has a referrer (the first one is kept: rewards must not be redirectable).
    Returns False, without an error, when the referrer does not exist: a stale or forged link is
    ignored rather than shown to the user. Returns True when the referral should be recorded.
    """
    if user_id == referrer_id:
        raise SelfReferral()
    if current_referrer_id is not None:
        raise ReferralAlreadySet()
    return referrer_exists


def parse_referral_payload(payload: str | None) -> str | None:
    """Return the referral code from a ``/start`` parameter like ``"ref_ABC123"``, else None.

    Untrusted input: anything that is not a valid Telegram start parameter (``[A-Za-z0-9_-]``,
    1-64 chars), lacks the ``ref_`` prefix or has nothing after it gives None, never an error.
    """
    if not isinstance(payload, str) or not START_PARAM_PATTERN.fullmatch(payload):
        return None
    if not payload.startswith(REFERRAL_PREFIX):
        return None
    code = payload[len(REFERRAL_PREFIX) :]
    return code or None


def referral_payload(code: str) -> str:
    """Build the ``/start`` parameter for ``code`` (the inverse of :func:`parse_referral_payload`).

    Raises ``ValueError`` when the result would not be a valid start parameter.
    """
    payload = REFERRAL_PREFIX + code
    if not code or not START_PARAM_PATTERN.fullmatch(payload):
        raise ValueError(f"referral code {code!r} cannot travel in a /start link")
    return payload
