"""Expiry reminders: the most urgent crossed threshold is due, with a stable dedupe key."""

from __future__ import annotations

import datetime as dt

import pytest
from hypothesis import given
from hypothesis import strategies as st

from atlas.domain import (
    DEFAULT_SCHEDULE,
    ConfigError,
    ReminderSchedule,
    SubscriptionKind,
    due_reminder,
    reminder_key,
    threshold_label,
)

NOW = dt.datetime(2026, 3, 1, 12, 0, tzinfo=dt.UTC)
HOUR, DAY = dt.timedelta(hours=1), dt.timedelta(days=1)
PAID, TRIAL = SubscriptionKind.PAID, SubscriptionKind.TRIAL


def due(kind: SubscriptionKind, remaining: dt.timedelta, **kw: object) -> str | None:
    reminder = due_reminder(subscription_id=42, kind=kind, expires_at=NOW + remaining, now=NOW, **kw)  # type: ignore[arg-type]
    return None if reminder is None else threshold_label(reminder.threshold)


def test_paid_thresholds() -> None:
    assert due(PAID, 4 * DAY) is None
    assert due(PAID, 3 * DAY) == "3d"
    assert due(PAID, 2 * DAY) == "3d"
    assert due(PAID, 20 * HOUR) == "1d"  # catch-up after downtime: the most urgent one only
    assert due(PAID, 5 * HOUR) == "6h"
    assert due(PAID, dt.timedelta(minutes=1)) == "6h"
    assert due(PAID, dt.timedelta(0)) is None  # expired: the expiry worker's notice, not a reminder
    assert due(PAID, -HOUR) is None
    assert due(PAID, 5 * HOUR, renewal_covered=True) is None


def test_trial_thresholds() -> None:
    assert due(TRIAL, 20 * HOUR) is None
    assert due(TRIAL, 5 * HOUR) == "6h"
    assert due(TRIAL, 30 * dt.timedelta(minutes=1)) == "1h"
    assert due(TRIAL, 30 * dt.timedelta(minutes=1), renewal_covered=True) == "1h"  # trials never auto-renew


def test_reminder_fields_and_key() -> None:
    reminder = due_reminder(subscription_id=42, kind=PAID, expires_at=NOW + 5 * HOUR, now=NOW)
    assert reminder is not None
    assert reminder.dedupe_key == "reminder:42:202603011700:6h"
    assert reminder.text_key == "reminder.paid.6h"
    assert reminder.remaining == 5 * HOUR
    moscow = dt.timezone(dt.timedelta(hours=3))
    assert reminder_key(42, (NOW + 5 * HOUR).astimezone(moscow), 6 * HOUR) == reminder.dedupe_key


def test_schedule_validation_and_labels() -> None:
    schedule = ReminderSchedule(paid=(HOUR, 2 * DAY), trial=())
    assert schedule.paid == (2 * DAY, HOUR)  # stored longest first
    assert due(TRIAL, 5 * HOUR, schedule=schedule) is None  # empty schedule: reminders off
    assert threshold_label(dt.timedelta(minutes=90)) == "90m"
    assert threshold_label(dt.timedelta(hours=48)) == "2d"
    for bad in ((HOUR, HOUR), (dt.timedelta(0),), (dt.timedelta(seconds=30),)):
        with pytest.raises(ConfigError) as info:
            ReminderSchedule(paid=bad)
        assert info.value.field == "reminders.paid"


@given(st.integers(1, 10**6), st.integers(-3 * 24 * 60, 5 * 24 * 60), st.integers(1, 120))
def test_keys_stable_within_a_threshold(sub_id: int, remaining_minutes: int, later: int) -> None:
    """Two ticks at any times give the same key iff they fall on the same threshold."""
    expires = NOW + dt.timedelta(minutes=remaining_minutes)
    first = due_reminder(subscription_id=sub_id, kind=PAID, expires_at=expires, now=NOW)
    second = due_reminder(
        subscription_id=sub_id, kind=PAID, expires_at=expires, now=NOW + dt.timedelta(minutes=later)
    )
    if first is None or second is None:
        return
    assert (first.dedupe_key == second.dedupe_key) == (first.threshold == second.threshold)
    assert second.threshold <= first.threshold  # time only moves towards more urgent reminders
    assert str(sub_id) in first.dedupe_key


def test_whole_life_sends_each_threshold_once() -> None:
    """Tick every 10 minutes over a subscription's last 4 days: exactly the 3 paid keys appear."""
    expires = NOW + 4 * DAY
    keys = []
    for step in range(4 * 24 * 6 + 6):
        reminder = due_reminder(
            subscription_id=1, kind=PAID, expires_at=expires, now=NOW + step * dt.timedelta(minutes=10)
        )
        if reminder is not None and reminder.dedupe_key not in keys:
            keys.append(reminder.dedupe_key)
    assert [key.rsplit(":", 1)[1] for key in keys] == ["3d", "1d", "6h"]
    assert DEFAULT_SCHEDULE.thresholds(TRIAL) == (6 * HOUR, HOUR)
