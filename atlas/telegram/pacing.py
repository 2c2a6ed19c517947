"""Send pacing on the trio clock: a global rate and a per-chat interval, both with pauses.

Telegram counts messages when they *arrive*; we only know when a send *started* and when its answer
*came back*, and the arrival lies somewhere in between. Spacing the starts alone is not enough: a
request delayed by a busy CPU or network can arrive just before the next one, so a sender that
starts exactly ``rate`` sends per second can still land ``rate + 1`` in some second (under load this
is not rare). Both pacers therefore reason about the whole ``[start, answer]`` interval of a send:

* :class:`Pacer` (global): send ``k`` may start only ``window`` seconds after the *answers* of every
  send up to ``k - limit`` have come back (``limit = floor(rate × window)``). Then no ``window``-long
  interval can contain the arrivals of ``limit + 1`` sends, whatever the latency. Starts are also
  spaced ``1 / rate`` apart, so a backlog goes out evenly instead of in bursts (a token bucket
  with capacity > 1 would let a burst out after an idle spell, which is what Telegram punishes).
* :class:`ChatPacer` (per chat): the next message to a chat starts one interval after the previous
  one's *answer*; a chat has at most one send in the air (the sender guarantees that).

Both accept pauses (``retry_after``). Neither is a burst allowance, and both err only on the slow
side: a slot that is reserved and not used is simply lost.

Memory: the global pacer keeps at most ``limit`` + (sends in flight) completion times; the per-chat
pacer forgets chats whose next slot is already in the past (they carry no information).
"""

from __future__ import annotations

import math

import trio


def _positive(name: str, value: float) -> float:
    if not isinstance(value, int | float) or isinstance(value, bool) or not 0 < value < math.inf:
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
    return float(value)


class PacerTicket:
    """One send's place in the global pacing; call :meth:`done` when its answer came back."""

    __slots__ = ("_done", "_pacer", "number")

    def __init__(self, pacer: Pacer, number: int) -> None:
        self._pacer = pacer
        self.number = number
        self._done = False

    def done(self) -> None:
        """The send's answer (or failure) is back, or it was never sent. Idempotent."""
        if not self._done:
            self._done = True
            self._pacer._complete(self.number, trio.current_time())


class Pacer:
    """At most ``floor(rate × window)`` sends arrive in any ``window`` seconds; starts ``1/rate`` apart.

    Every ticket from :meth:`acquire` must be finished with :meth:`PacerTicket.done` (in a
    ``finally``): a later ticket waits for it.
    """

    def __init__(self, rate: float, *, window: float = 1.0) -> None:
        self.rate = _positive("rate", rate)
        self.window = _positive("window", window)
        self.limit = max(1, math.floor(self.rate * self.window))
        self.interval = 1.0 / self.rate
        self._next = -math.inf
        self._paused = -math.inf
        self._issued = 0
        self._answered: dict[int, float] = {}  # ticket → answer time, not yet folded
        self._through = -1  # tickets up to here are folded into _latest
        self._latest = -math.inf  # the latest answer among tickets <= _through
        self._changed = trio.lowlevel.ParkingLot()

    async def acquire(self) -> PacerTicket:
        """Wait until a send may start, and return its ticket.

        Cancelled while waiting: the ticket is finished at once (nothing was sent) and the
        cancellation propagates.
        """
        number = self._issued
        self._issued += 1
        ticket = PacerTicket(self, number)
        try:
            slot = max(trio.current_time(), self._next, self._paused)
            self._next = slot + self.interval
            need = number - self.limit
            if need >= 0:
                await self._fold_through(need)
                slot = max(slot, self._latest + self.window)
            slot = max(slot, self._paused)
            # After a wait for answers, space the following sends from here, not from before.
            self._next = max(self._next, slot + self.interval)
            await trio.sleep_until(slot)
        except BaseException:
            ticket.done()
            raise
        return ticket

    def pause_until(self, when: float) -> None:
        """No send starts before trio time ``when`` (Telegram said "retry after" to the whole bot)."""
        self._paused = max(self._paused, when)

    @property
    def in_flight(self) -> int:
        """Tickets issued whose answer is not back yet."""
        return self._issued - (self._through + 1) - len(self._answered)

    async def _fold_through(self, need: int) -> None:
        while self._through < need:
            following = self._through + 1
            if following in self._answered:
                self._latest = max(self._latest, self._answered.pop(following))
                self._through = following
            else:
                await self._changed.park()

    def _complete(self, number: int, when: float) -> None:
        if number > self._through:
            self._answered[number] = when
        self._changed.unpark_all()


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
