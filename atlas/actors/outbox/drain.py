"""One drain of the outbox: claim, send within the pacing, hand each result to the recorder.

A drain runs four kinds of task under one nursery:

* the **claimer** leases due rows in bounded batches (``FOR UPDATE SKIP LOCKED``) while fewer than
  about half a batch are queued and the results are keeping up;
* the **scheduler** picks the next row (:class:`~atlas.actors.outbox.queues.ChatQueues`) whenever
  a send slot and a *staging* place are free, and starts a send task for it;
* each **send task** renders the payload, marks an at-most-once row in the table (a committed unit:
  :func:`~atlas.storage.units.delivery.mark_attempts`), waits for its start slot in the global
  :class:`~atlas.telegram.pacing.Pacer` — and only then, with no await in between, calls Telegram.
  Its send slot is freed when the answer comes back; the result goes to the
  :class:`~atlas.actors.outbox.recorder.ResultBuffer` at once;
* the actor's **recorder** writes results as they come (it outlives the drain).

Why staging: the mark's round trip happens while the row waits for its start slot, so a marked
send starts exactly on its slot and the rate stays ``rate`` whatever the database latency (the
marks of the staged rows are written together: :mod:`atlas.actors.outbox.marks`), as long as a
mark takes less than the staged quarter of a second. Only that much sending (at least
:data:`STAGED` rows) waits for a slot at a time, so a personal notice that arrives during a
broadcast is at most a quarter of a second behind.

A drain that ends — done, out of time, cancelled or failed — hands back every row it did not
start (``deferred``, due at once) and, under cancellation, records the sends that were in the air
as having no answer (a notice is tried again, a broadcast copy becomes ``unknown``). A storage
error from a claim, a mark or the recorder stops new sends; the ones in the air finish, their
results are kept, and the error is raised when the drain has settled.
"""

from __future__ import annotations

import datetime as dt
import logging
import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

import trio

from atlas.actors.outbox.marks import AttemptMarker
from atlas.actors.outbox.outcomes import (
    STATUS_OF,
    Answer,
    Guarantee,
    SenderUnauthorized,
    Step,
    Verdict,
    decide,
)
from atlas.actors.outbox.payloads import PayloadError, Rendered, render
from atlas.actors.outbox.queues import ChatQueues, QueuedRow
from atlas.actors.outbox.settings import LEASE_SAFETY
from atlas.storage import StorageError
from atlas.storage.units.delivery import (
    ClaimedMessage,
    Delivery,
    DeliveryStatus,
    claim_outbox,
    mark_attempts,
)

if TYPE_CHECKING:
    from atlas.actors.outbox_sender import OutboxSender

_log = logging.getLogger("atlas.actors.outbox_sender")

STAGED = 2
"""Rows that may wait for a start slot at once (their marks are written meanwhile), at least."""

RECORDER_POLL = 0.2
"""While the recorder is failing, the scheduler looks again this often (sends wait meanwhile)."""

STAGED_SECONDS = 0.25
"""Sending time's worth of rows staged at once (when more than :data:`STAGED`): a notice is at
most this far behind a broadcast's staged copies."""


def guarantee_of(message: ClaimedMessage) -> Guarantee:
    """A broadcast copy is at most once; everything else (personal notices) at least once."""
    return Guarantee.AT_MOST_ONCE if message.at_most_once else Guarantee.AT_LEAST_ONCE


