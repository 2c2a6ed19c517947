"""The polling offset rule: confirm to Telegram only what was handled.

``getUpdates(offset=N)`` confirms every update below ``N``, and Telegram never sends a confirmed
update again. So the offset the intake may send is the **lowest update id handed to the
dispatcher and not yet handled**; when everything handed over is handled, one past the highest.
An update handled while a lower one is still running stays unconfirmed (Telegram may send it
again: :mod:`atlas.telegram.handled_log` recognises it).

:class:`HandledWatermark` is that rule as plain, synchronous state — no I/O, no clock — so that a
test can walk it through any order of hand-overs and completions. The intake feeds it and waits on
:meth:`HandledWatermark.wait_moved`; the dispatcher's completion reports drive it.

Rejected alternative: keeping the offset at "last handed over + 1" (what aiogram's polling does)
and confirming early — a SIGKILL then loses everything queued in the dispatcher.
"""

from __future__ import annotations

import heapq

import trio


class HandledWatermark:
    """Which update ids are handed over, which are handled, and the offset that follows from it.

    ``offset`` is None until the first update is handed over (the intake then lets Telegram
    start from its own record of what was confirmed).
    """

    def __init__(self) -> None:
        self._unhandled: set[int] = set()
        self._heap: list[int] = []  # the unhandled ids, plus handled ones not yet popped (lazy)
        self._handled: set[int] = set()  # handled ids at or above the offset (still re-sent)
        self._next: int | None = None  # one past the highest id handed over
        self._moved = trio.Event()

    @property
    def offset(self) -> int | None:
        """The ``offset`` for the next ``getUpdates``: the lowest unhandled id, or one past the last."""
        while self._heap and self._heap[0] not in self._unhandled:
            heapq.heappop(self._heap)
        if self._heap:
            return self._heap[0]
        return self._next

    @property
    def unhandled(self) -> int:
        """How many handed-over updates are not yet handled."""
        return len(self._unhandled)

    def knows(self, update_id: int) -> bool:
        """True for an id already handed over (handled or not), or below the offset (confirmed)."""
        if update_id in self._unhandled or update_id in self._handled:
            return True
        offset = self.offset
        return offset is not None and update_id < offset

    def handed_over(self, update_id: int) -> None:
        """``update_id`` went to the dispatcher; it holds the offset until :meth:`handled`."""
        if self.knows(update_id):
            return
        self._unhandled.add(update_id)
        heapq.heappush(self._heap, update_id)
        if self._next is None or update_id >= self._next:
            self._next = update_id + 1

    def handled(self, update_id: int) -> None:
        """``update_id``, handed over, is handled. Ids never handed over are ignored: a completion
        of an earlier intake's hand-over must not move this offset past updates not seen yet."""
        if update_id not in self._unhandled:
            return
        before = self.offset
        self._unhandled.discard(update_id)
        self._handled.add(update_id)
        self._advanced(before)

    def passed_over(self, update_id: int) -> None:
        """``update_id`` of the current batch needs no handling (recorded as handled already).

        Feed a batch in order, so that the offset never jumps over a lower id not yet seen.
        """
        if self.knows(update_id):
            return
        before = self.offset
        self._handled.add(update_id)
        if self._next is None or update_id >= self._next:
            self._next = update_id + 1
        self._advanced(before)

    def _advanced(self, before: int | None) -> None:
        after = self.offset
        if after is not None and after != before:
            # Forget what is now confirmed: Telegram will not send it again.
            self._handled = {i for i in self._handled if i >= after}
            self._moved.set()
            self._moved = trio.Event()

    async def wait_moved(self, since: int | None, within: float) -> bool:
        """Wait until the offset differs from ``since``, at most ``within`` seconds; True if it did."""
        if self.offset != since:
            return True
        with trio.move_on_after(within):
            while self.offset == since:
                await self._moved.wait()
            return True
        return False
