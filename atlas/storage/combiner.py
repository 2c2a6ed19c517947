"""``UnitCombiner``: concurrent requests for one batch unit coalesced into one transaction each.

Group commit, as databases do it for their own log: a caller submits one request and waits; while
a batch is running, the requests that arrive queue up, and the next batch takes all of them (up to
``max_batch``) into one ``db.run`` of a unit that handles a list. One transaction, one commit and
one set of round trips then serve the whole batch, and each caller gets back its own result.

There is no background task to supervise: the callers run the batches themselves. A caller that
finds fewer than ``max_in_flight`` batches running takes the head of the queue (its own request
among it, unless the queue is longer than a batch) and runs it; the others park until a batch ends,
then look again. So an idle system applies a lone request at once (a batch of one, no waiting for
company) and a busy one forms batches as large as the load.

Failures:

* A refusal of one request (a payment unknown, mismatched, already applied) is that request's
  *result*: the batch unit decides per request and never raises for one of them.
* The unit raising means the batch rolled back. When the cause is the database or the budget
  (:data:`SHARED_FAILURES`: it would fail any batch alike), every caller of the batch gets that
  error. Anything else may be one request's doing, so each request of the batch is run again alone,
  and each caller gets its own result or its own exception.

Cancellation: a caller cancelled while its request is still queued takes it out of the queue (it
never runs). Once its batch has started, the batch is not cancelled with it (that would roll back
the other callers' work): the running caller finishes the batch in a shielded scope, bounded by
``db.run``'s own timeouts, and then sees its cancellation; a cancelled caller whose request was in
someone else's batch simply does not hear the result. Either way the request may have taken
effect, as it may when a connection drops after ``COMMIT``: units run through a combiner must be
idempotent (``apply_payments`` is, per provider charge).
"""

from __future__ import annotations

import weakref
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import trio

from atlas.storage.database import Database
from atlas.storage.errors import BudgetExhausted, DatabaseUnavailable, TransactionConflict

R = TypeVar("R")
T = TypeVar("T")

BatchUnit = Callable[..., Awaitable[list[T]]]
"""``async def unit(tx, *, requests: Sequence[R]) -> list[T]``: one result per request, in order."""

SHARED_FAILURES: tuple[type[BaseException], ...] = (
    DatabaseUnavailable,
    BudgetExhausted,
    TransactionConflict,
    trio.TooSlowError,
)
"""Errors that say nothing about the batch's requests: given to every caller, never retried alone."""


@dataclass(frozen=True, slots=True)
class CombinerStatistics:
    """What a combiner has done since it was made (for benchmarks, metrics and tests)."""

    batches: int
    requests: int
    largest_batch: int
    batches_split: int
    queued: int
    in_flight: int


class _Waiter(Generic[R, T]):
    __slots__ = ("error", "finished", "request", "result")

    def __init__(self, request: R) -> None:
        self.request = request
        self.finished = False
        self.result: T | None = None
        self.error: BaseException | None = None


