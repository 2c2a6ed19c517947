"""Promo codes: what a code is, whether this user may use it now, and what it does to a price.

Four kinds, each with one meaning for ``value``:

==================  ===========================  ==================================================
kind                ``value``                    effect
==================  ===========================  ==================================================
``PERCENT``         whole percent, 1..100        plan discount; optional ``cap_minor`` bounds it
``FIXED``           minor units off              plan discount, never below a total of 0
``FREE_DAYS``       extra days                   added to the plan's duration; price unchanged
``BALANCE_BONUS``   minor units credited         added to the balance with a plan or a top-up
==================  ===========================  ==================================================

Top-ups can only carry a ``BALANCE_BONUS``: a "discount" on a top-up would credit more than was
paid under another name. ``purpose`` narrows further (``plan``, ``topup``, ``any``), ``applies_to``
restricts plan codes, and ``currency`` (required for the amount kinds and for a cap) restricts the
code to purchases in that currency, so 100 kopecks are never taken off a price in cents or Stars.

Checks run in a fixed order and the first failure is raised (:mod:`atlas.domain.errors`):
expired → exhausted → not applicable (purpose, kind, plan, currency) → new users only → per-user
limit. The quote functions decide and return values; they change nothing, so a refusal leaves
nothing to undo. The storage layer records the redemption in the same transaction as the payment.
"""

from __future__ import annotations

import datetime as dt
import enum
import re
from collections.abc import Collection, Iterable
from dataclasses import dataclass

from atlas.domain._checks import require_aware
from atlas.domain.errors import (
    InvalidPromoDefinition,
    MalformedPromoCode,
    PlanNotForSale,
    PromoExhausted,
    PromoExpired,
    PromoNewUsersOnly,
    PromoNotApplicable,
    PromoPerUserLimit,
)
from atlas.domain.money import MAX_AMOUNT_MINOR, Currency, check_amount, percent_of
from atlas.domain.plans import MAX_DURATION_DAYS, PLAN_CODE_PATTERN, Plan

PROMO_CODE_MAX_LENGTH = 32
_PROMO_CHARS = re.compile(r"[A-Za-z0-9_-]+", re.ASCII)


class PromoKind(enum.StrEnum):
    """What a code does; the string values are what the database stores."""

    PERCENT = "percent"
    FIXED = "fixed"
    FREE_DAYS = "free_days"
    BALANCE_BONUS = "balance_bonus"


class PromoPurpose(enum.StrEnum):
    """Which purchase a code may be used for."""

    PLAN = "plan"
    TOPUP = "topup"
    ANY = "any"


def normalise_code(text: str) -> str:
    """Return the canonical form of a code as typed: stripped, upper-case ASCII.

    Codes are case-insensitive (``spring25`` is ``SPRING25``). Allowed: 1-32 of ``A-Z 0-9 _ -``.
    The character check runs *before* upper-casing, so ``"ı"`` (dotless i) cannot become ``"I"``.
    Raises :class:`MalformedPromoCode` (a :class:`PromoNotFound`: to the user, garbage and an
    unknown code read the same) with ``reason`` ``empty``, ``too_long`` or ``bad_characters``.
    """
    if not isinstance(text, str):
        raise MalformedPromoCode(repr(text)[:PROMO_CODE_MAX_LENGTH], "bad_characters")
    stripped = text.strip()
    echo = "".join(ch for ch in stripped[:PROMO_CODE_MAX_LENGTH] if ch.isprintable())
    if not stripped:
        raise MalformedPromoCode("", "empty")
    if len(stripped) > PROMO_CODE_MAX_LENGTH:
        raise MalformedPromoCode(echo, "too_long")
    if not _PROMO_CHARS.fullmatch(stripped):
        raise MalformedPromoCode(echo, "bad_characters")
    return stripped.upper()


