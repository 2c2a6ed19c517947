"""Which claimed row goes next: per-chat queues in claim order, chats ordered by readiness.

Synchronous on purpose (decide first, then do the I/O): the drain asks this module for the next
row and gets back the rows to give up; it never awaits inside a decision. The rules:

* a chat has at most one send in the air (``busy``), and its rows go in claim order;
* a chat is *ready* once its :class:`~atlas.telegram.pacing.ChatPacer` slot has come; among ready
  chats the head row with the lowest priority (0: personal notices, 1: broadcasts), then the
  oldest claim, goes first;
* a chat whose slot is more than ``defer_after`` away (a long 429 pause) gives all its rows back
  to the table, due when the pause ends, instead of holding them under the lease.
"""

from __future__ import annotations

import heapq
import math
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from atlas.storage.units.delivery import ClaimedMessage


@dataclass(slots=True)
class QueuedRow:
    """A claimed row and what the drain knows of it: claim order and the trio time its lease ends."""

    message: ClaimedMessage
    seq: int
    lease_deadline: float


@dataclass(slots=True)
class _Chat:
    rows: deque[QueuedRow] = field(default_factory=deque)
    busy: bool = False
    scheduled: bool = False


@dataclass(frozen=True, slots=True)
class GivenBack:
    """Rows handed back unsent, due ``delay`` seconds from now."""

    rows: list[QueuedRow]
    delay: float


class ChatQueues:
    """The claimed, unsent rows of one drain. ``ready_at(chat)`` is the per-chat pacer's answer."""

    def __init__(self, ready_at: Callable[[int], float], defer_after: float) -> None:
        self._ready_at = ready_at
        self._defer_after = defer_after
        self._chats: dict[int, _Chat] = {}
        self._waiting: list[tuple[float, int, int]] = []  # (ready at, seq, chat)
        self._ready: list[tuple[int, int, int]] = []  # (priority, seq, chat)
        self.queued = 0

    def add(self, row: QueuedRow, now: float) -> GivenBack | None:
        """Queue a freshly claimed row; its chat may turn out paused for long (rows given back)."""
        chat = self._chats.setdefault(row.message.chat_id, _Chat())
        chat.rows.append(row)
        self.queued += 1
        return self._place(row.message.chat_id, now)

    def has_ready(self, now: float) -> bool:
        """True when some chat may send now."""
        self._promote(now)
        return bool(self._ready)

    def next_ready_at(self) -> float:
        """When the earliest waiting chat becomes ready (``inf``: none waits)."""
        return self._waiting[0][0] if self._waiting else math.inf

    def take(self, now: float) -> QueuedRow:
        """The best ready row; its chat is busy until :meth:`finished`. Only after :meth:`has_ready`."""
        self._promote(now)
        _, _, chat_id = heapq.heappop(self._ready)
        chat = self._chats[chat_id]
        chat.scheduled = False
        chat.busy = True
        self.queued -= 1
        return chat.rows.popleft()

    def finished(self, row: QueuedRow, now: float, *, requeue: bool = False) -> GivenBack | None:
        """The send of ``row`` is over (``requeue``: put it back at the head, a short 429 pause)."""
        chat_id = row.message.chat_id
        chat = self._chats[chat_id]
        chat.busy = False
        if requeue:
            chat.rows.appendleft(row)
            self.queued += 1
        return self._place(chat_id, now)

    def give_back_waiting(self, now: float) -> list[GivenBack]:
        """Hand back every row of the chats that are not ready yet, each due when its chat is."""
        out: list[GivenBack] = []
        while self._waiting:
            at, _, chat_id = heapq.heappop(self._waiting)
            out.append(self._drop_chat(chat_id, max(0.0, at - now)))
        return out

    def give_back_all(self) -> list[QueuedRow]:
        """Every queued row (the drain is ending); the queues are empty afterwards."""
        rows = [row for chat in self._chats.values() for row in chat.rows]
        self._chats = {chat_id: _Chat(busy=True) for chat_id, c in self._chats.items() if c.busy}
        self._waiting.clear()
        self._ready.clear()
        self.queued = 0
        return rows

    def _promote(self, now: float) -> None:
        while self._waiting and self._waiting[0][0] <= now:
            _, seq, chat_id = heapq.heappop(self._waiting)
            chat = self._chats[chat_id]
            heapq.heappush(self._ready, (chat.rows[0].message.priority, seq, chat_id))

    def _place(self, chat_id: int, now: float) -> GivenBack | None:
        chat = self._chats.get(chat_id)
        if chat is None or chat.busy or chat.scheduled:
            return None
        if not chat.rows:
            del self._chats[chat_id]
            return None
        at = self._ready_at(chat_id)
        if at - now > self._defer_after:
            return self._drop_chat(chat_id, at - now)
        chat.scheduled = True
        head = chat.rows[0]
        if at <= now:
            heapq.heappush(self._ready, (head.message.priority, head.seq, chat_id))
        else:
            heapq.heappush(self._waiting, (at, head.seq, chat_id))
        return None

    def _drop_chat(self, chat_id: int, delay: float) -> GivenBack:
        chat = self._chats.pop(chat_id)
        self.queued -= len(chat.rows)
        return GivenBack(list(chat.rows), delay)
