"""The frozen values units of work return. asyncpg records never leave :mod:`atlas.storage`.

Money is ``int`` minor units, times are timezone-aware UTC ``datetime``s, currencies are ISO codes
(``"RUB"``, ``"XTR"`` for Telegram Stars).
"""

from __future__ import annotations

import datetime as dt
import enum
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal

from atlas.domain import SubscriptionKind, SubscriptionStatus


@dataclass(frozen=True, slots=True)
class UserView:
    """A user as the bot sees them."""

    id: int
    username: str | None
    first_name: str | None
    language: str
    referral_code: str
    referrer_id: int | None
    balance_minor: int
    trial_used_at: dt.datetime | None
    first_paid_at: dt.datetime | None
    banned_at: dt.datetime | None
    bot_blocked_at: dt.datetime | None
    created_at: dt.datetime

    @property
    def banned(self) -> bool:
        """True when an admin banned this user."""
        return self.banned_at is not None


@dataclass(frozen=True, slots=True)
class Registration:
    """The result of ``/start``: the user, and whether this call created them."""

    user: UserView
    created: bool


@dataclass(frozen=True, slots=True)
class SubscriptionView:
    """A user's one subscription at ``now``: what the bot shows and what ``/sub/<token>`` serves.

    ``is_active`` is ``status == active and expires_at > now``; ``days_left`` rounds up (half a day
    left shows as 1) and is 0 when not active. ``key_uuid`` is the key wanted on the nodes, or None
    (expired, banned).
    """

    subscription_id: int
    user_id: int
    kind: SubscriptionKind
    status: SubscriptionStatus
    plan_code: str | None
    starts_at: dt.datetime
    expires_at: dt.datetime
    auto_renew: bool
    last_auto_renewal_at: dt.datetime | None
    token: str
    key_uuid: uuid.UUID | None
    is_active: bool
    remaining: dt.timedelta
    days_left: int


@dataclass(frozen=True, slots=True)
class PlanSync:
    """What :func:`sync_plans` did: plans written from the file, plans taken off sale."""

    upserted: int
    retired: int


@dataclass(frozen=True, slots=True)
class LedgerEntry:
    """One balance change (positive credit, negative debit)."""

    id: int
    user_id: int
    amount_minor: int
    kind: str
    reference: str
    created_at: dt.datetime


@dataclass(frozen=True, slots=True)
class PaymentIntent:
    """A pending payment: what to put on the invoice and what applying it will do.

    ``payload`` (unguessable) travels in the invoice and finds the payment again. ``amount_minor`` in
    ``currency`` is what the user pays; ``credit_minor`` lands on the balance (a top-up's amount plus
    its bonus, or a plan promo's balance bonus); ``days`` of access for a plan (its duration plus
    ``bonus_days``).
    """

    payment_id: int
    user_id: int
    provider: str
    purpose: str
    payload: str
    amount_minor: int
    currency: str
    credit_minor: int
    bonus_days: int
    days: int
    plan_code: str | None
    promo_code: str | None
    expires_at: dt.datetime


class ApplyOutcome(enum.StrEnum):
    """What :func:`apply_payment` did."""

    APPLIED = "applied"  # this call applied it: every effect happened now
    ALREADY_APPLIED = "already_applied"  # an earlier call did (a replayed webhook, the watcher)
    FLAGGED = "flagged"  # amount/currency differ, or a second charge: nothing applied, an admin looks
    UNKNOWN = "unknown"  # no such payment: nothing changed


@dataclass(frozen=True, slots=True)
class PaymentResult:
    """The outcome of one :func:`apply_payment` call."""

    outcome: ApplyOutcome
    payment_id: int | None = None
    user_id: int | None = None
    purpose: str | None = None
    reason: str | None = None
    credited_minor: int = 0
    expires_at: dt.datetime | None = None
    referral_reward_minor: int = 0


