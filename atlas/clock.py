"""Business time, injected, and how fast it runs.

Atlas never asks the operating system what time it is when it decides something about money or
access. It asks a :class:`Clock`, which is a wall-clock anchor taken once plus the time that the trio
clock has advanced since, times ``speed``. Under trio's ``MockClock`` the trio clock jumps, so a test
can live through a month of renewals in seconds and every business decision sees the same jumps.

Two kinds of time, and the rule that keeps them apart (docs/architecture.md, "Time"):

- **Business time** (:meth:`Clock.now`): trial lengths, renewal windows, reminder offsets, expiry,
  invoice-rate windows, retention. Decided by the product; scaled by ``speed``.
- **Operational time** (trio seconds): network timeouts, leases, retries and back-off, rate limits,
  heartbeats. Decided by the machine and the network, which do not speed up for a demo. When an
  operational duration must be *written down* as a business timestamp (a lease's ``until``, a
  retry's ``due``), :meth:`Clock.business_span` converts it, so a 120 s lease stays 120 s of trio
  time whatever the speed.

Periodic actors state their periods in business seconds (a reminder sweep "every 10 minutes" of
business time); :func:`tick_period` is the one conversion to the trio seconds they sleep.

At ``speed == 1`` (production) every conversion is the identity: nothing changes.

SQL never calls ``now()`` for a business decision either: units of work take ``now`` as a
parameter (contract 4 in DESIGN.md).
"""

from __future__ import annotations

import datetime as dt
import math
import random

import trio

UTC = dt.UTC


def _check_speed(speed: object) -> float:
    if isinstance(speed, bool) or not isinstance(speed, int | float) or not math.isfinite(speed) or speed < 1:
        raise ValueError(f"Clock speed must be a finite number >= 1, got {speed!r}")
    return float(speed)


class Clock:
    """Wall-clock anchor plus the trio clock, run ``speed`` times faster.

    Construct it inside ``trio.run`` (it reads ``trio.current_time()`` once). ``anchor`` fixes the
    wall time that corresponds to that moment; tests pass a fixed anchor so that dates are
    reproducible, production passes nothing and gets the real UTC time.

    ``speed`` (>= 1, default 1): business time advances ``speed`` business seconds per trio second.
    Production runs at 1; ``atlas demo`` and the thirty-day test run faster (``ATLAS_CLOCK_SPEED``).
    Slower than real time is refused: nothing needs it, and leases converted with
    :meth:`business_span` would then outlive their holders' real deadlines.
    """

    def __init__(self, anchor: dt.datetime | None = None, *, speed: float = 1.0) -> None:
        if anchor is not None and anchor.tzinfo is None:
            raise ValueError("Clock anchor must be timezone-aware (UTC), got a naive datetime")
        self._speed = _check_speed(speed)
        self._wall_anchor = anchor if anchor is not None else dt.datetime.now(UTC)
        self._trio_anchor = trio.current_time()

    @property
    def speed(self) -> float:
        """Business seconds per trio second (1 in production)."""
        return self._speed

    def now(self) -> dt.datetime:
        """Return the current business time, timezone-aware in UTC."""
        elapsed = trio.current_time() - self._trio_anchor
        return self._wall_anchor + dt.timedelta(seconds=elapsed * self._speed)

    def monotonic(self) -> float:
        """Return trio's clock: for durations and deadlines, never for dates."""
        return trio.current_time()

    def business_span(self, trio_seconds: float) -> dt.timedelta:
        """The business-time length of ``trio_seconds`` of trio time (``seconds × speed``).

        Use it for every operational duration written into the database as a business timestamp
        (``now + clock.business_span(lease)``): a lease, a retry time, a back-off. Not for business
        rules (a trial's length is business time already).
        """
        return dt.timedelta(seconds=trio_seconds * self._speed)

    def trio_seconds(self, business: dt.timedelta | float) -> float:
        """The trio seconds that ``business`` (a timedelta or seconds) of business time take.

        For sleeping until a business moment: ``trio.sleep(clock.trio_seconds(due - clock.now()))``.
        """
        seconds = business.total_seconds() if isinstance(business, dt.timedelta) else float(business)
        return seconds / self._speed


def tick_period(business_period: float, *, speed: float, floor: float) -> float:
    """Trio seconds between the ticks of a periodic actor whose period is ``business_period``.

    The business period scaled down by ``speed``, but never below ``floor`` trio seconds (a sped-up
    clock must not turn a 5-second poll into a busy loop) — and never *longer* than the business
    period itself, so at ``speed == 1`` every period stays exactly what it was, even one shorter
    than the floor (an outbox poll of 0.5 s keeps its 0.5 s in production). Pure; the Actor base
    applies it (:meth:`atlas.actors.base.Actor.follow_clock`).
    """
    if not business_period > 0 or not math.isfinite(business_period):
        raise ValueError(f"business_period must be a finite number > 0, got {business_period!r}")
    if not floor >= 0 or not math.isfinite(floor):
        raise ValueError(f"floor must be a finite number >= 0, got {floor!r}")
    scaled = business_period / _check_speed(speed)
    return max(scaled, min(floor, business_period))


def seeded_random(seed: int | None, salt: str = "") -> random.Random:
    """Return a private random source: reproducible when ``seed`` is given.

    ``salt`` separates streams (one per actor name, say) so that two actors with the same seed
    do not tick in lockstep, which would bring back the predecessor's 600-second stampede.
    """
    if seed is None:
        return random.Random()
    return random.Random(f"{seed}:{salt}")
