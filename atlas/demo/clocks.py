"""Business time for the demo: a sped-up clock, and the users' waits expressed in business time."""

from __future__ import annotations

import datetime as dt

import trio

from atlas.clock import Clock


def demo_clock(speed: float) -> Clock:
    """A clock anchored now whose business time runs ``speed`` times faster than trio's."""
    return Clock(speed=speed)


async def sleep_business(clock: Clock, business: dt.timedelta) -> None:
    """Sleep for ``business`` of business time (a user "coming back tomorrow")."""
    await trio.sleep(max(0.0, clock.trio_seconds(business)))
