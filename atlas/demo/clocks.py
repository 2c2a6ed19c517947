"""Business time for the demo: sped up, and the users' scripted waits expressed in business time."""

from __future__ import annotations

import datetime as dt
import inspect

import trio

from atlas.clock import Clock


class _SpedUpClock(Clock):
    """Business now = anchor + speed × trio elapsed (used only when ``Clock`` has no ``speed`` yet)."""

    def __init__(self, anchor: dt.datetime | None = None, *, speed: float = 1.0) -> None:
        super().__init__(anchor)
        self.speed = speed
        self._start = trio.current_time()
        self._anchor_now = super().now()

    def now(self) -> dt.datetime:
        """The current business time."""
        return self._anchor_now + dt.timedelta(seconds=(trio.current_time() - self._start) * self.speed)


def demo_clock(speed: float) -> Clock:
    """A clock whose business time runs ``speed`` times faster than trio's."""
    if "speed" in inspect.signature(Clock.__init__).parameters:
        return Clock(speed=speed)  # type: ignore[call-arg]  # virtual time (branch vtime)
    return _SpedUpClock(speed=speed)


def trio_seconds(clock: Clock, business: dt.timedelta, speed: float) -> float:
    """How many trio seconds ``business`` lasts on ``clock``."""
    convert = getattr(clock, "trio_seconds", None)
    if convert is not None:
        return float(convert(business))
    return business.total_seconds() / speed


async def sleep_business(clock: Clock, business: dt.timedelta, speed: float) -> None:
    """Sleep for ``business`` of business time (a user "coming back tomorrow")."""
    await trio.sleep(max(0.0, trio_seconds(clock, business, speed)))
