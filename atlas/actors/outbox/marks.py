"""Attempt marks for at-most-once rows, written before their sends, many in one unit of work.

A broadcast copy may be sent only after a committed unit says "this row's attempt has started"
(:func:`~atlas.storage.units.delivery.mark_attempts`): then a sender that dies after the send
leaves a row that is known to be maybe-delivered, and it is never sent again. One unit per
message would cost a round trip per send and, at a high rate, become the bottleneck, so
:class:`AttemptMarker` coalesces: whoever asks while no write is running writes everything asked
for so far in one unit; the others wait for that write (or the next) to answer them.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence

import trio

from atlas.storage import StorageError

WriteMarks = Callable[[Sequence[int]], Awaitable[Sequence[int]]]


class AttemptMarker:
    """``await mark(row_id)``: True once the mark is committed, False if the row is no longer ours.

    A :class:`~atlas.storage.StorageError` of the write that carried the mark is raised to every
    row in it (the mark may or may not be in the table: the caller must not send, and records the
    row as not started, which clears a mark that did land). Cancelled while waiting: the mark may
    still be written by someone else's write; the row is then recorded as not started anyway.
    """

    def __init__(self, write: WriteMarks, *, most: int = 1000) -> None:
        self._write = write
        self._most = most
        self._queued: list[int] = []
        self._answers: dict[int, bool | StorageError] = {}
        self._answered = trio.lowlevel.ParkingLot()
        self._writing = False
        self.writes = 0

    async def mark(self, row_id: int) -> bool:
        """Mark ``row_id``; see the class docstring."""
        self._queued.append(row_id)
        try:
            while row_id not in self._answers:
                if self._writing:
                    await self._answered.park()
                else:
                    await self._write_queued()
        except BaseException:
            if row_id in self._queued:
                self._queued.remove(row_id)
            self._answers.pop(row_id, None)
            raise
        answer = self._answers.pop(row_id)
        if isinstance(answer, StorageError):
            raise answer
        return answer

    async def _write_queued(self) -> None:
        self._writing = True
        batch, self._queued = self._queued[: self._most], self._queued[self._most :]
        try:
            try:
                marked = set(await self._write(batch))
            except StorageError as exc:
                for row_id in batch:
                    self._answers[row_id] = exc
            else:
                for row_id in batch:
                    self._answers[row_id] = row_id in marked
            self.writes += 1
        except BaseException:
            # This write was cancelled; the others in it ask again (their rows stay queued).
            self._queued[:0] = batch
            raise
        finally:
            self._writing = False
            self._answered.unpark_all()
