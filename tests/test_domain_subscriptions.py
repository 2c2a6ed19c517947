"""Subscription time: extend is monotonic, trials convert in place, trial expiry never touches paid."""

from __future__ import annotations

import datetime as dt

import pytest
from hypothesis import given
from hypothesis import strategies as st

from atlas.domain import (
    ExpiryAction,
    SubscriptionKind,
    SubscriptionState,
    SubscriptionStatus,
    TrialAlreadyUsed,
    TrialNotAllowed,
    convert_trial_to_paid,
    expiry_decision,
    extend,
    grant_paid,
    grant_trial,
    trial_eligibility,
    trial_expiry_allowed,
)

NOW = dt.datetime(2026, 3, 1, 12, 0, tzinfo=dt.UTC)
DAY = dt.timedelta(days=1)
TRIAL, PAID = SubscriptionKind.TRIAL, SubscriptionKind.PAID
ACTIVE, EXPIRED = SubscriptionStatus.ACTIVE, SubscriptionStatus.EXPIRED

moments = st.datetimes(
    min_value=dt.datetime(2000, 1, 1), max_value=dt.datetime(2100, 1, 1), timezones=st.just(dt.UTC)
)


def test_extend() -> None:
    assert extend(None, NOW, 30) == NOW + 30 * DAY
    assert extend(NOW + 5 * DAY, NOW, 30) == NOW + 35 * DAY  # paying early keeps the remainder
    assert extend(NOW - 5 * DAY, NOW, 30) == NOW + 30 * DAY  # paying late buys no past days
    for bad in (0, -1):
        with pytest.raises(ValueError):
            extend(NOW, NOW, bad)
    with pytest.raises(ValueError, match="aware"):
        extend(None, dt.datetime(2026, 1, 1), 30)
    with pytest.raises(ValueError, match="aware"):
        extend(dt.datetime(2026, 1, 1), NOW, 30)
    other_zone = dt.timezone(dt.timedelta(hours=3))
    assert extend(NOW.astimezone(other_zone), NOW, 1) == NOW + DAY


@given(st.none() | moments, moments, st.integers(1, 3660), st.integers(1, 3660))
def test_extend_is_monotonic(expires: dt.datetime | None, now: dt.datetime, days: int, more: int) -> None:
    result = extend(expires, now, days)
    assert result > now
    assert expires is None or result > expires
    assert result - max(expires or now, now) == dt.timedelta(days=days)
    assert extend(result, now, more) > result  # extending again never moves backwards


def test_trial_eligibility() -> None:
    trial_eligibility(ever_had_trial=False, has_active_paid=False)
    with pytest.raises(TrialAlreadyUsed) as used:
        trial_eligibility(ever_had_trial=True, has_active_paid=True)  # the permanent reason wins
    assert used.value.code == "trial.already_used"
    with pytest.raises(TrialNotAllowed) as paid:
        trial_eligibility(ever_had_trial=False, has_active_paid=True)
    assert paid.value.params == {"reason": "has_paid"}


def test_grant_trial() -> None:
    state = grant_trial(None, ever_had_trial=False, now=NOW, duration=dt.timedelta(hours=24))
    assert state == SubscriptionState(TRIAL, ACTIVE, NOW + DAY)
    paid = SubscriptionState(PAID, ACTIVE, NOW + 10 * DAY)
    with pytest.raises(TrialNotAllowed):
        grant_trial(paid, ever_had_trial=False, now=NOW, duration=DAY)
    lapsed = SubscriptionState(PAID, EXPIRED, NOW - 10 * DAY)
    assert grant_trial(lapsed, ever_had_trial=False, now=NOW, duration=DAY).kind is TRIAL
    with pytest.raises(TrialAlreadyUsed):
        grant_trial(None, ever_had_trial=True, now=NOW, duration=DAY)
    with pytest.raises(ValueError):
        grant_trial(None, ever_had_trial=False, now=NOW, duration=dt.timedelta(0))


def test_grant_paid_paths() -> None:
    assert grant_paid(None, now=NOW, days=30) == SubscriptionState(PAID, ACTIVE, NOW + 30 * DAY)
    trial = SubscriptionState(TRIAL, ACTIVE, NOW + DAY)
    converted = grant_paid(trial, now=NOW, days=30)
    assert converted == SubscriptionState(PAID, ACTIVE, NOW + 31 * DAY)  # the trial's remainder is kept
    assert convert_trial_to_paid(NOW + DAY, NOW, 30) == converted.expires_at
    paid = SubscriptionState(PAID, ACTIVE, NOW + 5 * DAY)
    assert grant_paid(paid, now=NOW, days=30).expires_at == NOW + 35 * DAY
    revoked = SubscriptionState(PAID, EXPIRED, NOW + 5 * DAY)  # expired row with a future date
    assert grant_paid(revoked, now=NOW, days=30) == SubscriptionState(PAID, ACTIVE, NOW + 30 * DAY)
    overdue = SubscriptionState(PAID, ACTIVE, NOW - DAY)  # expiry worker not there yet
    assert grant_paid(overdue, now=NOW, days=30).expires_at == NOW + 30 * DAY


def test_state_queries() -> None:
    state = SubscriptionState("paid", "active", NOW + DAY)  # type: ignore[arg-type]
    assert state.kind is PAID and state.is_active_at(NOW) and state.has_paid_time_at(NOW)
    assert not state.is_active_at(NOW + DAY)
    assert not SubscriptionState(TRIAL, ACTIVE, NOW + DAY).has_paid_time_at(NOW)


def test_expiry_decision() -> None:
    assert expiry_decision(PAID, ACTIVE, NOW + DAY, NOW) is ExpiryAction.KEEP
    assert expiry_decision(PAID, ACTIVE, NOW, NOW) is ExpiryAction.EXPIRE
    assert expiry_decision(TRIAL, ACTIVE, NOW - DAY, NOW) is ExpiryAction.EXPIRE
    assert expiry_decision(PAID, EXPIRED, NOW - DAY, NOW) is ExpiryAction.SKIP
    assert expiry_decision(PAID, ACTIVE, NOW - DAY, NOW, only_kind=TRIAL) is ExpiryAction.SKIP


def test_trial_expiry_never_touches_paid() -> None:
    assert trial_expiry_allowed(TRIAL, ACTIVE, NOW - DAY, NOW)
    assert not trial_expiry_allowed(TRIAL, ACTIVE, NOW + DAY, NOW)
    assert not trial_expiry_allowed(TRIAL, EXPIRED, NOW - DAY, NOW)
    # The race from the audits: the worker selected a trial, the user paid, the row is now paid.
    selected = SubscriptionState(TRIAL, ACTIVE, NOW - dt.timedelta(minutes=1))
    locked = grant_paid(selected, now=NOW - dt.timedelta(minutes=2), days=30)
    assert not trial_expiry_allowed(locked.kind, locked.status, locked.expires_at, NOW)


@given(st.sampled_from(SubscriptionStatus), moments, moments)
def test_trial_expiry_property(status: SubscriptionStatus, expires: dt.datetime, now: dt.datetime) -> None:
    assert not trial_expiry_allowed(PAID, status, expires, now)
    assert trial_expiry_allowed(TRIAL, status, expires, now) == (status is ACTIVE and expires <= now)