class Drain:
    """One drain of ``sender``'s outbox (see the module docstring). Use once: ``await Drain(s).run()``."""

    def __init__(self, sender: OutboxSender) -> None:
        self.sender = sender
        self.s = sender.settings
        self.deadline = trio.current_time() + self.s.tick_budget
        self.queues = ChatQueues(sender.chat_pacer.ready_at, self.s.defer_after)
        self.slots = trio.Semaphore(self.s.max_in_flight)
        self.staging = trio.Semaphore(max(STAGED, math.ceil(self.s.rate * STAGED_SECONDS)))
        self.marker = AttemptMarker(self.write_marks)
        self.changed = trio.lowlevel.ParkingLot()
        self.claiming = True
        self.sending = 0
        self.seq = 0
        self.failure: StorageError | None = None

    async def run(self) -> None:
        """Drain until nothing is due, the tick budget is spent or a storage error; see above."""
        sender = self.sender
        # Results kept from an earlier drain go first: a claim could take those rows back.
        await sender.recorder.flush()
        try:
            async with trio.open_nursery() as outer:
                outer.start_soon(sender.recorder.run, name="outbox-recorder")
                try:
                    async with trio.open_nursery() as work:
                        work.start_soon(self.claimer, name="outbox-claimer")
                        await self.schedule(work)
                finally:
                    self.give_back(self.queues.give_back_all(), 0.0)
                    await self.settle_recorder()
                    outer.cancel_scope.cancel()
        finally:
            await sender.recorder.final_flush()
        if self.failure is not None:
            raise self.failure

    async def settle_recorder(self) -> None:
        """Let the recorder write what is left, unless the database is failing (or we are cancelled)."""
        recorder = self.sender.recorder
        while len(recorder.buffer) and not recorder.failures:
            await recorder.buffer.wait_for_change()

    # -- claiming ------------------------------------------------------------------------------

    async def claimer(self) -> None:
        """Lease due rows in batches while the queues and the results have room (contract 3)."""
        s, sender = self.s, self.sender
        try:
            while trio.current_time() < self.deadline and self.failure is None:
                if self.queues.queued >= s.batch // 2 + 1:
                    await self.wait_for_change()  # enough queued: wait for sends to take some
                    continue
                if len(sender.buffer) >= s.batch:
                    await sender.buffer.wait_for_change()  # results pile up: let the recorder catch up
                    continue
                limit = s.batch - self.queues.queued
                now = sender.clock.now()
                try:
                    claimed = await sender.db().run(
                        claim_outbox,
                        now=now,
                        owner=sender.owner,
                        lease_until=now + sender.clock.business_span(s.lease),
                        limit=limit,
                    )
                except StorageError as exc:
                    self.fail(exc)
                    return
                lease_deadline = trio.current_time() + s.lease
                for message in claimed:
                    given = self.queues.add(QueuedRow(message, self.seq, lease_deadline), trio.current_time())
                    self.seq += 1
                    if given is not None:
                        self.give_back(given.rows, given.delay)
                sender.heartbeat()
                self.changed.unpark_all()
                if len(claimed) < limit:
                    break  # nothing more is due now; the next tick looks again
        finally:
            self.claiming = False
            self.changed.unpark_all()

    # -- scheduling ----------------------------------------------------------------------------

    async def schedule(self, work: trio.Nursery) -> None:
        """Start the best ready row whenever a slot and a staging place are free; end when idle."""
        recorder = self.sender.recorder
        while True:
            if recorder.failures and self.failure is None and self.sending == 0:
                # Results cannot be written: every further send would widen the window in which
                # a crash doubles a notice. Stop; the results are kept; the error ends the drain.
                assert recorder.last_error is not None
                self.fail(recorder.last_error)
            if (
                self.failure is None
                and not recorder.failures
                and self.queues.has_ready(trio.current_time())
            ):
                await self.slots.acquire()
                try:
                    await self.staging.acquire()
                except BaseException:
                    self.slots.release()
                    raise
                row = self.queues.take(trio.current_time())
                self.sending += 1
                work.start_soon(self.send_one, row)
                continue
            if not self.claiming and self.sending == 0:
                if self.failure is not None or not self.queues.queued:
                    return
                # Only paused chats are left: give their rows back (due when the pause ends) and
                # end the drain now rather than idle until then; the next tick claims them.
                for given in self.queues.give_back_waiting(trio.current_time()):
                    self.give_back(given.rows, given.delay)
                continue
            wake_at = self.queues.next_ready_at()
            if recorder.failures:
                wake_at = min(wake_at, trio.current_time() + RECORDER_POLL)
            with trio.move_on_at(wake_at):
                await self.wait_for_change()

    async def wait_for_change(self) -> None:
        """Return after the next claim, finished send or failure."""
        await self.changed.park()

    def fail(self, exc: StorageError) -> None:
        """Stop new sends and claims because of ``exc``; the drain raises it once it has settled."""
        if self.failure is None:
            self.failure = exc
            _log.error("outbox drain stops sending: %s", exc)
        self.changed.unpark_all()
        self.sender.buffer.notify()

    async def write_marks(self, ids: Sequence[int]) -> list[int]:
        """The marker's unit of work: mark ``ids`` as being sent by this sender."""
        sender = self.sender
        marked: list[int] = await sender.db().run(
            mark_attempts, now=sender.clock.now(), owner=sender.owner, ids=list(ids)
        )
        return marked

    # -- sending -------------------------------------------------------------------------------

    async def send_one(self, row: QueuedRow) -> None:
        """Stage, start on the slot, answer, result (see the module docstring)."""
        sender, message = self.sender, row.message
        # Until something else is known, the row is "not started": cancelled while staged (maybe
        # marked), it is given back, which also clears its mark.
        verdict = Verdict(Answer.NOT_STARTED)
        rendered: Rendered | None = None
        started = False
        try:
            try:
                refusal, rendered = await self.stage(row)
            finally:
                self.staging.release()
            if refusal is not None:
                verdict = refusal
            if rendered is not None:
                started = True
                try:
                    verdict = await sender.send(message, *rendered)
                except SenderUnauthorized:
                    verdict = Verdict(Answer.NOT_STARTED)  # 401: Telegram took nothing
                    raise
                except BaseException:
                    verdict = Verdict(Answer.NO_ANSWER, "the sender stopped while the send was in the air")
                    raise
        finally:
            self.slots.release()
            now = trio.current_time()
            if started:
                sender.chat_pacer.note_answered(message.chat_id, now)
            requeue = self.settle(message, verdict)
            given = self.queues.finished(row, now, requeue=requeue)
            if given is not None:
                self.give_back(given.rows, given.delay)
            self.sending -= 1
            self.changed.unpark_all()

    async def stage(self, row: QueuedRow) -> tuple[Verdict | None, Rendered | None]:
        """Everything before the send: (None, what to send) to send now, or (verdict, None) not to."""
        sender, message = self.sender, row.message
        try:
            rendered = render(message, sender.translator)
        except PayloadError as exc:
            return Verdict(Answer.BAD_PAYLOAD, str(exc)), None
        if trio.current_time() > row.lease_deadline - self.s.send_timeout - LEASE_SAFETY:
            # Too little lease left to be sure nobody else holds the row when we send.
            return Verdict(Answer.NOT_STARTED), None
        if self.stopping():
            return Verdict(Answer.NOT_STARTED), None
        if message.at_most_once:
            try:
                marked = await self.marker.mark(message.id)
            except StorageError as exc:
                self.fail(exc)
                return Verdict(Answer.NOT_STARTED), None  # clears the mark, if it was written after all
            if not marked:
                # Another sender holds the row now; the record of this will count as not owned.
                return Verdict(Answer.NOT_STARTED, "lease lost before the send"), None
        await sender.pacer.acquire()
        if self.stopping():
            return Verdict(Answer.NOT_STARTED), None  # the slot is lost: the pacer errs slow
        sender.heartbeat()
        return None, rendered

    def stopping(self) -> bool:
        """True once no new send may start: a storage error, or results that cannot be written."""
        return self.failure is not None or self.sender.recorder.failures > 0

    def settle(self, message: ClaimedMessage, verdict: Verdict) -> bool:
        """Turn a verdict into a result for the recorder; True when the row goes back to its chat."""
        sender = self.sender
        if verdict.answer is Answer.THROTTLED:
            sender.note_429(message.chat_id, verdict.retry_after or 1.0)
            return True
        if verdict.answer is not Answer.NOT_STARTED:
            sender.note_answer()
        step = decide(
            verdict.answer, guarantee_of(message), attempts=message.attempts, max_attempts=self.s.max_attempts
        )
        sender.buffer.add(self.delivery(message, step, verdict))
        return False

    def delivery(self, message: ClaimedMessage, step: Step, verdict: Verdict) -> Delivery:
        """The :class:`Delivery` that records ``step`` for ``message`` (retry time, reason)."""
        sender = self.sender
        status = STATUS_OF[step]
        error = verdict.error
        when: dt.datetime | None = None
        if step is Step.RECORD_RETRY:
            when = sender.retry_time(message.attempts + 1)
        elif step is Step.RECORD_DEFERRED:
            when = sender.clock.now()
        elif step is Step.RECORD_FAILED and verdict.answer in (Answer.SERVER_ERROR, Answer.NO_ANSWER):
            error = f"gave up after {message.attempts + 1} attempts: {error}"
        return Delivery(message.id, message.chat_id, status, error, when)

    def give_back(self, rows: list[QueuedRow], delay: float) -> None:
        """Rows not started go back to the table, due ``delay`` seconds from now."""
        if not rows:
            return
        seconds = delay if math.isfinite(delay) and delay > 0 else 0.0
        when = self.sender.clock.now() + self.sender.clock.business_span(seconds)
        reason = "chat paused" if seconds else None
        for row in rows:
            message = row.message
            deferred = Delivery(message.id, message.chat_id, DeliveryStatus.DEFERRED, reason, when)
            self.sender.buffer.add(deferred)