@dataclass(frozen=True)
class PromoCode:
    """A promo code as stored. Construction checks its structure (:class:`InvalidPromoDefinition`).

    ``code`` is normalised (:func:`normalise_code`). ``max_uses=None`` and ``per_user_limit=None``
    mean unlimited. ``uses_so_far`` is the global count; how often *this* user used it is passed
    to the quote functions separately (it is a per-user fact, not the code's). A code with
    ``expires_at`` is unusable from that instant on. ``applies_to=None`` means every plan.
    """

    code: str
    kind: PromoKind
    value: int
    currency: Currency | None = None
    cap_minor: int | None = None
    max_uses: int | None = None
    uses_so_far: int = 0
    per_user_limit: int | None = 1
    expires_at: dt.datetime | None = None
    new_users_only: bool = False
    applies_to: frozenset[str] | None = None
    purpose: PromoPurpose = PromoPurpose.ANY

    def __post_init__(self) -> None:
        try:
            object.__setattr__(self, "code", normalise_code(self.code))
        except MalformedPromoCode as exc:
            raise InvalidPromoDefinition("code", self.code, exc.reason) from exc
        for name, enum_type in (("kind", PromoKind), ("purpose", PromoPurpose)):
            try:
                object.__setattr__(self, name, enum_type(getattr(self, name)))
            except ValueError:
                raise InvalidPromoDefinition(name, getattr(self, name), "unknown value") from None
        applies_to: object = self.applies_to
        if applies_to is not None:
            # A bare string is iterable too: frozenset("m1") would be {"m", "1"}.
            if isinstance(applies_to, str) or not isinstance(applies_to, Iterable):
                raise InvalidPromoDefinition("applies_to", applies_to, "must be a set of plan codes")
            object.__setattr__(self, "applies_to", frozenset(applies_to))
        _check_structure(self)


