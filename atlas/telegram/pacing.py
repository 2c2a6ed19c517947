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
:meth:`WriteSlot.before_write`, which the Bot session calls at the moment the request goes on the
wire (:func:`atlas.telegram.session.writes_paced_by`).

**Writes are not arrivals either.** With two ``atlas run`` processes on a loaded machine the
emulator's own process stalled for a second at a time; the requests written meanwhile waited in
its sockets, were stamped together when it woke, and a gate that had counted them at their
*writes* (over a second ago by then) let a second's worth more through at once: 46 arrivals in one
sliding second, 31 within 182 ms (issue 13). What the sender knows of an arrival is that it lies
between the write and the answer. So the gate counts each send at the latest arrival its answer
allows:

* a send still **in the air** counts as arriving *now* (it may arrive at any moment), for as long
  as it is in the air;
* an **answered** send counts at ``max(write, answer − fastest round trip)``, the fastest round
  trip being the shortest answered in the last :data:`ROUND_TRIP_MEMORY` seconds: a steady
  latency (a far server, an emulator holding each answer 300 ms) is the same for every send and
  shifts nothing, so the send counts at its write and the rate stays exactly ``rate``; a stall at
  the receiver lengthens only the stalled sends' round trips, and those count at their answers,
  when the receiver really saw them.

A *shorter* memory is not safer: a fastest round trip taken over the last couple of seconds rose
during a slow spell of the receiver (every request read late), every estimate moved earlier than
its arrival, and 45 arrivals came in one second again. A smaller fastest round trip only makes
the estimates later (safe); its price is the rate: each send holds its place in the window for
``1 s + (round trip − fastest)``, so the rate is ``limit / (window + mean excess round trip)``,
exactly ``rate`` under a steady latency, a little under it when the round trips scatter.

A write waits while ``limit`` sends count within the last ``window + write_margin`` seconds.
Counting every send at its answer instead (sound whatever the latency) was the earlier pacer that
capped the rate at ``limit / (window + latency)``, 23/s with 300 ms answers; counting at the write
(the previous gate) was exact on an idle machine and let stalls through. On an idle scheduler (and
on trio's MockClock) the check never waits and the rate is exactly ``rate``. ``write_margin``
(default 0) widens the window for jitter in the receiver's own part of the round trip, at a cost
of ``margin / window`` of the rate.

Memory: the global pacer keeps the last ``limit`` start times, the sends in the air, the estimated
arrivals still in the window (at most about ``limit``) and the ascending minima of the round trips
of the last :data:`ROUND_TRIP_MEMORY` seconds (a monotonic deque: a handful); the per-chat pacer
forgets chats whose next slot is already in the past (they carry no information).
"""

from __future__ import annotations

import bisect
import math
from collections import deque

import trio

DEFAULT_WRITE_MARGIN = 0.0
"""Seconds added to the window of actual writes, for jitter after the write (see the module docstring)."""

_WINDOW_MARGIN = 1e-6
"""Seconds added to the sliding window: starts exactly ``window`` apart are never counted together."""

ROUND_TRIP_MEMORY = 60.0
"""Seconds over which the write gate takes the fastest round trip (module docstring): long enough
that a slow spell of a few seconds does not raise it, short enough to learn a new steady latency."""


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
        self._in_air: set[_Flight] = set()
        self._arrivals: list[float] = []  # sorted estimated arrivals of answered sends, in the window
        self._fastest: deque[tuple[float, float]] = deque()  # (answered at, round trip), rising
        self._answers = trio.lowlevel.ParkingLot()
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

    def write_slot(self) -> WriteSlot:
        """A gate for one send's write (:meth:`WriteSlot.before_write`) and its answer."""
        return WriteSlot(self)

    async def before_write(self) -> None:
        """Wait until a write may happen, and count it at its write (as answered at once).

        For callers that do not report answers; the outbox sender uses :meth:`write_slot`.
        """
        flight = await self._write()
        self._settle(flight, flight.written)

    @property
    def in_air(self) -> int:
        """Writes whose answer has not been reported yet."""
        return len(self._in_air)

    def _counted(self, now: float, span: float) -> int:
        # The same sum as the wake-up time in _write (not now - span): floats must agree on
        # when an arrival has left the window, or the waiter would spin.
        arrivals = self._arrivals
        while arrivals and arrivals[0] + span <= now:
            del arrivals[0]
        return len(self._in_air) + len(arrivals)

    async def _write(self) -> _Flight:
        # Unordered on purpose: whoever is ready to write goes first (they all started within
        # their slots already). Cancelled while waiting: nothing is counted.
        span = self.window + self.write_margin + _WINDOW_MARGIN
        while self._counted(trio.current_time(), span) >= self.limit:
            ages_out = self._arrivals[0] + span if self._arrivals else math.inf
            with trio.move_on_at(ages_out):
                await self._answers.park()  # or an answer makes room
        flight = _Flight(trio.current_time())
        self._in_air.add(flight)
        self.writes += 1
        return flight

    def _answered(self, flight: _Flight, now: float) -> None:
        if flight not in self._in_air:
            return
        self._settle(flight, max(flight.written, now - self._fastest_round_trip(now, now - flight.written)))

    def _fastest_round_trip(self, now: float, round_trip: float) -> float:
        # A sliding-window minimum: keep only round trips that may still be the fastest.
        fastest = self._fastest
        while fastest and fastest[-1][1] >= round_trip:
            fastest.pop()
        fastest.append((now, round_trip))
        while fastest[0][0] < now - ROUND_TRIP_MEMORY:
            fastest.popleft()
        return fastest[0][1]

    def _settle(self, flight: _Flight, arrival: float) -> None:
        self._in_air.discard(flight)
        bisect.insort(self._arrivals, arrival)
        self._answers.unpark_all()

    def pause_until(self, when: float) -> None:
        """No send starts before trio time ``when`` (Telegram said "retry after" to the whole bot)."""
        self._paused = max(self._paused, when)

    @property
    def paused_until(self) -> float:
        """The trio time before which nothing starts (``-inf``: never paused)."""
        return self._paused


class _Flight:
    """One write: when it happened (identity matters, not value)."""

    __slots__ = ("written",)

    def __init__(self, written: float) -> None:
        self.written = written


class WriteSlot:
    """One send's passage through the write gate: :meth:`before_write`, then :meth:`answered`.

    The session awaits :meth:`before_write` just before the request's bytes go out; the sender
    calls :meth:`answered` once the call is over, however it ended (an error answer, a timeout, a
    cancellation: the send no longer counts as in the air, it counts at its estimated arrival).
    A second write through the same slot (a request sent again) first settles the previous one.
    Forgetting :meth:`answered` keeps the send in the air for good and costs the pacer one send
    of its window, so call it in a ``finally``.
    """

    __slots__ = ("_flight", "_pacer")

    def __init__(self, pacer: Pacer) -> None:
        self._pacer = pacer
        self._flight: _Flight | None = None

    async def before_write(self) -> None:
        """Wait until the write may happen (cancelled while waiting: nothing is counted)."""
        self.answered()
        self._flight = await self._pacer._write()

    def answered(self) -> None:
        """The answer came (or the call is over without one). Idempotent; nothing if never written."""
        if self._flight is not None:
            self._pacer._answered(self._flight, trio.current_time())
            self._flight = None


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
