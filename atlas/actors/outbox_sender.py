"""The outbox sender: delivers every outbox row to Telegram, within Telegram's limits.

Every message Atlas sends — a personal notice or one copy of a broadcast — is an ``outbox`` row
written by a unit of work (contract 2). This actor delivers them; the parts live in
:mod:`atlas.actors.outbox`, one concern each:

==========================  ====================================================================
module                      what it decides or does
==========================  ====================================================================
``outbox.payloads``         payload → text, parse mode, keyboard (pure)
``outbox.outcomes``         Telegram's answer × the row's guarantee → what to record (pure table)
``outbox.queues``           which claimed row goes next: per-chat order, priority (synchronous)
:mod:`atlas.telegram.pacing`  when a send may start: 30/s over starts and arrivals, 1/s per chat
:mod:`atlas.telegram.chat_gate`  one per-chat turn shared with the handlers' replies (same pacer)
``outbox.recorder``         results → the table, as soon as known, kept through outages
``outbox.drain``            one drain: claim, stage (mark), start on the slot, hand over results
:mod:`atlas.actors.election`  one sending process per bot (advisory lock), the others stand by
this module                 the actor: ticks and wakes, the one Bot API call, counters
==========================  ====================================================================

Delivery guarantees (details in :mod:`atlas.actors.outbox.outcomes`): a personal notice is
delivered **at least once** — a send of unknown outcome (no answer, or a crash between send and
record) is tried again, so it can be doubled only if it was truly in the air. A broadcast copy is
delivered **at most once** — its attempt is marked in the table before the send, and a marked row
whose sender vanished becomes ``unknown`` instead of being resent.

Several processes: with ``SenderSettings.elected`` (the default) only the process holding the
advisory lock ``outbox_sender:<bot id>`` sends; the others stand by. So the bot's bulk sends stay
within ``rate`` however many processes run, and ``per_chat_rate`` holds against this process's
replies too (docs/architecture.md, "The send budget of a fleet").
"""

from __future__ import annotations

import datetime as dt
import functools
import logging
import math
import random
import uuid
from collections.abc import Callable, Mapping, Sequence

import trio
from aiogram import Bot
from aiogram.exceptions import AiogramError
from aiogram.types import InlineKeyboardMarkup

from atlas.actors.base import Actor, MailboxFull
from atlas.actors.election import lead_when_elected, watch_lock
from atlas.actors.outbox.drain import Drain
from atlas.actors.outbox.outcomes import Answer, SenderUnauthorized, Verdict, classify
from atlas.actors.outbox.payloads import PayloadError, render
from atlas.actors.outbox.recorder import Recorder, ResultBuffer
from atlas.actors.outbox.settings import SenderSettings, SenderStatistics
from atlas.clock import Clock
from atlas.storage import Database, DatabaseUnavailable
from atlas.storage.locks import AdvisoryLock
from atlas.storage.units.delivery import (
    ClaimedMessage,
    Delivery,
    DeliveryStatus,
    RecordSummary,
    end_other_leases,
    record_deliveries,
)
from atlas.supervision import Backoff, ChildContext
from atlas.telegram.chat_gate import chat_gate_of, waits_for_chat_slots
from atlas.telegram.i18n import Translator, bundled
from atlas.telegram.pacing import ChatPacer, Pacer
from atlas.telegram.session import writes_paced_by

__all__ = [
    "OutboxSender",
    "PayloadError",
    "SenderSettings",
    "SenderStatistics",
    "SenderUnauthorized",
    "Verdict",
    "classify",
    "render",
]

_log = logging.getLogger("atlas.actors.outbox_sender")

_RECORD_RETRY = Backoff(initial=0.5, factor=2.0, maximum=10.0, jitter=0.2)


