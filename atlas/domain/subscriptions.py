"""Subscription time: extending, trials, converting a trial to paid, and expiring.

One subscription per user (contract 7). It is a *trial* or *paid*, *active* or *expired*, with one
``expires_at``. Every path that changes it (payment, renewal, trial start, trial expiry, expiry)
locks the row, reads it, asks a function here what the new state is, and writes that. Because
the decision is made on the locked row, the predecessor's races cannot happen: a trial that was
converted to paid a moment ago is no longer a trial when the trial worker looks at it, so
"trial expiry revokes a paid key" is ruled out by :func:`trial_expiry_allowed`.

Time only moves forward: :func:`extend` starts from ``max(expires_at, now)``, so paying never
shortens access and paying late never buys days in the past.

Converting a trial to paid keeps what is left of the trial and adds the paid days on top. The
alternative (paid days start now, the trial's remainder is dropped) was rejected: a user who pays
early in the trial would get less than one who waits for it to run out, which punishes exactly the
behaviour we want. The remainder is bounded by the trial length, so the gift is small and known.
"""

from __future__ import annotations

import datetime as dt
import enum
from dataclasses import dataclass

from atlas.domain._checks import require_aware, require_int
from atlas.domain.errors import TrialAlreadyUsed, TrialNotAllowed

#: Same bound as a plan's duration: more is a bug, and ``datetime`` overflows near year 9999.
MAX_EXTEND_DAYS = 3660 * 10


class SubscriptionKind(enum.StrEnum):
    """Trial or paid; the string values are what the database stores."""

    TRIAL = "trial"
    PAID = "paid"


class SubscriptionStatus(enum.StrEnum):
    """Active (the key is wanted on the nodes) or expired (the key is to be revoked)."""

    ACTIVE = "active"
    EXPIRED = "expired"


class ExpiryAction(enum.StrEnum):
    """What the expiry worker does with one locked subscription row."""

    KEEP = "keep"  # active and not yet due
    EXPIRE = "expire"  # set status expired and ask for key revocation, in one transaction
    SKIP = "skip"  # nothing to do: already expired, or not the kind this worker may touch


@dataclass(frozen=True)
class SubscriptionState:
    """The decision-relevant part of a subscription row."""

    kind: SubscriptionKind
    status: SubscriptionStatus
    expires_at: dt.datetime

    def __post_init__(self) -> None:
        object.__setattr__(self, "kind", SubscriptionKind(self.kind))
        object.__setattr__(self, "status", SubscriptionStatus(self.status))
        require_aware("expires_at", self.expires_at)

    def is_active_at(self, now: dt.datetime) -> bool:
        """True when access is current: status active and ``expires_at`` after ``now``.

        An active row past its expiry (the expiry worker has not got to it yet) is not active.
        """
        require_aware("now", now)
        return self.status is SubscriptionStatus.ACTIVE and self.expires_at > now

    def has_paid_time_at(self, now: dt.datetime) -> bool:
        """True when this is a paid subscription that is active at ``now``."""
        return self.kind is SubscriptionKind.PAID and self.is_active_at(now)


def extend(expires_at: dt.datetime | None, now: dt.datetime, days: int) -> dt.datetime:
    """Return the expiry after adding ``days``: ``max(expires_at, now) + days``.

    ``expires_at=None`` (no subscription yet) starts from ``now``. Monotonic: the result is never
    before ``expires_at`` nor before ``now``. ``days`` must be 1..``MAX_EXTEND_DAYS``
    (``ValueError``: a zero or negative duration is a caller's bug, never a user's).
    """
    require_aware("now", now)
    days = require_int("days", days)
    if not 1 <= days <= MAX_EXTEND_DAYS:
        raise ValueError(f"days must be in 1..{MAX_EXTEND_DAYS}, got {days}")
    start = now
    if expires_at is not None:
        require_aware("expires_at", expires_at)
        start = max(expires_at, now)
    return start + dt.timedelta(days=days)


