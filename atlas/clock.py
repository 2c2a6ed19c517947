"""Business time, injected.

Atlas never asks the operating system what time it is when it decides something about money or
access. It asks a :class:`Clock`, which is a wall-clock anchor taken once plus the time that the trio
clock has advanced since. Under trio's ``MockClock`` the trio clock jumps, so a test can live through
a month of renewals in milliseconds and every business decision sees the same jumps.

SQL never calls ``now()`` for a business decision either: units of work take ``now`` as a
parameter (contract 4 in DESIGN.md).
"""

from __future__ import annotations

import datetime as dt
import random

import trio

UTC = dt.UTC


class Clock:
    """Wall-clock anchor plus the trio clock.

    Construct it inside ``trio.run`` (it reads ``trio.current_time()`` once). ``anchor`` fixes the
    wall time that corresponds to that moment; tests pass a fixed anchor so that dates are
    reproducible, production passes nothing and gets the real UTC time.
    """

    def __init__(self, anchor: dt.datetime | None = None) -> None:
        if anchor is not None and anchor.tzinfo is None:
            raise ValueError("Clock anchor must be timezone-aware (UTC), got a naive datetime")
        self._wall_anchor = anchor if anchor is not None else dt.datetime.now(UTC)
        self._trio_anchor = trio.current_time()

    def now(self) -> dt.datetime:
        """Return the current business time, timezone-aware in UTC."""
        elapsed = trio.current_time() - self._trio_anchor
        return self._wall_anchor + dt.timedelta(seconds=elapsed)

    def monotonic(self) -> float:
        """Return trio's clock: for durations and deadlines, never for dates."""
        return trio.current_time()


def seeded_random(seed: int | None, salt: str = "") -> random.Random:
    """Return a private random source: reproducible when ``seed`` is given.

    ``salt`` separates streams (one per actor name, say) so that two actors with the same seed
    do not tick in lockstep, which would bring back the predecessor's 600-second stampede.
    """
    if seed is None:
        return random.Random()
    return random.Random(f"{seed}:{salt}")
