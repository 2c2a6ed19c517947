"""Send pacing on the trio clock: a global rate over send *starts*, and a per-chat interval.

Telegram counts messages as they arrive; a sender knows when a send *started* and when its answer
*came back*. An earlier version waited, for send ``k``, until ``window`` seconds after send
``k - limit`` was *answered*: arrivals could then never bunch over the limit, but the rate was
capped at ``limit / (window + answer latency)`` — 23/s instead of 30/s with 300 ms answers — and
the sender had to hold a ticket per send until its answer. That was the wrong trade: the limit
being protected is Telegram's *soft* flood limit, and Telegram itself says when it is crossed (a
429 with ``retry_after``), which pauses the pacer. So:

* :class:`Pacer` (global) is a token bucket over send starts with a capacity of one send: start
  ``k`` comes ``k / rate`` seconds after the first of a backlog, whatever the answers do, and no
  ``window``-long interval ever holds more than ``floor(rate × window)`` starts (a sliding window
  over the last starts enforces that exactly, so float rounding of ``1 / rate`` cannot let a 31st
  in). A capacity above one would let a burst out after an idle spell, which is what Telegram
  punishes. :meth:`Pacer.pause_until` holds every start (the bot as a whole was told to wait).
* :class:`ChatPacer` (per chat) is stricter on purpose: the next message to a chat starts one
  interval after the previous one's *answer*, so two arrivals in one chat can never be closer than
  the interval. Latency slows one chat, not the sender: other chats fill the global rate.

Both err only on the slow side: a start that is granted and not used is simply lost.

**Starts are not arrivals.** A start slot is taken before the request is built and before it has a
pooled connection; when the process is busy (a hundred updates a second of handlers), those steps
take longer for some sends than for others, and sends started exactly ``1/rate`` apart reached the
Bot API emulator bunched: 34 in one sliding second at 30/s. So the global pacer has a second check,
:meth:`Pacer.before_write`, which the Bot session calls at the moment the request goes on the wire
(:func:`atlas.telegram.session.writes_paced_by`): a write waits while ``limit`` writes already
happened in the last ``window + write_margin`` seconds. On an idle scheduler (and on trio's
MockClock) writes happen at their starts, so the check never waits and the rate stays exactly
``rate``. ``write_margin`` (default 0) widens the window of writes for jitter *after* the write
(the receiving side's own scheduling), at a cost of ``margin / window`` of the rate.

Memory: the global pacer keeps the last ``limit`` start times; the per-chat pacer forgets chats
whose next slot is already in the past (they carry no information).
"""

from __future__ import annotations

import math
from collections import deque

import trio

DEFAULT_WRITE_MARGIN = 0.0
"""Seconds added to the window of actual writes, for jitter after the write (see the module docstring)."""

_WINDOW_MARGIN = 1e-6
"""Seconds added to the sliding window: starts exactly ``window`` apart are never counted together."""


def _positive(name: str, value: float) -> float:
    if not isinstance(value, int | float) or isinstance(value, bool) or not 0 < value < math.inf:
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
    return float(value)


class Pacer:
    """At most ``floor(rate × window)`` send starts in any ``window`` seconds, ``1/rate`` apart.

    :meth:`acquire` returns when a send may start *now*; the caller starts it at once, with no
    await in between (an await there would let the start drift from its slot). Waiters are served
    in arrival order. Nothing is to be given back: answers do not matter to the global rate.
    :meth:`before_write` is the second check, at the moment the started send's bytes are written.
    """

    def __init__(
        self, rate: float, *, window: float = 1.0, write_margin: float = DEFAULT_WRITE_MARGIN
    ) -> None:
        self.rate = _positive("rate", rate)
        self.window = _positive("window", window)
        if not 0 <= write_margin < self.window:
            raise ValueError(f"write_margin must be in [0, window), got {write_margin!r}")
        self.write_margin = float(write_margin)
        self.limit = max(1, math.floor(self.rate * self.window))
        self.interval = 1.0 / self.rate
        self._starts: deque[float] = deque(maxlen=self.limit)
        self._writes: deque[float] = deque(maxlen=self.limit)
        self._paused = -math.inf
        self._turn = trio.Lock()  # FIFO: waiters start in the order they asked
        self.granted = 0
        self.writes = 0

    def next_start(self) -> float:
        """The earliest trio time at which the next send may start (may be in the past)."""
        at = self._paused
        if self._starts:
            at = max(at, self._starts[-1] + self.interval)
            if len(self._starts) == self.limit:
                at = max(at, self._starts[0] + self.window + _WINDOW_MARGIN)
        return at

    async def acquire(self) -> None:
        """Wait for the next start slot and take it.

        Cancelled while waiting: no slot is taken (the next waiter gets it) and the cancellation
        propagates. A pause set while waiting is obeyed (the slot is recomputed on every wake).
        """
        async with self._turn:
            # A pause may be set while we sleep: look again after every wake.
            while (at := self.next_start()) > trio.current_time():  # noqa: ASYNC110 - time is the event
                await trio.sleep_until(at)
            self._starts.append(trio.current_time())
            self.granted += 1

    async def before_write(self) -> None:
        """Wait until a started send may go on the wire, and count it.

        At most ``limit`` writes happen in any ``window + write_margin`` seconds, whatever delayed
        some sends between their start and their write. Unordered on purpose: whoever is ready to
        write goes first (they all started within their slots already). Cancelled while waiting:
        nothing is counted.
        """
        span = self.window + self.write_margin + _WINDOW_MARGIN
        while len(self._writes) == self.limit and (at := self._writes[0] + span) > trio.current_time():  # noqa: ASYNC110
            await trio.sleep_until(at)
        self._writes.append(trio.current_time())
        self.writes += 1

    def pause_until(self, when: float) -> None:
        """No send starts before trio time ``when`` (Telegram said "retry after" to the whole bot)."""
        self._paused = max(self._paused, when)

    @property
    def paused_until(self) -> float:
        """The trio time before which nothing starts (``-inf``: never paused)."""
        return self._paused


class ChatPacer:
    """The next send to a chat starts ``1 / per_chat_rate`` s after the previous answer, or after a pause."""

    def __init__(self, per_chat_rate: float = 1.0, *, prune_above: int = 10_000) -> None:
        self.interval = 1.0 / _positive("per_chat_rate", per_chat_rate)
        if isinstance(prune_above, bool) or not isinstance(prune_above, int) or prune_above < 1:
            raise ValueError(f"prune_above must be an int >= 1, got {prune_above!r}")
        self._next: dict[int, float] = {}
        self._prune_above = prune_above
        self._prune_at = prune_above

    def ready_at(self, chat_id: int) -> float:
        """The trio time from which ``chat_id`` may get the next message."""
        return self._next.get(chat_id, -math.inf)

    def note_answered(self, chat_id: int, when: float) -> None:
        """A send to ``chat_id`` got its answer at ``when``: the next may start one interval later."""
        self._set(chat_id, max(self.ready_at(chat_id), when + self.interval))

    def pause_until(self, chat_id: int, when: float) -> None:
        """Nothing to ``chat_id`` before ``when`` (a 429 with ``retry_after``)."""
        self._set(chat_id, max(self.ready_at(chat_id), when))

    def __len__(self) -> int:
        return len(self._next)

    def _set(self, chat_id: int, when: float) -> None:
        self._next[chat_id] = when
        if len(self._next) >= self._prune_at:
            now = trio.current_time()
            self._next = {chat: t for chat, t in self._next.items() if t > now}
            # Amortised: prune again only when the live set has doubled.
            self._prune_at = max(self._prune_above, 2 * len(self._next))