@dataclass(frozen=True, slots=True, kw_only=True)
class PaidDetails:
    """What a provider says was actually paid (Crypto Pay's ``paid_*`` and ``fee_*`` fields).

    Stored with the payment, applied or flagged. Amounts and rates are exact :class:`Decimal`, never
    float; any field may be unknown (None).
    """

    asset: str | None = None
    amount: Decimal | None = None
    fiat_rate: Decimal | None = None
    usd_rate: Decimal | None = None
    fee_asset: str | None = None
    fee_amount: Decimal | None = None

    def columns(self) -> tuple[object, ...]:
        """The values of the ``payments.paid_*``/``fee_*`` columns, in migration 0007's order."""
        for name in ("amount", "fiat_rate", "usd_rate", "fee_amount"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, Decimal) or not value.is_finite() or value < 0):
                raise ValueError(f"PaidDetails.{name} must be a finite, non-negative Decimal, got {value!r}")
        return (
            _asset(self.asset),
            self.amount,
            self.fiat_rate,
            self.usd_rate,
            _asset(self.fee_asset),
            self.fee_amount,
        )


def _asset(code: str | None) -> str | None:
    # An asset code we cannot store (the column's CHECK) is dropped rather than failing the payment.
    if code is None or not (2 <= len(code) <= 10 and code.isascii() and code.isalnum() and code.isupper()):
        return None
    return code


NOTHING_PAID_KNOWN = PaidDetails()


@dataclass(frozen=True, slots=True)
class PendingPayment:
    """A pending payment for the watcher to ask its provider about."""

    payment_id: int
    user_id: int
    provider: str
    external_id: str | None
    payload: str
    created_at: dt.datetime
    expires_at: dt.datetime


@dataclass(frozen=True, slots=True)
class PurchaseResult:
    """A plan bought from the balance. ``already_done``: this idempotency key was used before and
    nothing happened now (the figures then describe the current state)."""

    user_id: int
    plan_code: str
    charged_minor: int
    currency: str
    days: int
    expires_at: dt.datetime
    balance_minor: int
    promo_code: str | None
    already_done: bool = False


@dataclass(frozen=True, slots=True)
class RenewalCounts:
    """One claim-and-renew batch: rows claimed and what happened to them."""

    claimed: int = 0
    renewed: int = 0
    insufficient: int = 0  # notice written (or already written this period)
    not_due: int = 0  # decided "not now" (already renewed, awaiting funds, too early)
    unpriced: int = 0  # the plan is gone from the catalogue or has no price in the currency
    charged_minor: int = 0


@dataclass(frozen=True, slots=True)
class ExpiryCounts:
    """One expiry batch."""

    claimed: int = 0
    expired: int = 0


@dataclass(frozen=True, slots=True)
class ReminderBatch:
    """One reminder batch; ``next_after_id`` is the keyset cursor, None when the walk is done."""

    examined: int
    enqueued: int
    next_after_id: int | None


@dataclass(frozen=True, slots=True)
class KeyReissue:
    """The key swap: ``old_uuid`` is now wanted absent, ``new_uuid`` present."""

    subscription_id: int
    old_uuid: uuid.UUID | None
    new_uuid: uuid.UUID


@dataclass(frozen=True, slots=True)
class BalanceChange:
    """An admin balance adjustment; ``applied`` is False when the idempotency key was used before."""

    user_id: int
    balance_minor: int
    applied: bool


@dataclass(frozen=True, slots=True)
class AccessChange:
    """An admin grant/removal of days: the subscription afterwards."""

    user_id: int
    subscription_id: int
    status: SubscriptionStatus
    expires_at: dt.datetime


@dataclass(frozen=True, slots=True)
class RefundResult:
    """What a refund reversed. The provider-side refund (Stars ``refundStarPayment``, a crypto
    transfer) is for the caller to do after the commit, with ``provider`` and ``external_id``."""

    payment_id: int
    user_id: int
    provider: str
    external_id: str | None
    amount_minor: int
    currency: str
    debited_minor: int
    days_removed: int
    referral_reversed: bool
    referral_kept_minor: int
    expires_at: dt.datetime | None


@dataclass(frozen=True, slots=True)
class ReferralStats:
    """A referrer's numbers: who came through their link, who paid, what they earned."""

    invited: int
    invited_paid: int
    rewards_count: int
    rewards_minor: int


@dataclass(frozen=True, slots=True)
class Stats:
    """Deployment numbers at ``now``; ``new_users`` and ``revenue`` cover ``[now - period, now)``.

    ``revenue`` maps currency to the sum of applied (not refunded) payments in the period.
    """

    users: int
    new_users: int
    active: int
    trial: int
    paid: int
    banned: int
    revenue: Mapping[str, int] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class AuditEntry:
    """One admin action as recorded."""

    id: int
    admin_id: int
    action: str
    target_user_id: int | None
    details: Mapping[str, object]
    reason: str
    created_at: dt.datetime
