"""Send-rate measurement and (optionally) Telegram's flood limits.

Every ``send*`` call is stamped with the trio clock. Measurement answers "what was the most sends
in any window of ``window`` seconds?" over the whole history, so a test can assert that the bot
never exceeded 30 messages/s in bulk or 1 message/s per chat. Windows are half-open,
``[t, t + window)``: a sender that spaces messages exactly ``1/rate`` apart reaches ``rate`` and
not ``rate + 1``.

**What the limits count** (Telegram's Bots FAQ, "My bot is hitting limits, how do I avoid
this?"): "avoid sending more than one message per second" *in a particular chat*, and "if you're
sending bulk notifications to multiple users, the API will not allow more than 30 messages per
second or so". The 30/s is a limit on *broadcasting* (``allow_paid_broadcast`` lifts "the
broadcasting limits" to 1000/s): a bot answering the users who are talking to it is not sending
bulk notifications, and a bot with a few hundred users pressing buttons answers more than 30 of
them a second. So a send is a **reply** when its chat sent the bot an update (a message, a button
press, a pre-checkout query) within the last ``reply_window`` seconds, and **bulk** otherwise:

============  ======================  ============================
send          per-chat limit (1/s)    global limit (30/s)
============  ======================  ============================
bulk          counts                  counts
reply         counts                  does not count
============  ======================  ============================

That is also the only model under which both of Atlas's sender goals can hold: the outbox sender
spends 0.97 × 30/s on a broadcast *while* 100 updates/s are answered (issue 9), and no 429 comes
back (issue 13). ``reply_window=0`` counts every send as bulk (the stricter model, for a test
that wants it).

Enforcement is what the real server does: a send that would exceed a limit is refused with 429 and
a whole-second ``retry_after`` (Telegram never says 0). Only accepted sends count against the
limits, as with Telegram: a refused call does not push the window further.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from enum import Enum

from atlas.testing.botapi.records import SendKind, SendStamp

ChatKey = int | str
"""A chat as the meter sees it: the numeric id when known, else what the call named."""


class Limit(Enum):
    """The two flood limits."""

    PER_CHAT = "per_chat"
    GLOBAL = "global"


COUNTED_BY: dict[SendKind, frozenset[Limit]] = {
    SendKind.BULK: frozenset({Limit.PER_CHAT, Limit.GLOBAL}),
    SendKind.REPLY: frozenset({Limit.PER_CHAT}),
}
"""Which limits a send of each kind counts against: the table of the module docstring."""


def kind_of_send(now: float, last_update_at: float | None, reply_window: float) -> SendKind:
    """A send at ``now`` to a chat whose last update came at ``last_update_at`` (None: never)."""
    if last_update_at is not None and now - last_update_at < reply_window:
        return SendKind.REPLY
    return SendKind.BULK


@dataclass(frozen=True, slots=True)
class RateLimits:
    """Telegram's documented limits: about 30 messages/s in bulk and 1 message/s per chat.

    ``reply_window`` (10 s): a send to a chat that sent the bot an update this recently is a reply,
    outside the bulk limit (module docstring); a handler answers within a second or two even on a
    loaded machine, and a notice ten seconds after the user's last tap is bulk again. 0: every
    send is bulk.
    """

    global_per_window: int = 30
    per_chat_per_window: int = 1
    window: float = 1.0
    reply_window: float = 10.0

    def __post_init__(self) -> None:
        if self.global_per_window < 1:
            raise ValueError(f"global_per_window must be >= 1, got {self.global_per_window!r}")
        if self.per_chat_per_window < 1:
            raise ValueError(f"per_chat_per_window must be >= 1, got {self.per_chat_per_window!r}")
        if not self.window > 0:
            raise ValueError(f"window must be positive, got {self.window!r}")
        if not 0 <= self.reply_window < math.inf:
            raise ValueError(f"reply_window must be a finite number >= 0, got {self.reply_window!r}")


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
        self._recent_chat: dict[ChatKey, deque[float]] = {}
        self._last_update: dict[ChatKey, float] = {}

    @property
    def stamps(self) -> Sequence[SendStamp]:
        """Every stamped call, in arrival order."""
        return tuple(self._stamps)

    def note_update(self, chat_id: ChatKey, time: float) -> None:
        """The chat sent the bot an update at ``time``: sends to it are replies for a while."""
        self._last_update[chat_id] = time

    def kind(self, now: float, chat_id: ChatKey | None) -> SendKind:
        """What a send to ``chat_id`` at ``now`` is (a call without a chat is bulk)."""
        last = None if chat_id is None else self._last_update.get(chat_id)
        return kind_of_send(now, last, self.limits.reply_window)

    def record(self, stamp: SendStamp) -> None:
        """Remember one send call; accepted ones count against the limits from now on."""
        self._stamps.append(stamp)
        if stamp.accepted:
            if Limit.GLOBAL in COUNTED_BY[stamp.kind]:
                self._recent_global.append(stamp.time)
            if stamp.chat_id is not None:
                self._recent_chat.setdefault(stamp.chat_id, deque()).append(stamp.time)

    def withdraw(self, stamp: SendStamp) -> None:
        """Turn an accepted ``stamp`` (its call then failed) into a refused one, freeing its slot."""
        index = max(i for i, recorded in enumerate(self._stamps) if recorded is stamp)
        self._stamps[index] = replace(stamp, accepted=False)
        if Limit.GLOBAL in COUNTED_BY[stamp.kind]:
            _discard(self._recent_global, stamp.time)
        if stamp.chat_id is not None:
            _discard(self._recent_chat.get(stamp.chat_id, deque()), stamp.time)

    def retry_after(self, now: float, chat_id: ChatKey | None, kind: SendKind = SendKind.BULK) -> int | None:
        """Whole seconds to wait if a send of ``kind`` to ``chat_id`` now would exceed a limit, else None."""
        window = self.limits.window
        waits: list[float] = []
        recent = _trim(self._recent_global, now - window)
        if Limit.GLOBAL in COUNTED_BY[kind] and len(recent) >= self.limits.global_per_window:
            waits.append(recent[-self.limits.global_per_window] + window - now)
        if chat_id is not None and chat_id in self._recent_chat:
            per_chat = _trim(self._recent_chat[chat_id], now - window)
            if len(per_chat) >= self.limits.per_chat_per_window:
                waits.append(per_chat[-self.limits.per_chat_per_window] + window - now)
        if not waits:
            return None
        return max(1, math.ceil(max(waits)))

    def max_global(self, window: float, *, accepted_only: bool = False, replies: bool = False) -> int:
        """The most bulk send calls (to any chat) in any ``window`` seconds; ``replies``: all sends."""
        return max_in_window(
            (
                s.time
                for s in self._stamps
                if (s.accepted or not accepted_only) and (replies or Limit.GLOBAL in COUNTED_BY[s.kind])
            ),
            window,
        )

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
