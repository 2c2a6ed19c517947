"""Expiry reminders: which one is due now, and the key that makes it go out once.

A schedule lists thresholds before expiry (paid: 3 days, 1 day, 6 hours; trial: 6 hours, 1 hour).
At ``now`` the due reminder is the *most urgent threshold already crossed*: with 20 hours left,
the "1 day" one. A worker that was down for two days therefore sends one reminder, the relevant
one, instead of a burst of stale ones.

The actor may ask on every tick: each reminder has a dedupe key per (subscription, expiry,
threshold), the outbox keeps the first row with a key and drops the rest, so a reminder goes out
once even across crashes and restarts (the predecessor set its ``*_sent`` flags *after* sending,
and double-sent after a crash). A renewal changes the expiry and so starts a fresh set of keys.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from atlas.domain._checks import require_aware, utc_stamp
from atlas.domain.errors import ConfigError
from atlas.domain.subscriptions import SubscriptionKind

_DAY = dt.timedelta(days=1)
_HOUR = dt.timedelta(hours=1)
_MINUTE = dt.timedelta(minutes=1)


def _normalise(field: str, thresholds: tuple[dt.timedelta, ...]) -> tuple[dt.timedelta, ...]:
    values = tuple(thresholds)
    for value in values:
        if not isinstance(value, dt.timedelta) or value <= dt.timedelta(0):
            raise ConfigError(field, value, "each threshold must be a positive timedelta")
        if value % _MINUTE:
            raise ConfigError(field, value, "thresholds are whole minutes")
    if len(set(values)) != len(values):
        raise ConfigError(field, values, "thresholds must be distinct")
    return tuple(sorted(values, reverse=True))


@dataclass(frozen=True)
class ReminderSchedule:
    """Thresholds before expiry, per subscription kind; stored longest first.

    Construction validates (positive, whole minutes, distinct) and raises :class:`ConfigError`
    naming ``reminders.paid`` or ``reminders.trial``. An empty tuple turns that kind's reminders off.
    """

    paid: tuple[dt.timedelta, ...] = (dt.timedelta(days=3), dt.timedelta(days=1), dt.timedelta(hours=6))
    trial: tuple[dt.timedelta, ...] = (dt.timedelta(hours=6), dt.timedelta(hours=1))

    def __post_init__(self) -> None:
        object.__setattr__(self, "paid", _normalise("reminders.paid", self.paid))
        object.__setattr__(self, "trial", _normalise("reminders.trial", self.trial))

    def thresholds(self, kind: SubscriptionKind) -> tuple[dt.timedelta, ...]:
        """The thresholds for ``kind``, longest first."""
        return self.paid if SubscriptionKind(kind) is SubscriptionKind.PAID else self.trial


DEFAULT_SCHEDULE = ReminderSchedule()


@dataclass(frozen=True)
class Reminder:
    """One reminder to enqueue: ``text_key`` is the locale key, ``dedupe_key`` the outbox key."""

    subscription_id: int
    kind: SubscriptionKind
    threshold: dt.timedelta
    expires_at: dt.datetime
    remaining: dt.timedelta
    dedupe_key: str
    text_key: str


def threshold_label(threshold: dt.timedelta) -> str:
    """A short stable name for a threshold: ``3d``, ``6h``, ``90m`` (largest whole unit)."""
    if threshold <= dt.timedelta(0) or threshold % _MINUTE:
        raise ValueError(f"threshold must be a positive whole number of minutes, got {threshold}")
    for unit, suffix in ((_DAY, "d"), (_HOUR, "h"), (_MINUTE, "m")):
        if not threshold % unit:
            return f"{threshold // unit}{suffix}"
    raise AssertionError("unreachable: whole minutes always divide")  # pragma: no cover


def reminder_key(subscription_id: int, expires_at: dt.datetime, threshold: dt.timedelta) -> str:
    """``reminder:<subscription_id>:<expiry as YYYYmmddHHMM UTC>:<label>``.

    Stable per (subscription, expiry, threshold): the outbox dedupe key of that reminder.
    """
    return f"reminder:{subscription_id}:{utc_stamp(expires_at)}:{threshold_label(threshold)}"


def due_reminder(
    *,
    subscription_id: int,
    kind: SubscriptionKind,
    expires_at: dt.datetime,
    now: dt.datetime,
    schedule: ReminderSchedule = DEFAULT_SCHEDULE,
    renewal_covered: bool = False,
) -> Reminder | None:
    """The reminder due at ``now`` for an *active* subscription, or None.

    Due: the smallest threshold ``t`` with ``0 < expires_at - now <= t``. None once expired (the
    expiry notice is the expiry worker's), before the first threshold, or for a paid
    subscription whose auto-renewal is covered by the balance (``renewal_covered``: telling
    that user their access ends would be false).
    """
    require_aware("now", now)
    require_aware("expires_at", expires_at)
    kind = SubscriptionKind(kind)
    if renewal_covered and kind is SubscriptionKind.PAID:
        return None
    remaining = expires_at - now
    if remaining <= dt.timedelta(0):
        return None
    crossed = [t for t in schedule.thresholds(kind) if remaining <= t]
    if not crossed:
        return None
    threshold = crossed[-1]  # thresholds are longest first: the last crossed is the most urgent
    return Reminder(
        subscription_id=subscription_id,
        kind=kind,
        threshold=threshold,
        expires_at=expires_at,
        remaining=remaining,
        dedupe_key=reminder_key(subscription_id, expires_at, threshold),
        text_key=f"reminder.{kind.value}.{threshold_label(threshold)}",
    )
