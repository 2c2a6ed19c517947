"""Auto-renewal from balance: the decision for one locked subscription at one instant.

The ``renewal`` actor claims due rows (``FOR UPDATE SKIP LOCKED``), calls :func:`decide_renewal`
on each locked row and then, in the same transaction, does exactly what the decision says:

* :class:`Renew`: debit ``amount_minor`` (ledger key :attr:`Renew.charge_key`), set
  ``expires_at = new_expires_at`` and ``last_auto_renewal_at = now``;
* :class:`InsufficientFunds`: write one outbox message with dedupe key ``notice_key``;
* :class:`NotDue`: nothing.

Two guards against charging twice for one period:

1. the ledger key :attr:`Renew.charge_key` is derived from the expiry being renewed, so the same
   period cannot be charged twice, whatever happens (a crash, a stale read, a buggy caller);
2. the predecessor's ``last_auto_renewal_at``: at most one renewal per *renewal period*,
   ``min(renew_window, plan length)`` after the last one. Without it, a subscription that is
   still inside the window after a renewal (a 1-day plan with a 3-day window, or one renewed
   after it had already run out) would be renewed again on the very next tick, a burst of
   charges that looks like a double charge to the user.

The guard is a *time since the last renewal*, not a comparison with ``expires_at`` such as the
predecessor's ``last_auto_renewal_at < expires_at - window``: that one never clears for plans
shorter than the window (it depends only on values that only a renewal changes) and so stops
renewing them for good. Bounding the spacing by the plan length keeps a short plan renewed
before it runs out.

One shortfall notice per period: ``notice_key`` is derived from the expiry only, so every tick of
the same period produces the same key and the outbox's unique dedupe key drops the repeats; after
a renewal (new expiry) a new period gets a new key. ``notice_period`` says how long before expiry
the user is told (it may be longer than ``renew_window``: "top up, your renewal in 3 days will
fail" is more useful than the same news one hour before).
"""

from __future__ import annotations

import datetime as dt
import enum
from dataclasses import dataclass

from atlas.domain._checks import require_aware, require_int, utc_stamp
from atlas.domain.subscriptions import extend


class NotDueReason(enum.StrEnum):
    """Why nothing happens now."""

    AUTO_RENEW_OFF = "auto_renew_off"
    TOO_EARLY = "too_early"  # outside both the renew window and the notice period
    ALREADY_RENEWED = "already_renewed"  # the last renewal is less than one renewal period ago
    AWAITING_FUNDS = "awaiting_funds"  # in the window, short of money, not yet time to say so


@dataclass(frozen=True)
class Renew:
    """Charge ``amount_minor`` and move the expiry to ``new_expires_at``.

    ``charge_key`` is the ledger idempotency key for the debit: one per (subscription, expiry).
    """

    amount_minor: int
    new_expires_at: dt.datetime
    charge_key: str


@dataclass(frozen=True)
class InsufficientFunds:
    """The balance does not cover the price; tell the user once (dedupe on ``notice_key``)."""

    notice_key: str
    shortfall_minor: int


@dataclass(frozen=True)
class NotDue:
    """Nothing to do now."""

    reason: NotDueReason


RenewalDecision = Renew | InsufficientFunds | NotDue


def _key(prefix: str, expires_at: dt.datetime, subscription_id: int | None) -> str:
    stamp = utc_stamp(expires_at)
    return f"{prefix}:{stamp}" if subscription_id is None else f"{prefix}:{subscription_id}:{stamp}"


def renewal_notice_key(expires_at: dt.datetime, subscription_id: int | None = None) -> str:
    """``renewal-insufficient:[<subscription_id>:]YYYYmmddHHMM`` of the expiry in UTC.

    Pass ``subscription_id`` when the outbox dedupe key is unique across all users (without it,
    two users whose subscriptions expire in the same minute would share a key).
    """
    return _key("renewal-insufficient", expires_at, subscription_id)


def renewal_charge_key(expires_at: dt.datetime, subscription_id: int | None = None) -> str:
    """``renewal:[<subscription_id>:]YYYYmmddHHMM``: the ledger key of the debit renewing this expiry."""
    return _key("renewal", expires_at, subscription_id)


def decide_renewal(
    *,
    auto_renew: bool,
    expires_at: dt.datetime,
    now: dt.datetime,
    renew_window: dt.timedelta,
    balance_minor: int,
    price_minor: int,
    plan_days: int,
    last_auto_renewal_at: dt.datetime | None,
    notice_period: dt.timedelta,
    subscription_id: int | None = None,
) -> RenewalDecision:
    """Decide what auto-renewal does for one subscription at ``now``; pure, changes nothing.

    Order: auto-renew off → :class:`NotDue`; renewed less than ``min(renew_window, plan_days)``
    ago → ``NotDue(ALREADY_RENEWED)``; within ``renew_window`` of expiry (or past it) with enough
    balance → :class:`Renew` (``new_expires_at = extend(expires_at, now, plan_days)``); within
    ``notice_period`` of expiry without enough balance → :class:`InsufficientFunds`; otherwise
    ``NotDue`` with the reason. Call it on the locked row: on a stale copy the guards see stale
    values.
    """
    require_aware("expires_at", expires_at)
    require_aware("now", now)
    balance = require_int("balance_minor", balance_minor)
    price = require_int("price_minor", price_minor)
    if balance < 0 or price < 1:
        raise ValueError(f"need balance_minor >= 0 and price_minor >= 1, got {balance}, {price}")
    if renew_window <= dt.timedelta(0) or notice_period < dt.timedelta(0):
        raise ValueError(f"need renew_window > 0 and notice_period >= 0, got {renew_window}, {notice_period}")
    if not auto_renew:
        return NotDue(NotDueReason.AUTO_RENEW_OFF)
    days = require_int("plan_days", plan_days)
    if days < 1:
        raise ValueError(f"plan_days must be >= 1, got {days}")
    if last_auto_renewal_at is not None:
        require_aware("last_auto_renewal_at", last_auto_renewal_at)
        # A last renewal in the future (clock skew between processes) also blocks: the safe side.
        if now - last_auto_renewal_at < min(renew_window, dt.timedelta(days=days)):
            return NotDue(NotDueReason.ALREADY_RENEWED)
    remaining = expires_at - now
    if balance >= price:
        if remaining <= renew_window:
            return Renew(
                amount_minor=price,
                new_expires_at=extend(expires_at, now, days),
                charge_key=renewal_charge_key(expires_at, subscription_id),
            )
        return NotDue(NotDueReason.TOO_EARLY)
    if remaining <= notice_period:
        return InsufficientFunds(
            renewal_notice_key(expires_at, subscription_id), shortfall_minor=price - balance
        )
    return NotDue(NotDueReason.AWAITING_FUNDS if remaining <= renew_window else NotDueReason.TOO_EARLY)