def convert_trial_to_paid(expiry: dt.datetime, now: dt.datetime, days: int) -> dt.datetime:
    """Expiry of a trial converted in place to paid: the paid ``days`` go on top of what remains.

    Equal to ``extend(expiry, now, days)``; a separate name so the choice (documented in the
    module docstring) is visible where it is made. An already-ended trial starts from ``now``.
    """
    return extend(expiry, now, days)


def trial_eligibility(*, ever_had_trial: bool, has_active_paid: bool) -> None:
    """Raise unless the user may start a trial now.

    :class:`TrialAlreadyUsed` if they ever had one (checked first: it is the permanent reason);
    :class:`TrialNotAllowed` (``reason="has_paid"``) if they have paid time right now.
    """
    if ever_had_trial:
        raise TrialAlreadyUsed()
    if has_active_paid:
        raise TrialNotAllowed("has_paid")


def grant_trial(
    current: SubscriptionState | None,
    *,
    ever_had_trial: bool,
    now: dt.datetime,
    duration: dt.timedelta,
) -> SubscriptionState:
    """The state after starting a trial of ``duration``; raises as :func:`trial_eligibility`.

    An expired row (a lapsed former subscriber who never had a trial) becomes the trial in place.
    """
    require_aware("now", now)
    if duration <= dt.timedelta(0):
        raise ValueError(f"trial duration must be positive, got {duration}")
    has_paid = current is not None and current.has_paid_time_at(now)
    trial_eligibility(ever_had_trial=ever_had_trial, has_active_paid=has_paid)
    return SubscriptionState(SubscriptionKind.TRIAL, SubscriptionStatus.ACTIVE, now + duration)


def grant_paid(current: SubscriptionState | None, *, now: dt.datetime, days: int) -> SubscriptionState:
    """The state after ``days`` of paid time are granted (a purchase or a renewal).

    No subscription: paid from ``now``. Active trial: converted in place
    (:func:`convert_trial_to_paid`). Active paid: extended (:func:`extend`). Expired (any kind):
    reactivated as paid from ``now`` (time spent expired is not credited back, even if an
    expired row's ``expires_at`` lies in the future, e.g. after an admin revoked it).
    """
    require_aware("now", now)
    if current is None or current.status is SubscriptionStatus.EXPIRED:
        expires = extend(None, now, days)
    elif current.kind is SubscriptionKind.TRIAL:
        expires = convert_trial_to_paid(current.expires_at, now, days)
    else:
        expires = extend(current.expires_at, now, days)
    return SubscriptionState(SubscriptionKind.PAID, SubscriptionStatus.ACTIVE, expires)


def expiry_decision(
    kind: SubscriptionKind,
    status: SubscriptionStatus,
    expires_at: dt.datetime,
    now: dt.datetime,
    *,
    only_kind: SubscriptionKind | None = None,
) -> ExpiryAction:
    """Decide what to do with a (locked) subscription at ``now``.

    ``SKIP`` when already expired, or when ``only_kind`` is given and the row is of another kind
    (the trial worker passes ``only_kind=TRIAL``); ``EXPIRE`` when ``expires_at <= now``;
    ``KEEP`` otherwise.
    """
    require_aware("now", now)
    require_aware("expires_at", expires_at)
    kind, status = SubscriptionKind(kind), SubscriptionStatus(status)
    if status is SubscriptionStatus.EXPIRED:
        return ExpiryAction.SKIP
    if only_kind is not None and kind is not only_kind:
        return ExpiryAction.SKIP
    return ExpiryAction.EXPIRE if expires_at <= now else ExpiryAction.KEEP


def trial_expiry_allowed(
    kind: SubscriptionKind,
    status: SubscriptionStatus,
    expires_at: dt.datetime,
    now: dt.datetime,
) -> bool:
    """The rule "trial expiry never touches a paid subscription", for the trial worker.

    The storage layer calls it on the row it has just locked (not on the batch it selected
    earlier, which may be stale: the predecessor's TOCTOU). True only for an active trial whose
    time is up; a trial converted to paid meanwhile gives False, so its key is never revoked.
    """
    decision = expiry_decision(kind, status, expires_at, now, only_kind=SubscriptionKind.TRIAL)
    return decision is ExpiryAction.EXPIRE
