"""Restart intensity: at most ``max_restarts`` restarts in any ``period`` seconds (a sliding window).

Counted across all the children of one supervisor, as in OTP: a tree whose children keep failing is
not helped by restarting them forever, so past the limit the supervisor gives up and lets its parent
decide (and, at the root, lets systemd or the operator restart the process).
"""

from __future__ import annotations

from collections import deque


class RestartIntensity:
    """A sliding window of restart times (trio clock seconds).

    ``record(now)`` adds one restart and says whether the supervisor is still within its limit:
    more than ``max_restarts`` restarts whose time is within ``period`` of ``now`` is too many.
    The window holds at most ``max_restarts + 1`` entries, so it is bounded however long the
    supervisor lives.
    """

    def __init__(self, max_restarts: int, period: float) -> None:
        self.max_restarts = max_restarts
        self.period = period
        self._times: deque[float] = deque()

    def _expire(self, now: float) -> None:
        while self._times and self._times[0] <= now - self.period:
            self._times.popleft()

    def record(self, now: float) -> bool:
        """Record a restart at ``now``; return False when this one exceeds the limit."""
        self._expire(now)
        self._times.append(now)
        within = len(self._times) <= self.max_restarts
        while len(self._times) > self.max_restarts + 1:
            self._times.popleft()
        return within

    def count(self, now: float) -> int:
        """Restarts recorded within ``period`` of ``now``."""
        self._expire(now)
        return len(self._times)
