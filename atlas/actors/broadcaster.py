"""The broadcaster: materialises confirmed broadcasts into the outbox and keeps the admin informed.

Each tick (and each ``"wake"`` cast, sent by the admin screen right after a confirm):

1. Read the broadcasts with work left (:func:`~atlas.storage.units.broadcasts.active_broadcasts`).
2. For one that is ``confirmed``/``materializing``: write its recipients in bounded batches
   (:func:`~atlas.storage.units.broadcasts.materialize_batch`, keyset over ``users.id``), one short
   transaction per batch, until done or the tick budget is spent; after every batch the outbox
   sender is woken (``wake()``) so sending starts while later batches are still written.
3. Refresh the admin's progress message (``editMessageText``) from
   :func:`~atlas.storage.units.delivery.broadcast_progress`, at most once per ``progress_interval``
   per broadcast, and only when the text changed.
4. When a ``sending`` broadcast has no pending row left: edit the final counts (sent, blocked,
   failed) into the progress message, then mark it ``done``
   (:func:`~atlas.storage.units.broadcasts.finish_broadcast`). If Telegram cannot be reached for
   that edit (5xx, network), the broadcast stays ``sending`` and the next tick tries again, so the
   admin always gets the final count.

**One writer per broadcast.** With several ``atlas run`` processes every broadcaster materialises
(safe: the dedupe key writes each recipient once), but only one may edit the admin's progress
message, or two would race each other's counts. The writer is the process whose outbox sender
leads (``may_edit``, wired to :attr:`OutboxSender.leads
<atlas.actors.outbox_sender.OutboxSender.leads>`): the process that sends the broadcast reports
on it, and the advisory lock that elects the sender makes it exactly one.

A crash at any point loses nothing: the cursor and the outbox rows are in the database, and the
dedupe key ``broadcast:<id>:<user>`` makes a repeated batch write nothing twice. Progress edits are
best effort (a 400 "message is not modified" or a deleted message is logged and skipped); they are
not messages to users, so they do not go through the outbox's pacing.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import random
from collections.abc import Callable
from dataclasses import dataclass

import trio
from aiogram import Bot
from aiogram.exceptions import TelegramAPIError, TelegramNetworkError, TelegramRetryAfter, TelegramServerError

from atlas.actors.base import Actor, MailboxFull
from atlas.clock import Clock
from atlas.storage import Database
from atlas.storage.units.broadcasts import (
    BroadcastView,
    active_broadcasts,
    finish_broadcast,
    materialize_batch,
)
from atlas.storage.units.delivery import BroadcastProgress, broadcast_progress
from atlas.telegram.i18n import Translator, bundled

_log = logging.getLogger("atlas.actors.broadcaster")


@dataclass(frozen=True, slots=True)
class BroadcasterSettings:
    """All optional:

    - ``batch`` (500, 1..5000): recipients written per transaction.
    - ``poll_interval`` (1 s): the tick period.
    - ``tick_budget`` (10 s): a tick stops materialising after this long (contract 3).
    - ``progress_interval`` (2 s): the least time between two progress edits of one broadcast.
    - ``edit_timeout`` (10 s): one progress edit at most this long.
    """

    batch: int = 500
    poll_interval: float = 1.0
    tick_budget: float = 10.0
    progress_interval: float = 2.0
    edit_timeout: float = 10.0

    def __post_init__(self) -> None:
        if isinstance(self.batch, bool) or not isinstance(self.batch, int) or not 1 <= self.batch <= 5000:
            raise ValueError(f"BroadcasterSettings.batch must be an int in 1..5000, got {self.batch!r}")
        for name in ("poll_interval", "tick_budget", "progress_interval", "edit_timeout"):
            value = getattr(self, name)
            if not isinstance(value, int | float) or isinstance(value, bool) or not 0 < value < math.inf:
                raise ValueError(f"BroadcasterSettings.{name} must be a finite number > 0, got {value!r}")


class Broadcaster(Actor):
    """Materialises broadcasts and edits their progress messages (see the module docstring).

    ``db`` returns the open Database, ``bot`` edits progress messages, ``wake_sender`` (optional)
    is the outbox sender's ``wake``, ``may_edit`` (optional; default: always) says whether this
    process is the one that edits progress messages and finishes broadcasts. Raising (a lost
    database) crashes the actor; its supervisor restarts it and the next tick resumes from the
    stored cursor.
    """

    def __init__(
        self,
        *,
        db: Callable[[], Database],
        bot: Bot,
        clock: Clock,
        rng: random.Random,
        wake_sender: Callable[[], None] | None = None,
        may_edit: Callable[[], bool] | None = None,
        settings: BroadcasterSettings | None = None,
        translator: Translator | None = None,
        name: str = "broadcaster",
    ) -> None:
        self.settings = settings or BroadcasterSettings()
        s = self.settings
        super().__init__(
            name, mailbox_size=8, period=s.poll_interval, first_tick=(0.0, s.poll_interval), rng=rng
        )
        self._db = db
        self._bot = bot
        self._clock = clock
        self._wake_sender = wake_sender
        self._may_edit = may_edit
        self._translator = translator
        self._last_edit: dict[int, tuple[float, str]] = {}
        self.materialized = 0
        self.edits = 0

    def wake(self) -> None:
        """Ask for a tick now (after a confirm). Never blocks."""
        try:
            self.cast_nowait("wake")
        except MailboxFull:
            _log.debug("broadcaster already has wake-ups queued")

    async def handle(self, message: object) -> object:
        """``"wake"``: work now. Anything else is a programming error (``TypeError``)."""
        if message != "wake":
            raise TypeError(f"broadcaster understands only 'wake', got {message!r}")
        await self.tick()
        return None

    async def tick(self) -> None:
        """One pass over the broadcasts with work left."""
        deadline = trio.current_time() + self.settings.tick_budget
        for broadcast in await self._db().run(active_broadcasts, limit=20):
            if broadcast.state in ("confirmed", "materializing"):
                broadcast = await self._materialize(broadcast, deadline)
            await self._report(broadcast)
            self.heartbeat()

    async def _materialize(self, broadcast: BroadcastView, deadline: float) -> BroadcastView:
        state = broadcast.state
        while trio.current_time() < deadline:
            step = await self._db().run(
                materialize_batch, broadcast_id=broadcast.id, now=self._clock.now(), limit=self.settings.batch
            )
            self.materialized += step.enqueued
            self.heartbeat()
            if step.enqueued and self._wake_sender is not None:
                self._wake_sender()
            state = step.state
            if step.finished or step.examined == 0:
                break
        return dataclasses.replace(broadcast, state=state)

    async def _report(self, broadcast: BroadcastView) -> None:
        if self._may_edit is not None and not self._may_edit():
            return  # another process's broadcaster writes this broadcast's progress
        progress = await self._db().run(broadcast_progress, broadcast_id=broadcast.id)
        final = broadcast.state == "sending" and progress.pending == 0
        if final:
            if await self._edit(broadcast, self.progress_text(broadcast, progress, final=True), force=True):
                await self._db().run(finish_broadcast, broadcast_id=broadcast.id, now=self._clock.now())
                self._last_edit.pop(broadcast.id, None)
            return
        await self._edit(broadcast, self.progress_text(broadcast, progress, final=False), force=False)

    def progress_text(self, broadcast: BroadcastView, progress: BroadcastProgress, *, final: bool) -> str:
        """The progress (or final) text in the admin's language."""
        translator = self._translator or bundled()
        key = "admin.broadcast.finished" if final else "admin.broadcast.progress"
        return translator.t(
            broadcast.admin_language,
            key,
            id=broadcast.id,
            total=max(broadcast.recipients, progress.total),
            sent=progress.sent,
            blocked=progress.blocked,
            failed=progress.failed,
            pending=progress.pending,
        )

    async def _edit(self, broadcast: BroadcastView, text: str, *, force: bool) -> bool:
        """Edit the progress message; True when the admin has this text (or cannot be shown any)."""
        chat, message_id = broadcast.progress_chat_id, broadcast.progress_message_id
        if chat is None or message_id is None:
            return True
        now = trio.current_time()
        last = self._last_edit.get(broadcast.id)
        if last is not None and last[1] == text:
            return True
        if not force and last is not None and now - last[0] < self.settings.progress_interval:
            return False
        try:
            with trio.fail_after(self.settings.edit_timeout):
                await self._bot.edit_message_text(
                    text=text, chat_id=chat, message_id=message_id, parse_mode="HTML"
                )
        except (TelegramRetryAfter, TelegramServerError, TelegramNetworkError, trio.TooSlowError) as exc:
            _log.warning("progress of broadcast %d not shown (will retry): %s", broadcast.id, exc)
            return False
        except TelegramAPIError as exc:
            # 400 not modified / message deleted, 403: the admin cannot be shown it; do not insist.
            _log.info("progress of broadcast %d not editable: %s", broadcast.id, exc.message)
        self.edits += 1
        # Stamped when the answer arrived, not when the edit was sent: the next edit then reaches
        # Telegram at least ``progress_interval`` after this one did, whatever the latency.
        self._last_edit[broadcast.id] = (trio.current_time(), text)
        return True