class UnitCombiner(Generic[R, T]):
    """Runs ``unit`` over batches of concurrently submitted requests (see the module docstring).

    ``max_batch`` bounds the requests per transaction (and the unit's arrays); ``max_in_flight``
    the batches running at once, each holding one connection token while it runs (``db.run``'s
    budget still decides: with a pool of one, the second batch waits for the token). Two let one
    batch's Python run while the other's statements are on the server. ``db`` needs only ``run``.
    """

    def __init__(
        self, db: Database, unit: BatchUnit[T], *, max_batch: int = 32, max_in_flight: int = 2
    ) -> None:
        if not 1 <= max_batch <= 1000:
            raise ValueError(f"max_batch must be 1..1000, got {max_batch!r}")
        if not 1 <= max_in_flight <= 64:
            raise ValueError(f"max_in_flight must be 1..64, got {max_in_flight!r}")
        self._db = db
        self._unit = unit
        self._max_batch = max_batch
        self._max_in_flight = max_in_flight
        self._queue: deque[_Waiter[R, T]] = deque()
        self._in_flight = 0
        self._batch_ended = trio.lowlevel.ParkingLot()
        self._batches = 0
        self._requests = 0
        self._largest = 0
        self._split = 0

    async def submit(self, request: R) -> T:
        """Have ``request`` applied in some batch and return its own result (or raise its error)."""
        waiter: _Waiter[R, T] = _Waiter(request)
        self._queue.append(waiter)
        try:
            while not waiter.finished:
                # Queued, or in a batch someone else is running (then: park until it ends).
                if self._queue and self._in_flight < self._max_in_flight:
                    await _let_the_woken_queue()
                    if self._queue and self._in_flight < self._max_in_flight:
                        await self._run_batch()
                else:
                    await self._batch_ended.park()
        finally:
            if not waiter.finished and waiter in self._queue:
                self._queue.remove(waiter)  # cancelled before any batch took it
        if waiter.error is not None:
            raise waiter.error
        return waiter.result  # type: ignore[return-value]  # finished without error: set

    def statistics(self) -> CombinerStatistics:
        """Counters and the current queue (a snapshot)."""
        return CombinerStatistics(
            self._batches, self._requests, self._largest, self._split, len(self._queue), self._in_flight
        )

    async def _run_batch(self) -> None:
        batch = [self._queue.popleft() for _ in range(min(self._max_batch, len(self._queue)))]
        self._in_flight += 1
        self._batches += 1
        self._requests += len(batch)
        self._largest = max(self._largest, len(batch))
        try:
            with trio.CancelScope(shield=True):
                await self._settle(batch)
        finally:
            self._in_flight -= 1
            self._batch_ended.unpark_all()

    async def _settle(self, batch: Sequence[_Waiter[R, T]]) -> None:
        try:
            results = await self._db.run(self._unit, requests=[w.request for w in batch])
        except SHARED_FAILURES as exc:
            _finish_all(batch, exc)
            return
        except Exception as exc:  # noqa: BLE001 - handed to its callers, never swallowed
            if len(batch) == 1:
                _finish_all(batch, exc)
                return
            self._split += 1
            for waiter in batch:  # each request alone: the one at fault fails, the others do not
                await self._settle([waiter])
            return
        if len(results) != len(batch):
            _finish_all(batch, AssertionError(f"batch unit returned {len(results)} results for {len(batch)}"))
            return
        for waiter, result in zip(batch, results, strict=True):
            waiter.result = result
            waiter.finished = True


async def _let_the_woken_queue() -> None:
    """Yield until every task scheduled with this one has run (two passes of trio's scheduler).

    The end of a batch wakes all of its callers at once, and each comes back with its next request.
    Forming the next batch only after they have run makes it one batch for all of them instead of a
    batch of whoever ran first and another of the rest: measured with 10 closed-loop callers, 3.4
    payments per batch without, 10 with (docs/benchmarks.md, session 5). Two passes, because trio may run a
    batch of ready tasks in reverse order: after the first, this task can run before the others of
    its pass; after the second, they have all run. No time passes, so a lone request waits for
    nothing, and the yield cannot be cancelled (a queued request stays queued or runs).
    """
    await trio.lowlevel.cancel_shielded_checkpoint()
    await trio.lowlevel.cancel_shielded_checkpoint()


def _finish_all(batch: Sequence[_Waiter[Any, Any]], error: BaseException) -> None:
    for waiter in batch:
        waiter.error = error
        waiter.finished = True


_COMBINERS: weakref.WeakKeyDictionary[Database, dict[object, UnitCombiner[Any, Any]]] = (
    weakref.WeakKeyDictionary()
)


def combiner_for(db: Database, unit: BatchUnit[T], **options: int) -> UnitCombiner[Any, T]:
    """The one combiner of ``unit`` on ``db`` (made on first use with ``options``).

    One per database and unit, so that every caller in the process (a webhook, a watcher) joins the
    same batches; it lives as long as ``db``.
    """
    per_db = _COMBINERS.setdefault(db, {})
    combiner = per_db.get(unit)
    if combiner is None:
        combiner = per_db[unit] = UnitCombiner(db, unit, **options)
    return combiner
