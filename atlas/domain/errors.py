"""Errors of the domain rules, named by cause.

Two trees, because two different people cause them.

``DomainError`` is what a *user* (or an admin acting through the bot) caused: a code that has
expired, a balance that is too low. Each carries a stable machine ``code`` (the i18n key the bot
uses to explain it, e.g. ``"promo.expired"``) and ``params`` for that message's placeholders, so
the bot never shows ``str(exc)`` to a user and the translation never parses English::

    DomainError                         code               params
    ├── PlanError
    │   ├── UnknownPlan                 plan.unknown       plan
    │   └── PlanNotForSale              plan.not_for_sale  plan
    ├── MoneyError
    │   ├── InvalidAmount               amount.invalid     amount, reason [, limit]
    │   ├── UnsupportedCurrency         currency.unsupported   currency
    │   └── InsufficientBalance         balance.insufficient   balance, required, shortfall
    ├── PromoError
    │   ├── PromoNotFound               promo.not_found    promo
    │   │   └── MalformedPromoCode      promo.malformed    promo, reason
    │   ├── PromoExpired                promo.expired      promo, expired_at
    │   ├── PromoExhausted              promo.exhausted    promo
    │   ├── PromoPerUserLimit           promo.per_user_limit   promo, limit
    │   ├── PromoNewUsersOnly           promo.new_users_only   promo
    │   ├── PromoNotApplicable          promo.not_applicable   promo, reason
    │   └── InvalidPromoDefinition      promo.invalid_definition   field, value, reason
    ├── ReferralError
    │   ├── SelfReferral                referral.self
    │   └── ReferralAlreadySet          referral.already_set
    └── TrialError
        ├── TrialAlreadyUsed            trial.already_used
        └── TrialNotAllowed             trial.not_allowed  reason

``reason`` params are machine words (``"negative"``, ``"plan"``, ...), never prose: a locale may
refine a message with the key ``f"{code}.{reason}"``.

``ConfigError`` is what the *operator* caused: a reviewed config file or a setting that does not
make sense. It is a ``ValueError`` raised at startup, names the field and the value, and is never
shown to a bot user::

    ValueError
    └── ConfigError                     field, value, reason
        └── PlanConfigError             (the plan catalogue TOML)

Programming errors (a naive datetime, a negative duration passed by code) raise plain
``ValueError``/``TypeError``: no user or operator caused them and nobody should catch them.
"""

from __future__ import annotations

from typing import ClassVar

#: What an error's message placeholders may hold.
ParamValue = str | int


class DomainError(Exception):
    """A rule refused a user's request. ``code`` is the stable i18n key, ``params`` its placeholders.

    Raising one never leaves anything half-done: domain functions decide, they do not change state.
    """

    code: ClassVar[str] = "domain.error"

    def __init__(self, detail: str, **params: ParamValue) -> None:
        self.params: dict[str, ParamValue] = dict(params)
        self.detail = detail
        super().__init__(f"{self.code}: {detail}")


# --- plans -----------------------------------------------------------------------------------------


class PlanError(DomainError):
    """Something is wrong with the plan the user asked for."""

    code = "plan.error"


class UnknownPlan(PlanError):
    """No plan with this code exists (a stale button, a forged callback)."""

    code = "plan.unknown"

    def __init__(self, plan: str) -> None:
        super().__init__(f"no plan with code {plan!r}", plan=plan)


class PlanNotForSale(PlanError):
    """The plan exists (old subscribers keep it) but can no longer be bought."""

    code = "plan.not_for_sale"

    def __init__(self, plan: str) -> None:
        super().__init__(f"plan {plan!r} is not for sale", plan=plan)


# --- money -----------------------------------------------------------------------------------------


class MoneyError(DomainError):
    """An amount or currency the rules cannot accept."""

    code = "money.error"


class InvalidAmount(MoneyError):
    """An amount that is malformed, negative, zero, too precise, or absurdly large.

    ``reason`` is one of ``not_a_string``, ``malformed``, ``too_precise``, ``negative``, ``zero``,
    ``too_small``, ``too_large``; ``limit`` (formatted like ``amount``) accompanies the last two.
    """

    code = "amount.invalid"

    def __init__(self, amount: str, reason: str, *, limit: ParamValue | None = None) -> None:
        params: dict[str, ParamValue] = {"amount": amount, "reason": reason}
        if limit is not None:
            params["limit"] = limit
        super().__init__(f"amount {amount!r} rejected: {reason}", **params)
        self.reason = reason


class UnsupportedCurrency(MoneyError):
    """A malformed currency code, or one this plan/promo/deployment has no price in."""

    code = "currency.unsupported"

    def __init__(self, currency: str, detail: str = "") -> None:
        super().__init__(detail or f"currency {currency!r} is not supported here", currency=currency)


