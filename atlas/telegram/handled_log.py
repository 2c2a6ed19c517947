"""The durable record of handled updates: what lets the next process skip a re-delivered update.

Telegram delivers an update again when it was not confirmed: polling, a poller SIGKILLed after
handling an update but before its offset passed it (a lower update was still running, or the next
``getUpdates`` was not sent yet); webhook, an answer that never reached Telegram. The dispatcher's
own dedupe (by ``update_id``, in memory) dies with the process, so the ids handled are written to
``telegram_handled_updates`` and whichever process receives the update next looks there.

Writes are batched: the dispatcher reports each completion to :meth:`HandledLog.note` (memory
only, no I/O on the hot path), and :meth:`HandledLog.run` writes everything noted in one
``INSERT ... unnest`` every ``flush_every`` seconds (0.25 s by default). A statement per update
would add a database round trip to every update the bot handles. Most completions need no hurry:
an update that finishes as the lowest unhandled one is confirmed by the intake's next
``getUpdates``, sent as soon as the offset moves. One that finishes while a lower one still runs
stays unconfirmed, so the intake calls :meth:`HandledLog.hurry` and the log writes at once (what
finishes during that INSERT goes into the next: group commit).

**The remaining window**: an update whose reply reached Telegram and which was neither recorded
nor confirmed when the process was SIGKILLed is handled again by the next process, and the user
gets a second reply. That window runs from the reply to the end of its handler, then until the
next ``getUpdates`` reaches Telegram (it finished as the lowest: a local HTTP request, a few
milliseconds) or until one INSERT commits (it finished above a lower one): milliseconds, on a
healthy database. While the database is away the window lasts until a flush succeeds. Webhook
updates are never hurried: they are answered 200 right after handling, and only an answer lost
with the process leaves them unrecorded for up to ``flush_every``. Cancellation (a graceful stop)
flushes what is noted, shielded and time-boxed.

A flush that fails (the database is away) keeps its ids and tries again on the next interval; at
most ``max_buffered`` ids are kept (the oldest are dropped, with a warning: only their re-delivery
would then be handled twice).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

import trio

from atlas.clock import Clock
from atlas.storage import Database, StorageError
from atlas.storage.units.handled_updates import (
    MAX_IDS,
    handled_among,
    highest_handled_update,
    record_handled_updates,
)
from atlas.supervision import ChildContext, ChildSpec, RestartType

_log = logging.getLogger("atlas.telegram.handled_log")


class HandledLog:
    """Handled update ids of one bot: noted in memory, written in batches, looked up on re-delivery.

    ``db`` returns the open Database (as the runtime's services provide it), ``bot_id`` is the
    bot's id (update ids are per bot), ``clock`` stamps the rows for pruning.
    """

    def __init__(
        self,
        *,
        db: Callable[[], Database],
        bot_id: int,
        clock: Clock,
        flush_every: float = 0.25,
        max_buffered: int = 50_000,
        final_flush_within: float = 5.0,
    ) -> None:
        if not flush_every > 0 or not final_flush_within > 0 or max_buffered < 1:
            raise ValueError("flush_every and final_flush_within must be > 0, max_buffered >= 1")
        self._db = db
        self.bot_id = bot_id
        self._clock = clock
        self.flush_every = flush_every
        self._max_buffered = max_buffered
        self._final_flush_within = final_flush_within
        self._noted: list[int] = []
        self._noted_set: set[int] = set()
        self._urgent = trio.Event()
        self.recorded = 0
        self.flushes = 0
        self.dropped = 0

    # -- writing ---------------------------------------------------------------------------------

    def note(self, update_id: int) -> None:
        """``update_id`` was handled: recorded at the next flush (the dispatcher's completion report)."""
        if update_id in self._noted_set:
            return
        self._noted.append(update_id)
        self._noted_set.add(update_id)
        if len(self._noted) > self._max_buffered:
            oldest = self._noted.pop(0)
            self._noted_set.discard(oldest)
            self.dropped += 1
            if self.dropped == 1 or self.dropped % 1000 == 0:
                _log.warning("handled-update log: %d ids dropped unrecorded (the database is away)",
                             self.dropped)  # fmt: skip

    def hurry(self) -> None:
        """Write what is noted now rather than at the end of the interval (see the module)."""
        self._urgent.set()

    async def flush(self) -> int:
        """Write every id noted so far, one statement per ``MAX_IDS``; return how many were written.

        On a storage failure the ids stay noted (written by a later flush) and the error propagates.
        """
        written = 0
        while self._noted:
            batch = self._noted[:MAX_IDS]
            await self._db().run(
                record_handled_updates, bot_id=self.bot_id, update_ids=batch, now=self._clock.now()
            )
            # Only now forget them: a cancelled or failed write leaves them noted.
            del self._noted[: len(batch)]
            self._noted_set.difference_update(batch)
            written += len(batch)
        if written:
            self.recorded += written
            self.flushes += 1
        return written

    async def run(
        self,
        ctx: ChildContext | None = None,
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Flush every ``flush_every`` seconds, or at once when hurried, until cancelled; then a last
        flush, shielded and time-boxed. A failed flush is logged and tried again on the next round."""
        task_status.started()
        try:
            while True:
                with trio.move_on_after(self.flush_every):
                    await self._urgent.wait()
                self._urgent = trio.Event()
                if ctx is not None:
                    ctx.heartbeat()
                try:
                    await self.flush()
                except StorageError as exc:
                    _log.warning("handled-update log: flush failed (%s); %d ids kept for the next", exc,
                                 len(self._noted))  # fmt: skip
        finally:
            with trio.CancelScope(shield=True), trio.move_on_after(self._final_flush_within):
                try:
                    await self.flush()
                except StorageError as exc:
                    _log.warning("handled-update log: last flush failed (%s); %d ids unrecorded", exc,
                                 len(self._noted))  # fmt: skip

    def child_spec(self, name: str = "handled_log", shutdown_timeout: float = 10.0) -> ChildSpec:
        """A permanent child running :meth:`run`; start it before the dispatcher (stopped after it)."""
        return ChildSpec(
            name=name, start=self.run, restart=RestartType.PERMANENT, shutdown_timeout=shutdown_timeout
        )

    # -- reading ---------------------------------------------------------------------------------

    async def recorded_among(self, update_ids: Sequence[int]) -> set[int]:
        """Those of ``update_ids`` handled already: noted here, or recorded by any process."""
        known = {i for i in update_ids if i in self._noted_set}
        rest = [i for i in update_ids if i not in known]
        if rest:
            known |= await self._db().run(handled_among, bot_id=self.bot_id, update_ids=rest)
        return known

    async def highest(self) -> int | None:
        """The highest update id recorded as handled (by any process); None before the first."""
        return await self._db().run(highest_handled_update, bot_id=self.bot_id)
