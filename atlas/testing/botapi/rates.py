"""Send-rate measurement and (optionally) Telegram's flood limits.

Every ``send*`` call is stamped with the trio clock. Measurement answers "what was the most sends
in any window of ``window`` seconds?" over the whole history, so a test can assert that the bot
never exceeded 30 messages/s overall or 1 message/s per chat. Windows are half-open,
``[t, t + window)``: a sender that spaces messages exactly ``1/rate`` apart reaches ``rate`` and
not ``rate + 1``.

Enforcement is what the real server does: a send that would exceed a limit is refused with 429 and
a whole-second ``retry_after`` (Telegram never says 0). Only accepted sends count against the
limits, as with Telegram: a refused call does not push the window further.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace

from atlas.testing.botapi.records import SendStamp


@dataclass(frozen=True, slots=True)
class RateLimits:
    """Telegram's documented limits: about 30 messages/s in bulk and 1 message/s per chat."""

    global_per_window: int = 30
    per_chat_per_window: int = 1
    window: float = 1.0

    def __post_init__(self) -> None:
        if self.global_per_window < 1:
            raise ValueError(f"global_per_window must be >= 1, got {self.global_per_window!r}")
        if self.per_chat_per_window < 1:
            raise ValueError(f"per_chat_per_window must be >= 1, got {self.per_chat_per_window!r}")
        if not self.window > 0:
            raise ValueError(f"window must be positive, got {self.window!r}")


def max_in_window(times: Iterable[float], window: float) -> int:
    """Return the largest number of ``times`` inside any half-open interval ``[t, t + window)``."""
    if not window > 0:
        raise ValueError(f"window must be positive, got {window!r}")
    ordered = sorted(times)
    best = 0
    start = 0
    for end, t in enumerate(ordered):
        while t - ordered[start] >= window:
            start += 1
        best = max(best, end - start + 1)
    return best


class RateMeter:
    """Keeps every send stamp; measures peaks; decides whether a new send would be refused."""

    def __init__(self, limits: RateLimits) -> None:
        self.limits = limits
        self._stamps: list[SendStamp] = []
        # Accepted send times within the last window, for enforcement (trimmed lazily).
        self._recent_global: deque[float] = deque()
        self._recent_chat: dict[int | str, deque[float]] = {}

    @property
    def stamps(self) -> Sequence[SendStamp]:
        """Every stamped call, in arrival order."""
        return tuple(self._stamps)

    def record(self, stamp: SendStamp) -> None:
        """Remember one send call; accepted ones count against the limits from now on."""
        self._stamps.append(stamp)
        if stamp.accepted:
            self._recent_global.append(stamp.time)
            if stamp.chat_id is not None:
                self._recent_chat.setdefault(stamp.chat_id, deque()).append(stamp.time)

    def withdraw(self, stamp: SendStamp) -> None:
        """Turn an accepted ``stamp`` (its call then failed) into a refused one, freeing its slot."""
        index = max(i for i, recorded in enumerate(self._stamps) if recorded is stamp)
        self._stamps[index] = replace(stamp, accepted=False)
        _discard(self._recent_global, stamp.time)
        if stamp.chat_id is not None:
            _discard(self._recent_chat.get(stamp.chat_id, deque()), stamp.time)

    def retry_after(self, now: float, chat_id: int | str | None) -> int | None:
        """Whole seconds to wait if a send to ``chat_id`` now would exceed a limit, else None."""
        window = self.limits.window
        waits: list[float] = []
        recent = _trim(self._recent_global, now - window)
        if len(recent) >= self.limits.global_per_window:
            waits.append(recent[-self.limits.global_per_window] + window - now)
        if chat_id is not None and chat_id in self._recent_chat:
            per_chat = _trim(self._recent_chat[chat_id], now - window)
            if len(per_chat) >= self.limits.per_chat_per_window:
                waits.append(per_chat[-self.limits.per_chat_per_window] + window - now)
        if not waits:
            return None
        return max(1, math.ceil(max(waits)))

    def max_global(self, window: float, *, accepted_only: bool = False) -> int:
        """The most send calls (to any chat) in any ``window`` seconds."""
        return max_in_window((s.time for s in self._stamps if s.accepted or not accepted_only), window)

    def max_per_chat(self, window: float, *, accepted_only: bool = False) -> int:
        """The most send calls to one chat in any ``window`` seconds (the worst chat)."""
        by_chat: dict[int | str | None, list[float]] = {}
        for s in self._stamps:
            if s.accepted or not accepted_only:
                by_chat.setdefault(s.chat_id, []).append(s.time)
        return max((max_in_window(times, window) for times in by_chat.values()), default=0)


def _discard(times: deque[float], time: float) -> None:
    if time in times:  # else already trimmed: it was older than the window anyway
        times.remove(time)


def _trim(times: deque[float], older_than_or_at: float) -> deque[float]:
    # A send at exactly now - window is outside the half-open window that ends now.
    while times and times[0] <= older_than_or_at:
        times.popleft()
    return times