class InsufficientBalance(MoneyError):
    """The balance does not cover the amount. Params are ints in minor units; ``shortfall`` is what
    is missing. The bot formats them in the deployment currency."""

    code = "balance.insufficient"

    def __init__(self, balance: int, required: int) -> None:
        super().__init__(
            f"balance {balance} does not cover {required}",
            balance=balance,
            required=required,
            shortfall=required - balance,
        )


# --- promo codes -----------------------------------------------------------------------------------


class PromoError(DomainError):
    """A promo code cannot be used for this request."""

    code = "promo.error"


class PromoNotFound(PromoError):
    """No such code. Also what a user sees for garbage input, so the bot is no oracle."""

    code = "promo.not_found"

    def __init__(self, promo: str, detail: str = "") -> None:
        super().__init__(detail or f"no promo code {promo!r}", promo=promo)


class MalformedPromoCode(PromoNotFound):
    """The text cannot be a promo code at all (empty, too long, strange characters).

    ``reason``: ``empty``, ``too_long`` or ``bad_characters``. ``promo`` is a truncated, printable
    echo of the input, safe to show back.
    """

    code = "promo.malformed"

    def __init__(self, promo: str, reason: str) -> None:
        super().__init__(promo, f"not a promo code ({reason}): {promo!r}")
        self.params["reason"] = reason
        self.reason = reason


class PromoExpired(PromoError):
    """The code's ``expires_at`` is at or before ``now``."""

    code = "promo.expired"

    def __init__(self, promo: str, expired_at: str) -> None:
        super().__init__(f"promo code {promo!r} expired at {expired_at}", promo=promo, expired_at=expired_at)


class PromoExhausted(PromoError):
    """The code reached its global ``max_uses``."""

    code = "promo.exhausted"

    def __init__(self, promo: str) -> None:
        super().__init__(f"promo code {promo!r} has no uses left", promo=promo)


class PromoPerUserLimit(PromoError):
    """This user already used the code ``limit`` times."""

    code = "promo.per_user_limit"

    def __init__(self, promo: str, limit: int) -> None:
        super().__init__(f"promo code {promo!r} already used {limit} time(s)", promo=promo, limit=limit)


class PromoNewUsersOnly(PromoError):
    """The code is for new users (no payment yet) and this user is not one."""

    code = "promo.new_users_only"

    def __init__(self, promo: str) -> None:
        super().__init__(f"promo code {promo!r} is for new users only", promo=promo)


class PromoNotApplicable(PromoError):
    """The code is valid but not for this purchase.

    ``reason``: ``purpose`` (plan code used for a top-up or vice versa), ``kind`` (e.g. free days on
    a top-up), ``plan`` (not in ``applies_to``), ``currency`` (fixed amount in another currency).
    """

    code = "promo.not_applicable"

    def __init__(self, promo: str, reason: str) -> None:
        super().__init__(f"promo code {promo!r} does not apply here ({reason})", promo=promo, reason=reason)
        self.reason = reason


class InvalidPromoDefinition(PromoError):
    """An admin's new promo code does not make sense (percent 0, fixed amount without currency...)."""

    code = "promo.invalid_definition"

    def __init__(self, field: str, value: object, reason: str) -> None:
        shown = _show(value)
        super().__init__(f"{field}={shown}: {reason}", field=field, value=shown, reason=reason)
        self.field = field
        self.reason = reason


# --- referral --------------------------------------------------------------------------------------


class ReferralError(DomainError):
    """A referral link cannot be recorded."""

    code = "referral.error"


class SelfReferral(ReferralError):
    """A user followed their own referral link."""

    code = "referral.self"

    def __init__(self) -> None:
        super().__init__("a user cannot refer themselves")


class ReferralAlreadySet(ReferralError):
    """The user already has a referrer; the first one is kept for good."""

    code = "referral.already_set"

    def __init__(self) -> None:
        super().__init__("the user already has a referrer")


# --- trial -----------------------------------------------------------------------------------------


class TrialError(DomainError):
    """A trial cannot be started."""

    code = "trial.error"


class TrialAlreadyUsed(TrialError):
    """One trial per user, ever."""

    code = "trial.already_used"

    def __init__(self) -> None:
        super().__init__("the trial was already used")


class TrialNotAllowed(TrialError):
    """The user may not start a trial now; ``reason`` e.g. ``has_paid`` (already has paid time)."""

    code = "trial.not_allowed"

    def __init__(self, reason: str) -> None:
        super().__init__(f"trial not allowed: {reason}", reason=reason)
        self.reason = reason


# --- operator configuration ------------------------------------------------------------------------


class ConfigError(ValueError):
    """An operator's configuration is wrong: names the ``field`` (a path), the ``value`` and why."""

    def __init__(self, field: str, value: object, reason: str) -> None:
        self.field = field
        self.value = value
        self.reason = reason
        super().__init__(f"{field} = {_show(value)}: {reason}")


class PlanConfigError(ConfigError):
    """The plan catalogue (TOML) is malformed; ``field`` is a path like ``plans[2].duration_days``."""


def _show(value: object, limit: int = 80) -> str:
    """A bounded repr, so untrusted input never floods a log line or a message."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