class OutboxSender(Actor):
    """Delivers the outbox: ticks every ``poll_interval``; :meth:`wake` starts a drain sooner.

    ``db`` returns the open Database (the runtime's services), ``bot`` is the aiogram Bot,
    ``clock`` the business clock (leases and retry times), ``rng`` the seeded jitter source,
    ``translator`` renders template payloads (default: the shipped locales).
    """

    def __init__(
        self,
        *,
        db: Callable[[], Database],
        bot: Bot,
        clock: Clock,
        rng: random.Random,
        settings: SenderSettings | None = None,
        translator: Translator | None = None,
        name: str = "outbox_sender",
    ) -> None:
        self.settings = settings or SenderSettings()
        s = self.settings
        super().__init__(
            name, mailbox_size=8, period=s.poll_interval, first_tick=(0.0, s.poll_interval), rng=rng
        )
        self.db = db
        self.clock = clock
        self.owner = uuid.uuid4()
        """The lease owner of every claim this sender makes (one per sender, across drains)."""
        self._bot = bot
        self._jitter = rng
        self._translator = translator
        self.pacer = Pacer(s.rate)
        self.chat_pacer = _shared_chat_pacer(bot, s.per_chat_rate)
        self.buffer = ResultBuffer()
        self.recorder = Recorder(
            self.buffer, self._write_results, self._results_written, backoff=_RECORD_RETRY, rng=rng
        )
        self.role = "unelected" if not s.elected else "stopped"
        self._streak: list[tuple[int, float]] = []
        self.counts: dict[str, int] = {
            "sent": 0,
            "blocked": 0,
            "failed": 0,
            "retried": 0,
            "deferred": 0,
            "unknown": 0,
            "throttled": 0,
            "global_pauses": 0,
            "not_owned": 0,
            "drains": 0,
        }

    @property
    def translator(self) -> Translator:
        """The translator for template payloads."""
        return self._translator or bundled()

    @property
    def lock_name(self) -> str:
        """The advisory lock that elects the one sending process of this bot."""
        return f"outbox_sender:{self._bot.id}"

    @property
    def leads(self) -> bool:
        """True while this process is the one that talks to Telegram in bulk (or is not elected)."""
        return self.role in ("leader", "unelected")

    def wake(self) -> None:
        """Ask for a drain now (after a broadcast was materialised, say). Never blocks."""
        try:
            self.cast_nowait("wake")
        except MailboxFull:
            _log.debug("outbox sender already has wake-ups queued")  # one queued wake-up is enough

    async def handle(self, message: object) -> object:
        """``"wake"``: drain now. Anything else is a programming error (``TypeError``)."""
        if message != "wake":
            raise TypeError(f"outbox sender understands only 'wake', got {message!r}")
        await self.drain()
        return None

    async def tick(self) -> None:
        """Drain whatever is due."""
        await self.drain()

    async def run(
        self, ctx: ChildContext, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """The actor's loop; when elected, only while this process holds the sender's lock.

        Up at once (a standby is up: standing by is its job). A lock lost with its session (the
        database restarted) sends the actor back to stand by, marked as waiting for the database,
        on the same incarnation; leased rows of the drain that was cut short return by themselves.
        """
        s = self.settings
        if not s.elected:
            await super().run(ctx, task_status=task_status)
            return
        task_status.started()
        actor_run = functools.partial(Actor.run, self, ctx)

        async def lead(lock: AdvisoryLock) -> None:
            # The old leader is gone (its lock with it) and has stopped (we waited `quiet`): the
            # rows it had leased are nobody's, so they need not wait out their lease.
            try:
                ended = await self.db().run(end_other_leases, owner=self.owner, now=self.clock.now())
            except DatabaseUnavailable:
                # Not worth a crash: the old leader's rows then wait out their lease, as before.
                _log.warning("outbox sender elected: the database did not answer; old leases run out")
                ended = 0
            if ended:
                _log.info("outbox sender elected: took over %d rows leased by the previous leader", ended)
            async with trio.open_nursery() as nursery:
                nursery.start_soon(watch_lock, lock, s.lock_check_every)
                await nursery.start(actor_run)

        try:
            await lead_when_elected(
                self.db,
                self.lock_name,
                lead,
                standby_retry=s.standby_retry,
                quiet=s.lock_check_every + 1.0 / s.per_chat_rate,
                on_role=self._set_role,
                on_wait=ctx.mark_waiting,
            )
        finally:
            self.role = "stopped"

    async def drain(self) -> None:
        """Claim, send and record until nothing is due or the tick budget is spent.

        Raises :class:`SenderUnauthorized`, storage errors and bugs (the actor crashes and its
        supervisor restarts it); results that could not be written are kept for the next drain.
        """
        self.counts["drains"] += 1
        try:
            await Drain(self).run()
        except BaseExceptionGroup as group:
            # The drain's tasks fail one at a time in practice; raise that one error by its own
            # name (SenderUnauthorized, DatabaseUnavailable, ...) rather than a group around it.
            failures = [leaf for leaf in _leaves(group) if not isinstance(leaf, trio.Cancelled)]
            if len(failures) == 1:
                raise failures[0] from None
            raise

    def delivery_statistics(self) -> SenderStatistics:
        """The sender's counters."""
        c = self.counts
        return SenderStatistics(
            sent=c["sent"],
            blocked=c["blocked"],
            failed=c["failed"],
            retried=c["retried"],
            deferred=c["deferred"],
            unknown=c["unknown"],
            throttled=c["throttled"],
            global_pauses=c["global_pauses"],
            not_owned=c["not_owned"],
            drains=c["drains"],
            chats_paced=len(self.chat_pacer),
            unwritten=len(self.buffer),
            role=self.role,
        )

    # -- the one Bot API call --------------------------------------------------------------------

    async def send(
        self, message: ClaimedMessage, text: str, parse_mode: str | None, markup: InlineKeyboardMarkup | None
    ) -> Verdict:
        """Call ``sendMessage`` once and say what came of it (:func:`classify`; 401 raises)."""
        timeout = self.settings.send_timeout
        # The write gate counts this send until its estimated arrival leaves the window: the slot
        # must hear the answer, whatever it was (atlas.telegram.pacing, "Writes are not arrivals").
        slot = self.pacer.write_slot()
        try:
            with trio.fail_after(timeout + 1), writes_paced_by(slot.before_write), waits_for_chat_slots():
                await self._bot.send_message(
                    chat_id=message.chat_id,
                    text=text,
                    parse_mode=parse_mode,
                    reply_markup=markup,
                    request_timeout=math.ceil(timeout),
                )
        except (AiogramError, trio.TooSlowError) as exc:
            return classify(exc)
        finally:
            slot.answered()
        return Verdict(Answer.SENT)

    # -- used by a drain ---------------------------------------------------------------------------

    def note_429(self, chat_id: int, retry_after: float) -> None:
        """A 429: pause the chat; ``global_429_streak`` chats in a row pause every start."""
        now = trio.current_time()
        self.counts["throttled"] += 1
        self.chat_pacer.pause_until(chat_id, now + retry_after)
        self._streak.append((chat_id, retry_after))
        chats = {chat for chat, _ in self._streak}
        if len(chats) >= self.settings.global_429_streak:
            longest = max(wait for _, wait in self._streak)
            self.pacer.pause_until(now + longest)
            self.counts["global_pauses"] += 1
            _log.warning("%d chats in a row answered 429: pausing all sends for %gs", len(chats), longest)
            self._streak.clear()

    def note_answer(self) -> None:
        """Any answer but a 429 ends a streak of 429s."""
        self._streak.clear()

    def retry_time(self, attempts: int) -> dt.datetime:
        """When a row that failed ``attempts`` times is due again."""
        delay = self.settings.retry.delay(attempts, self._jitter)
        return self.clock.now() + self.clock.business_span(delay)

    async def _write_results(self, deliveries: Sequence[Delivery]) -> RecordSummary:
        return await self.db().run(
            record_deliveries, now=self.clock.now(), owner=self.owner, deliveries=list(deliveries)
        )

    def _results_written(self, deliveries: Sequence[Delivery], summary: RecordSummary) -> None:
        for delivery in deliveries:
            self.counts[_COUNTER[delivery.status]] += 1
        self.counts["not_owned"] += summary.not_owned
        if summary.not_owned:
            _log.warning("%d delivery results were for rows this sender no longer leased", summary.not_owned)
        self.heartbeat()

    def _set_role(self, role: str) -> None:
        self.role = role


def _shared_chat_pacer(bot: Bot, per_chat_rate: float) -> ChatPacer:
    """The per-chat pacer of ``bot``'s :class:`ChatGate` (the replies' too), else one of our own.

    Shared, a chat that just got a handler's reply in this process is not ready for a notice
    either (:mod:`atlas.telegram.chat_gate`). A gate with another interval is not shared: the
    sender then keeps its own and its sends obey both (the stricter wins).
    """
    gate = chat_gate_of(bot)
    if gate is not None and math.isclose(gate.pacer.interval, 1.0 / per_chat_rate):
        return gate.pacer
    return ChatPacer(per_chat_rate)


def _leaves(group: BaseExceptionGroup[BaseException]) -> list[BaseException]:
    found: list[BaseException] = []
    for exc in group.exceptions:
        found.extend(_leaves(exc) if isinstance(exc, BaseExceptionGroup) else [exc])
    return found


_COUNTER: Mapping[DeliveryStatus, str] = {
    DeliveryStatus.SENT: "sent",
    DeliveryStatus.BLOCKED: "blocked",
    DeliveryStatus.FAILED: "failed",
    DeliveryStatus.RETRY: "retried",
    DeliveryStatus.DEFERRED: "deferred",
    DeliveryStatus.UNKNOWN: "unknown",
}