def _is_count(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_structure(promo: PromoCode) -> None:
    def bad(field: str, reason: str) -> InvalidPromoDefinition:
        return InvalidPromoDefinition(field, getattr(promo, field), reason)

    kind = promo.kind
    if not _is_count(promo.value):
        raise bad("value", "must be a whole number")
    if kind is PromoKind.PERCENT and not 1 <= promo.value <= 100:
        raise bad("value", "a percent must be between 1 and 100")
    if kind in (PromoKind.FIXED, PromoKind.BALANCE_BONUS):
        if not 1 <= promo.value <= MAX_AMOUNT_MINOR:
            raise bad("value", "an amount must be positive minor units")
        if promo.currency is None:
            raise bad("currency", "an amount needs a currency")
    if kind is PromoKind.FREE_DAYS and not 1 <= promo.value <= MAX_DURATION_DAYS:
        raise bad("value", f"free days must be between 1 and {MAX_DURATION_DAYS}")
    if promo.currency is not None and not isinstance(promo.currency, Currency):
        raise bad("currency", "must be a Currency")
    if promo.cap_minor is not None:
        if kind is not PromoKind.PERCENT:
            raise bad("cap_minor", "only a percent discount has a cap")
        if not _is_count(promo.cap_minor) or not 1 <= promo.cap_minor <= MAX_AMOUNT_MINOR:
            raise bad("cap_minor", "must be positive minor units")
        if promo.currency is None:
            raise bad("currency", "a cap needs a currency")
    if promo.max_uses is not None and (not _is_count(promo.max_uses) or promo.max_uses < 1):
        raise bad("max_uses", "must be at least 1, or unset for unlimited")
    if not _is_count(promo.uses_so_far) or promo.uses_so_far < 0:
        raise bad("uses_so_far", "must be a count >= 0")
    if promo.per_user_limit is not None and (not _is_count(promo.per_user_limit) or promo.per_user_limit < 1):
        raise bad("per_user_limit", "must be at least 1, or unset for unlimited")
    if promo.expires_at is not None and (
        not isinstance(promo.expires_at, dt.datetime) or promo.expires_at.utcoffset() is None
    ):
        raise bad("expires_at", "must be a timezone-aware datetime")
    if not isinstance(promo.new_users_only, bool):
        raise bad("new_users_only", "must be true or false")
    if promo.applies_to is not None:
        if not promo.applies_to:
            raise bad("applies_to", "must name at least one plan, or be unset for every plan")
        for code in promo.applies_to:
            if not isinstance(code, str) or not PLAN_CODE_PATTERN.fullmatch(code):
                raise InvalidPromoDefinition("applies_to", code, "not a plan code")
        if promo.purpose is PromoPurpose.TOPUP:
            raise bad("applies_to", "a top-up code cannot be limited to plans")
    if promo.purpose is PromoPurpose.TOPUP and kind is not PromoKind.BALANCE_BONUS:
        raise bad("purpose", f"a {kind.value} code cannot apply to top-ups (only balance_bonus can)")


def validate_promo_definition(
    promo: PromoCode,
    *,
    now: dt.datetime,
    known_plans: Collection[str] | None = None,
) -> PromoCode:
    """Check a code an admin is creating; return it unchanged or raise :class:`InvalidPromoDefinition`.

    On top of the structural checks every :class:`PromoCode` passes at construction (percent in
    1..100, a fixed amount > 0 with a currency, a cap only on percent codes, ...), a *new* code
    must not be expired already, must be unused, and may only name plans that exist.
    """
    require_aware("now", now)
    _check_structure(promo)
    if promo.expires_at is not None and promo.expires_at <= now:
        raise InvalidPromoDefinition("expires_at", promo.expires_at.isoformat(), "already in the past")
    if promo.uses_so_far != 0:
        raise InvalidPromoDefinition("uses_so_far", promo.uses_so_far, "a new code starts unused")
    if known_plans is not None and promo.applies_to is not None:
        for code in sorted(promo.applies_to):
            if code not in known_plans:
                raise InvalidPromoDefinition("applies_to", code, "no such plan")
    return promo


def check_promo(promo: PromoCode, *, user_uses: int, user_is_new: bool, now: dt.datetime) -> None:
    """Raise if this user may not use ``promo`` at ``now`` at all, whatever they buy.

    Order: :class:`PromoExpired`, :class:`PromoExhausted`, :class:`PromoNewUsersOnly`,
    :class:`PromoPerUserLimit`. Used on its own when a user enters a code before choosing what
    to buy; the quote functions run the same checks with the applicability ones in between.
    """
    _check_live(promo, now)
    _check_user(promo, user_uses=user_uses, user_is_new=user_is_new)


def _check_live(promo: PromoCode, now: dt.datetime) -> None:
    require_aware("now", now)
    if promo.expires_at is not None and now >= promo.expires_at:
        raise PromoExpired(promo.code, promo.expires_at.isoformat())
    if promo.max_uses is not None and promo.uses_so_far >= promo.max_uses:
        raise PromoExhausted(promo.code)


def _check_user(promo: PromoCode, *, user_uses: int, user_is_new: bool) -> None:
    if not _is_count(user_uses) or user_uses < 0:
        raise ValueError(f"user_uses must be a count >= 0, got {user_uses!r}")
    if promo.new_users_only and not user_is_new:
        raise PromoNewUsersOnly(promo.code)
    if promo.per_user_limit is not None and user_uses >= promo.per_user_limit:
        raise PromoPerUserLimit(promo.code, promo.per_user_limit)


def _check_applicable(
    promo: PromoCode, *, purpose: PromoPurpose, plan_code: str | None, currency: Currency
) -> None:
    if promo.purpose not in (PromoPurpose.ANY, purpose):
        raise PromoNotApplicable(promo.code, "purpose")
    if purpose is PromoPurpose.TOPUP and promo.kind is not PromoKind.BALANCE_BONUS:
        raise PromoNotApplicable(promo.code, "kind")
    if promo.applies_to is not None and plan_code not in promo.applies_to:
        raise PromoNotApplicable(promo.code, "plan")
    if promo.currency is not None and promo.currency != currency:
        raise PromoNotApplicable(promo.code, "currency")


def _check_all(
    promo: PromoCode,
    *,
    purpose: PromoPurpose,
    plan_code: str | None,
    currency: Currency,
    user_uses: int,
    user_is_new: bool,
    now: dt.datetime,
) -> None:
    _check_live(promo, now)
    _check_applicable(promo, purpose=purpose, plan_code=plan_code, currency=currency)
    _check_user(promo, user_uses=user_uses, user_is_new=user_is_new)


@dataclass(frozen=True)
class Quote:
    """The price of one plan purchase, decided before any money moves.

    ``total_minor = base_minor - discount_minor`` and ``0 <= total_minor <= base_minor`` always
    (checked at construction). A total of 0 (a 100% code) still grants the plan: the storage layer
    applies it without an invoice. The user gets ``days`` = ``duration_days + bonus_days`` and
    ``balance_bonus_minor`` on their balance. ``promo_code`` is the code to redeem, or None.
    """

    plan_code: str
    currency: Currency
    base_minor: int
    discount_minor: int
    total_minor: int
    duration_days: int
    bonus_days: int = 0
    balance_bonus_minor: int = 0
    promo_code: str | None = None

    def __post_init__(self) -> None:
        if (
            not 0 <= self.discount_minor <= self.base_minor
            or self.total_minor != self.base_minor - self.discount_minor
        ):
            raise ValueError(f"inconsistent quote: {self!r}")
        if self.bonus_days < 0 or self.balance_bonus_minor < 0 or self.duration_days < 1:
            raise ValueError(f"inconsistent quote: {self!r}")

    @property
    def days(self) -> int:
        """Days of access granted: the plan's duration plus any free days."""
        return self.duration_days + self.bonus_days

    @property
    def is_free(self) -> bool:
        """True when nothing is to be paid (the plan is granted without an invoice)."""
        return self.total_minor == 0


@dataclass(frozen=True)
class TopupQuote:
    """A balance top-up: the user pays ``amount_minor`` and is credited ``credit_minor``."""

    currency: Currency
    amount_minor: int
    bonus_minor: int = 0
    promo_code: str | None = None

    def __post_init__(self) -> None:
        if self.amount_minor < 1 or self.bonus_minor < 0:
            raise ValueError(f"inconsistent top-up quote: {self!r}")

    @property
    def total_minor(self) -> int:
        """What the user pays (the whole amount: a promo never discounts a top-up)."""
        return self.amount_minor

    @property
    def credit_minor(self) -> int:
        """What lands on the balance: the amount plus the bonus."""
        return self.amount_minor + self.bonus_minor


def quote_plan(
    plan: Plan,
    currency: Currency,
    promo: PromoCode | None,
    *,
    user_uses: int,
    user_is_new: bool,
    now: dt.datetime,
) -> Quote:
    """Price ``plan`` in ``currency`` with an optional promo code for this user at ``now``.

    Raises :class:`PlanNotForSale`, :class:`UnsupportedCurrency` (no price in that currency), or
    the promo's :class:`PromoError` (see the module docstring for the order). A percent discount
    is ``base - percent_of(base, 100% - p)`` (ties favour the customer, see
    :func:`percent_of`) and then capped at ``cap_minor``; a fixed discount is at most the base.
    """
    require_aware("now", now)
    if not plan.for_sale:
        raise PlanNotForSale(plan.code)
    base = plan.price(currency)
    if promo is None:
        return Quote(plan.code, currency, base, 0, base, plan.duration_days)
    _check_all(
        promo,
        purpose=PromoPurpose.PLAN,
        plan_code=plan.code,
        currency=currency,
        user_uses=user_uses,
        user_is_new=user_is_new,
        now=now,
    )
    discount = bonus_days = balance_bonus = 0
    if promo.kind is PromoKind.PERCENT:
        discount = base - percent_of(base, 10_000 - promo.value * 100)
        if promo.cap_minor is not None:
            discount = min(discount, promo.cap_minor)
    elif promo.kind is PromoKind.FIXED:
        discount = min(promo.value, base)
    elif promo.kind is PromoKind.FREE_DAYS:
        bonus_days = promo.value
    else:
        balance_bonus = promo.value
    return Quote(
        plan_code=plan.code,
        currency=currency,
        base_minor=base,
        discount_minor=discount,
        total_minor=base - discount,
        duration_days=plan.duration_days,
        bonus_days=bonus_days,
        balance_bonus_minor=balance_bonus,
        promo_code=promo.code,
    )


def quote_topup(
    amount_minor: int,
    currency: Currency,
    promo: PromoCode | None,
    *,
    user_uses: int,
    user_is_new: bool,
    now: dt.datetime,
    min_minor: int = 1,
    max_minor: int = MAX_AMOUNT_MINOR,
) -> TopupQuote:
    """Quote a top-up of ``amount_minor`` with an optional ``BALANCE_BONUS`` code.

    Raises :class:`InvalidAmount` (negative, zero, below ``min_minor``, above the configured
    ``max_minor``) before looking at the promo, then the promo's :class:`PromoError`.
    """
    require_aware("now", now)
    check_amount(amount_minor, currency, min_minor=min_minor, max_minor=max_minor)
    if promo is None:
        return TopupQuote(currency, amount_minor)
    _check_all(
        promo,
        purpose=PromoPurpose.TOPUP,
        plan_code=None,
        currency=currency,
        user_uses=user_uses,
        user_is_new=user_is_new,
        now=now,
    )
    return TopupQuote(currency, amount_minor, bonus_minor=promo.value, promo_code=promo.code)


@dataclass(frozen=True)
class PromoSession:
    """A code a user entered and has not used yet, remembered for ``ttl`` (the predecessor's TTL session).

    Stored by the caller (database or per-user state); this only decides whether it is still live,
    so an abandoned code cannot be applied hours later.
    """

    code: str
    entered_at: dt.datetime
    ttl: dt.timedelta = dt.timedelta(minutes=30)

    def __post_init__(self) -> None:
        object.__setattr__(self, "code", normalise_code(self.code))
        require_aware("entered_at", self.entered_at)
        if self.ttl <= dt.timedelta(0):
            raise ValueError(f"ttl must be positive, got {self.ttl}")

    @property
    def expires_at(self) -> dt.datetime:
        """The instant the session stops being live."""
        return self.entered_at + self.ttl

    def is_live(self, now: dt.datetime) -> bool:
        """True while ``now`` is before :attr:`expires_at`."""
        require_aware("now", now)
        return now < self.expires_at
