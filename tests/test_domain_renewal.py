"""Auto-renewal decisions: due only in the window, never twice per period, one notice per period."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from atlas.domain import (
    InsufficientFunds,
    NotDue,
    NotDueReason,
    Renew,
    RenewalDecision,
    decide_renewal,
    renewal_charge_key,
    renewal_notice_key,
)

NOW = dt.datetime(2026, 3, 1, 12, 0, tzinfo=dt.UTC)
HOUR, DAY = dt.timedelta(hours=1), dt.timedelta(days=1)


def decide(**kw: Any) -> RenewalDecision:
    args: dict[str, Any] = {
        "auto_renew": True,
        "expires_at": NOW + 12 * HOUR,
        "now": NOW,
        "renew_window": DAY,
        "balance_minor": 50000,
        "price_minor": 19900,
        "plan_days": 30,
        "last_auto_renewal_at": None,
        "notice_period": DAY,
    }
    args.update(kw)
    return decide_renewal(**args)


def test_renews_inside_the_window() -> None:
    decision = decide()
    assert decision == Renew(19900, NOW + 12 * HOUR + 30 * DAY, "renewal:202603020000")
    keyed = decide(subscription_id=7)
    assert isinstance(keyed, Renew) and keyed.charge_key == "renewal:7:202603020000"
    assert decide(balance_minor=19900) == decision  # exactly enough is enough
    overdue = decide(expires_at=NOW - HOUR)  # not yet expired by the expiry worker
    assert isinstance(overdue, Renew) and overdue.new_expires_at == NOW + 30 * DAY


def test_not_due() -> None:
    assert decide(auto_renew=False) == NotDue(NotDueReason.AUTO_RENEW_OFF)
    assert decide(expires_at=NOW + 2 * DAY) == NotDue(NotDueReason.TOO_EARLY)
    assert decide(expires_at=NOW + DAY) != NotDue(NotDueReason.TOO_EARLY)  # the window is inclusive


def test_last_auto_renewal_guard() -> None:
    # Renewed less than one renewal period (min(window, plan length)) ago: not again.
    assert decide(last_auto_renewal_at=NOW - 11 * HOUR) == NotDue(NotDueReason.ALREADY_RENEWED)
    assert decide(last_auto_renewal_at=NOW + HOUR) == NotDue(NotDueReason.ALREADY_RENEWED)  # clock skew
    # A renewal in an earlier period does not block this one.
    assert isinstance(decide(last_auto_renewal_at=NOW - DAY), Renew)
    # A plan shorter than the window: its new expiry is still inside the window, so without the
    # guard the next tick would charge again; with it, the next renewal waits one plan length.
    short = {"plan_days": 1, "renew_window": 3 * DAY, "expires_at": NOW + 2 * DAY}
    assert decide(**short, last_auto_renewal_at=NOW - HOUR) == NotDue(NotDueReason.ALREADY_RENEWED)
    assert isinstance(decide(**short, last_auto_renewal_at=NOW - 25 * HOUR), Renew)


def test_insufficient_funds_notice() -> None:
    decision = decide(balance_minor=100)
    assert decision == InsufficientFunds("renewal-insufficient:202603020000", shortfall_minor=19800)
    keyed = decide(balance_minor=100, subscription_id=7)
    assert keyed == InsufficientFunds("renewal-insufficient:7:202603020000", shortfall_minor=19800)
    # A longer notice period warns before the window opens; a shorter one waits.
    early = decide(balance_minor=100, expires_at=NOW + 2 * DAY, notice_period=3 * DAY)
    assert isinstance(early, InsufficientFunds)
    assert decide(balance_minor=100, notice_period=HOUR) == NotDue(NotDueReason.AWAITING_FUNDS)
    assert decide(balance_minor=100, expires_at=NOW + 5 * DAY) == NotDue(NotDueReason.TOO_EARLY)


def test_notice_key_is_stable_across_ticks_and_zones() -> None:
    expiry = NOW + 12 * HOUR
    decisions = [decide(balance_minor=0, now=NOW + step * dt.timedelta(minutes=10)) for step in range(60)]
    assert {d.notice_key for d in decisions if isinstance(d, InsufficientFunds)} == {
        renewal_notice_key(expiry)
    }
    assert all(isinstance(d, InsufficientFunds) for d in decisions)
    moscow = dt.timezone(dt.timedelta(hours=3))
    assert renewal_notice_key(expiry.astimezone(moscow)) == renewal_notice_key(expiry)
    assert renewal_notice_key(expiry) != renewal_notice_key(expiry + 30 * DAY)
    assert renewal_charge_key(expiry, 1) != renewal_charge_key(expiry, 2)


def test_bad_inputs() -> None:
    for kw in (
        {"price_minor": 0},
        {"balance_minor": -1},
        {"renew_window": dt.timedelta(0)},
        {"notice_period": -HOUR},
        {"plan_days": 0},
        {"now": dt.datetime(2026, 3, 1)},
        {"last_auto_renewal_at": dt.datetime(2026, 3, 1)},
    ):
        with pytest.raises(ValueError):
            decide(**kw)
    with pytest.raises(TypeError):
        decide(price_minor=199.0)


@given(
    plan_days=st.integers(1, 60),
    window_hours=st.integers(1, 24 * 7),
    notice_hours=st.integers(0, 24 * 7),
    steps=st.lists(st.integers(1, 36 * 60), min_size=1, max_size=150),  # tick gaps in minutes
    balance=st.integers(0, 200_000),
    top_ups=st.lists(st.integers(0, 30_000), max_size=150),
)
def test_simulated_ticks_never_renew_twice_per_period(
    plan_days: int,
    window_hours: int,
    notice_hours: int,
    steps: list[int],
    balance: int,
    top_ups: list[int],
) -> None:
    """Drive many ticks through time, applying each decision as the renewal actor would."""
    window, notice = dt.timedelta(hours=window_hours), dt.timedelta(hours=notice_hours)
    price = 19_900
    now = NOW
    expires = NOW + 3 * DAY
    last: dt.datetime | None = None
    charged: set[str] = set()
    notices: list[tuple[str, dt.datetime]] = []
    renewals: list[dt.datetime] = []
    for index, gap in enumerate(steps):
        now += dt.timedelta(minutes=gap)
        balance += top_ups[index] if index < len(top_ups) else 0
        decision = decide(
            expires_at=expires,
            now=now,
            renew_window=window,
            notice_period=notice,
            balance_minor=balance,
            price_minor=price,
            plan_days=plan_days,
            last_auto_renewal_at=last,
        )
        if isinstance(decision, Renew):
            assert decision.amount_minor == price <= balance
            assert decision.new_expires_at > expires and decision.new_expires_at > now  # never backwards
            assert expires - now <= window
            assert decision.charge_key not in charged  # the same period is never charged twice
            charged.add(decision.charge_key)
            if renewals:  # at most one renewal per renewal period
                assert now - renewals[-1] >= min(window, dt.timedelta(days=plan_days))
            renewals.append(now)
            balance -= decision.amount_minor
            expires, last = decision.new_expires_at, now
        elif isinstance(decision, InsufficientFunds):
            assert balance < price and expires - now <= notice
            assert decision.notice_key == renewal_notice_key(expires)
            assert decision.shortfall_minor == price - balance
            notices.append((decision.notice_key, expires))
    # One notice key per period: a key always maps to the same expiry.
    assert len({key for key, _ in notices}) == len({expiry for _, expiry in notices})


@pytest.mark.parametrize(
    ("plan_days", "window", "expected"),
    [(30, DAY, 4), (1, 3 * DAY, 100), (3, 3 * DAY, 34), (30, 40 * DAY, 4)],
)
def test_hundred_days_of_ticks(plan_days: int, window: dt.timedelta, expected: int) -> None:
    """Ten-minute ticks for 100 days with plenty of balance: one renewal per period, access never lapses."""
    now, expires, last = NOW, NOW + 3 * DAY, None
    renewals = 0
    for _ in range(100 * 24 * 6):
        now += dt.timedelta(minutes=10)
        decision = decide(
            expires_at=expires,
            now=now,
            renew_window=window,
            plan_days=plan_days,
            balance_minor=10**9,
            last_auto_renewal_at=last,
        )
        if isinstance(decision, Renew):
            renewals += 1
            expires, last = decision.new_expires_at, now
        assert expires > now  # renewed before it ran out, every time
    assert renewals == expected
