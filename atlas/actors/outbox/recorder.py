"""Delivery results from "known" to "in the table", as soon as possible, through outages.

Why a buffer and a task of its own: a result must not hold a send slot while it waits for the
database (the rate would then depend on the database), and it must not wait for a batch to fill
either (a result not yet written is a message that a crash would resend). So send tasks append
each result to a :class:`ResultBuffer` the moment they know it, and one recorder task writes
whatever is there — one result, or all that piled up while the previous write ran — in one unit
of work (group commit without a linger).

When a write fails (:class:`~atlas.storage.StorageError`: the database is away), the results stay
in the buffer, in order, and the recorder tries again with backoff. The buffer belongs to the
actor, not to one drain, so it outlives a drain that ends and an actor restart; a new drain writes
it out *before* it claims anything (:meth:`Recorder.flush`), because a claim could otherwise take
back a row whose result is still in memory and send it again. The buffer is bounded by the work a
sender holds (the claimer stops claiming while results pile up), and :data:`BUFFER_LIMIT` is
enforced as a last line: past it a result is dropped with an error log (the row then returns when
its lease expires — for a broadcast copy, as ``unknown``). A process that dies loses the buffer;
that is the window the lease covers.
"""

from __future__ import annotations

import logging
import random
from collections import deque
from collections.abc import Awaitable, Callable, Sequence

import trio

from atlas.storage import StorageError
from atlas.storage.units.delivery import Delivery, RecordSummary
from atlas.supervision import Backoff

_log = logging.getLogger("atlas.actors.outbox_sender")

MAX_RECORD_BATCH = 500
"""Results per unit of work."""

BUFFER_LIMIT = 20_000
"""Results kept unwritten at most (far above what a sender holds: ``2 × batch + max_in_flight``)."""

WriteResults = Callable[[Sequence[Delivery]], Awaitable[RecordSummary]]
Written = Callable[[Sequence[Delivery], RecordSummary], None]


class ResultBuffer:
    """Results known and not yet written, oldest first. Send tasks :meth:`add`; the recorder takes."""

    def __init__(self, limit: int = BUFFER_LIMIT) -> None:
        self._items: deque[Delivery] = deque()
        self._limit = limit
        self._changed = trio.lowlevel.ParkingLot()
        self.dropped = 0

    def __len__(self) -> int:
        return len(self._items)

    def add(self, delivery: Delivery) -> None:
        """Keep ``delivery`` for the recorder. Never blocks (safe in ``finally`` under cancellation)."""
        if len(self._items) >= self._limit:
            self.dropped += 1
            _log.error(
                "result buffer full (%d): result for outbox row %d dropped; the row returns when its "
                "lease expires",
                self._limit,
                delivery.id,
            )
            return
        self._items.append(delivery)
        self._changed.unpark_all()

    def peek(self, most: int) -> list[Delivery]:
        """The oldest ``most`` results, left in place (a write that is cancelled loses none)."""
        return [self._items[i] for i in range(min(most, len(self._items)))]

    def drop(self, count: int) -> None:
        """Forget the oldest ``count`` results: they are in the table."""
        for _ in range(count):
            self._items.popleft()
        self._changed.unpark_all()

    def notify(self) -> None:
        """Wake whoever waits for a change (the recorder failed a write, say)."""
        self._changed.unpark_all()

    async def wait_for_change(self) -> None:
        """Return after the next add, drop or :meth:`notify`."""
        await self._changed.park()


class Recorder:
    """Writes a :class:`ResultBuffer` out through ``write``; ``written`` hears of every success."""

    def __init__(
        self,
        buffer: ResultBuffer,
        write: WriteResults,
        written: Written,
        *,
        backoff: Backoff,
        rng: random.Random,
    ) -> None:
        self.buffer = buffer
        self._write = write
        self._written = written
        self._backoff = backoff
        self._rng = rng
        self.failures = 0
        """Consecutive failed writes (0: the last write worked)."""
        self.last_error: StorageError | None = None

    async def run(self) -> None:
        """Write results as they come, until cancelled. Never raises a storage error: it retries."""
        while True:
            failed_before = self.failures
            while not len(self.buffer):
                await self.buffer.wait_for_change()
            try:
                await self._write_some()
            except StorageError as exc:
                self.failures += 1
                self.last_error = exc
                self.buffer.notify()
                delay = self._backoff.delay(self.failures, self._rng)
                if self.failures == 1:
                    _log.error(
                        "could not record %d delivery results (%s); kept, retrying every %.1fs or so",
                        len(self.buffer),
                        exc,
                        delay,
                    )
                await trio.sleep(delay)
            else:
                if failed_before:
                    _log.info("delivery results written again after %d failed tries", failed_before)

    async def flush(self) -> None:
        """Write everything in the buffer now; a :class:`~atlas.storage.StorageError` propagates."""
        while len(self.buffer):
            await self._write_some()
        self.failures = 0

    async def final_flush(self, timeout: float = 5.0) -> None:  # noqa: ASYNC109 - shielded, time-boxed
        """Shielded and time-boxed: what cannot be written now stays in the buffer for the next drain."""
        if not len(self.buffer):
            return
        with trio.CancelScope(shield=True), trio.move_on_after(timeout) as box:
            try:
                await self.flush()
            except StorageError as exc:
                _log.error(
                    "could not record %d delivery results (%s); kept for when the database is back",
                    len(self.buffer),
                    exc,
                )
        if box.cancelled_caught:
            _log.error("recording delivery results timed out; %d kept for the next drain", len(self.buffer))

    async def _write_some(self) -> None:
        batch = self.buffer.peek(MAX_RECORD_BATCH)
        summary = await self._write(batch)
        self.failures = 0
        self.buffer.drop(len(batch))
        self._written(batch, summary)
