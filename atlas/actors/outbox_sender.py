"""The outbox sender: delivers every outbox row to Telegram, within Telegram's limits.

Every message Atlas sends — a personal notice or one copy of a broadcast — is an ``outbox`` row
written by a unit of work (contract 2). This actor delivers them:

1. **Claim** due rows in bounded batches (:func:`~atlas.storage.units.delivery.claim_outbox`):
   personal notices (priority 0) before broadcasts (priority 1), each row leased to this drain
   (``lease`` seconds), with ``SKIP LOCKED``, so two senders — two processes — never hold the same
   row.
2. **Send** through the Bot, paced: a global rate (``rate``, 30/s by default) and one message per
   ``1/per_chat_rate`` seconds per chat (:mod:`atlas.telegram.pacing`, which paces by when answers
   come back, so that latency cannot bunch arrivals over a limit). Messages for one chat go in
   claim order, one at a time; among chats that may send now, priority 0 goes first.
3. **Record** each result in a second, short unit
   (:func:`~atlas.storage.units.delivery.record_deliveries`), batched by group commit: whatever
   results arrived while the previous record ran are written together.

Results, by cause (aiogram's errors, mapped explicitly in :func:`classify`):

==============================  =============================================================
Telegram says                   the row
==============================  =============================================================
ok                              ``sent``
429 ``retry_after``             not counted as an attempt; the chat pauses ``retry_after`` s
                                (kept in memory when short, given back to the table when longer
                                than ``defer_after``); ``global_429_streak`` consecutive 429s
                                from different chats pause the global rate as well — that is how
                                Telegram says the bot as a whole is too fast
403                             ``blocked``, and ``users.bot_blocked_at`` is set
5xx, network, timeout           retried with exponential, jittered backoff through the table
                                (``next_attempt_at``); ``failed`` after ``max_attempts``
400 and other 4xx               ``failed`` with Telegram's description
401                             :class:`SenderUnauthorized` (the token is wrong): the actor crashes
a bad payload / unknown text    ``failed`` with the reason, nothing sent
==============================  =============================================================

**Payload format.** ``outbox.payload`` is a JSON object in one of two forms:

* literal: ``{"text": str, "parse_mode": "HTML" | null, "buttons": [[button, ...], ...]}``
  where a button is ``{"text": ..., "callback_data": ...}`` or ``{"text": ..., "url": ...}``;
  ``parse_mode`` and ``buttons`` are optional (no parse mode, no keyboard).
* template (what :func:`atlas.storage.units.outbox.enqueue_message` writes): no ``"text"`` key;
  ``kind`` is the locale key and the payload's other fields are its placeholders, rendered in the
  recipient's ``users.language`` at send time, as HTML; an optional ``"buttons"`` as above.

**Exactly once, and the window.** A row is sent at most once per lease, and the table decides
everything else; dedupe keys are the table's unique constraint. The one window for a second copy is
"sent, but the result not yet recorded": if the sender dies there (crash, kill, lost database), the
row is still ``pending`` under its lease and is sent again once the lease expires. The window is
bounded: at most ``max_in_flight`` messages are sent-or-sending-but-unrecorded at any moment, and
on cancellation the results already known are still recorded (a shielded, time-boxed flush). A row
is never *started* when less than ``send_timeout + 5`` s of its lease remain, so a slow sender
never overlaps another sender's claim of the same row.

One more way to a second copy is inherent to any sender: a send that times out (or whose
connection drops) without an answer is retried like a 5xx, and Telegram may have delivered it.

Several processes each pace themselves: N senders together may reach N × ``rate``.
"""

from __future__ import annotations

import datetime as dt
import heapq
import logging
import math
import random
import uuid
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import trio
from aiogram import Bot
from aiogram.exceptions import (
    AiogramError,
    ClientDecodeError,
    TelegramAPIError,
    TelegramForbiddenError,
    TelegramNetworkError,
    TelegramRetryAfter,
    TelegramServerError,
    TelegramUnauthorizedError,
)
from aiogram.types import InlineKeyboardButton, InlineKeyboardMarkup

from atlas.actors.base import Actor, MailboxFull
from atlas.clock import Clock
from atlas.storage import Database, StorageError
from atlas.storage.units.delivery import (
    ClaimedMessage,
    Delivery,
    DeliveryStatus,
    claim_outbox,
    record_deliveries,
)
from atlas.supervision import Backoff
from atlas.telegram.i18n import TranslationError, Translator, bundled
from atlas.telegram.pacing import ChatPacer, Pacer, PacerTicket

_log = logging.getLogger("atlas.actors.outbox_sender")

MAX_TEXT = 4096
MAX_RECORD_BATCH = 500
RECORD_LINGER = 0.05
LEASE_SAFETY = 5.0
PARSE_MODES = frozenset({"HTML", "MarkdownV2", "Markdown"})


class SenderError(Exception):
    """Base of the sender's own errors."""


class SenderUnauthorized(SenderError):
    """Telegram answered 401: the bot token is wrong or revoked; nothing can be sent."""


class PayloadError(SenderError):
    """An outbox row's payload cannot become a message (the row fails with this reason)."""


@dataclass(frozen=True, slots=True)
class SenderSettings:
    """How the sender paces and retries. All optional:

    - ``rate`` (30/s): messages per second over all chats; ``per_chat_rate`` (1/s) per chat.
    - ``batch`` (100, 1..1000): rows per claim; the sender claims again below half of it.
    - ``max_in_flight`` (16): messages sent or sending whose result is not yet recorded (the
      duplicate window after a crash).
    - ``lease`` (120 s): how long a claim holds a row; a crashed sender's rows return after it.
    - ``send_timeout`` (20 s): one ``sendMessage`` at most this long (then it counts as a 5xx).
    - ``max_attempts`` (8): 5xx/network failures before a row is ``failed``.
    - ``retry``: backoff between those attempts (5 s doubling to 30 min, ±20 %).
    - ``defer_after`` (5 s): a chat paused longer than this gives its rows back to the table.
    - ``global_429_streak`` (5): consecutive 429s from different chats that pause every chat.
    - ``poll_interval`` (1 s): the tick period (how soon a new row is noticed without a wake).
    - ``tick_budget`` (30 s): a drain stops claiming after this long (contract 3).
    """

    rate: float = 30.0
    per_chat_rate: float = 1.0
    batch: int = 100
    max_in_flight: int = 16
    lease: float = 120.0
    send_timeout: float = 20.0
    max_attempts: int = 8
    retry: Backoff = field(
        default_factory=lambda: Backoff(initial=5.0, factor=2.0, maximum=1800.0, jitter=0.2)
    )
    defer_after: float = 5.0
    global_429_streak: int = 5
    poll_interval: float = 1.0
    tick_budget: float = 30.0

    def __post_init__(self) -> None:
        ints = {
            "batch": (1, 1000),
            "max_in_flight": (1, 1000),
            "max_attempts": (1, 100),
            "global_429_streak": (1, 1000),
        }
        for name, (low, high) in ints.items():
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
                raise ValueError(f"SenderSettings.{name} must be an int in {low}..{high}, got {value!r}")
        positive = (
            "rate",
            "per_chat_rate",
            "lease",
            "send_timeout",
            "defer_after",
            "poll_interval",
            "tick_budget",
        )
        for name in positive:
            value = getattr(self, name)
            if not isinstance(value, int | float) or isinstance(value, bool) or not 0 < value < math.inf:
                raise ValueError(f"SenderSettings.{name} must be a finite number > 0, got {value!r}")
        if self.lease <= self.send_timeout + LEASE_SAFETY:
            raise ValueError(
                f"SenderSettings.lease ({self.lease!r}) must exceed send_timeout + {LEASE_SAFETY:g} s "
                f"({self.send_timeout + LEASE_SAFETY!r}), or no row could ever be sent"
            )


@dataclass(frozen=True, slots=True)
class SenderStatistics:
    """Counters since the actor was built (a broadcast's own counts: ``broadcast_progress``)."""

    sent: int
    blocked: int
    failed: int
    retried: int
    deferred: int
    throttled: int
    global_pauses: int
    not_owned: int
    drains: int
    chats_paced: int


# ---------------------------------------------------------------------------------------------
# Payloads and verdicts


def render(
    message: ClaimedMessage, translator: Translator
) -> tuple[str, str | None, InlineKeyboardMarkup | None]:
    """The text, parse mode and keyboard of ``message`` (see the payload format above).

    Raises :class:`PayloadError` naming the field when the payload cannot be sent.
    """
    payload = message.payload
    if "__invalid__" in payload:
        raise PayloadError(f"payload must be a JSON object, got {payload['__invalid__']!r:.80}")
    markup = _keyboard(payload.get("buttons"))
    if "text" in payload:
        text = payload["text"]
        parse_mode = payload.get("parse_mode")
        if parse_mode is not None and parse_mode not in PARSE_MODES:
            raise PayloadError(
                f"payload.parse_mode must be one of {sorted(PARSE_MODES)} or null, got {parse_mode!r}"
            )
    else:
        params = {k: v for k, v in payload.items() if k != "buttons"}
        try:
            text = translator.t(message.language, message.kind, **params)
        except TranslationError as exc:
            raise PayloadError(f"kind {message.kind!r}: {exc}") from exc
        parse_mode = "HTML"
    if not isinstance(text, str) or not text.strip():
        raise PayloadError(f"payload.text must be a non-empty string, got {text!r:.80}")
    if len(text) > MAX_TEXT:
        raise PayloadError(f"payload.text is {len(text)} characters, Telegram allows {MAX_TEXT}")
    return text, parse_mode, markup


def _keyboard(buttons: Any) -> InlineKeyboardMarkup | None:
    if buttons is None:
        return None
    if not isinstance(buttons, list) or not all(isinstance(row, list) and row for row in buttons):
        raise PayloadError("payload.buttons must be a list of non-empty lists of buttons")
    rows: list[list[InlineKeyboardButton]] = []
    for r, row in enumerate(buttons):
        out: list[InlineKeyboardButton] = []
        for c, button in enumerate(row):
            where = f"payload.buttons[{r}][{c}]"
            if not isinstance(button, dict) or not isinstance(button.get("text"), str) or not button["text"]:
                raise PayloadError(f"{where} must be an object with a non-empty text")
            actions = [k for k in ("callback_data", "url") if k in button]
            if len(actions) != 1 or not isinstance(button[actions[0]], str):
                raise PayloadError(f"{where} needs exactly one of callback_data or url (a string)")
            out.append(InlineKeyboardButton(text=button["text"], **{actions[0]: button[actions[0]]}))
        rows.append(out)
    return InlineKeyboardMarkup(inline_keyboard=rows) if rows else None


@dataclass(frozen=True, slots=True)
class Verdict:
    """What one send attempt came to: a :class:`DeliveryStatus`, or ``throttle`` with ``retry_after``."""

    status: DeliveryStatus | None
    error: str | None = None
    retry_after: float | None = None

    @property
    def throttled(self) -> bool:
        """True for a 429: nothing to record, the chat pauses."""
        return self.status is None


def classify(exc: BaseException) -> Verdict:
    """The explicit map from aiogram's send errors to a verdict; anything else is re-raised."""
    if isinstance(exc, TelegramRetryAfter):
        return Verdict(None, exc.message, float(exc.retry_after))
    if isinstance(exc, TelegramUnauthorizedError):
        raise SenderUnauthorized(f"Telegram refused the bot token: {exc.message}") from exc
    if isinstance(exc, TelegramForbiddenError):
        return Verdict(DeliveryStatus.BLOCKED, exc.message)
    if isinstance(exc, TelegramServerError | TelegramNetworkError):
        return Verdict(DeliveryStatus.RETRY, f"{type(exc).__name__}: {exc.message}")
    if isinstance(exc, ClientDecodeError | trio.TooSlowError):
        return Verdict(DeliveryStatus.RETRY, f"{type(exc).__name__}: {exc}")
    if isinstance(exc, TelegramAPIError):  # 400, 404, 409, 413, migrate_to_chat_id, ...
        return Verdict(DeliveryStatus.FAILED, exc.message)
    raise exc


# ---------------------------------------------------------------------------------------------
# The actor


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
        self._db = db
        self._bot = bot
        self._clock = clock
        self._jitter = rng
        self._translator = translator
        self.global_pacer = Pacer(s.rate)
        self.chat_pacer = ChatPacer(s.per_chat_rate)
        self._streak: list[tuple[int, float]] = []
        self.counts: dict[str, int] = {
            "sent": 0,
            "blocked": 0,
            "failed": 0,
            "retried": 0,
            "deferred": 0,
            "throttled": 0,
            "global_pauses": 0,
            "not_owned": 0,
            "drains": 0,
        }

    @property
    def translator(self) -> Translator:
        """The translator for template payloads."""
        return self._translator or bundled()

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

    async def drain(self) -> None:
        """Claim, send and record until nothing is due or the tick budget is spent.

        Raises :class:`SenderUnauthorized`, storage errors and bugs (the actor crashes and its
        supervisor restarts it); leased rows of a crashed drain return when their lease expires.
        """
        self.counts["drains"] += 1
        try:
            await _Drain(self).run()
        except BaseExceptionGroup as group:
            # The drain's tasks fail one at a time in practice; raise that one error by its own
            # name (SenderUnauthorized, DatabaseUnavailable, ...) rather than a group around it.
            leaves = _leaves(group)
            failures = [leaf for leaf in leaves if not isinstance(leaf, trio.Cancelled)]
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
            throttled=c["throttled"],
            global_pauses=c["global_pauses"],
            not_owned=c["not_owned"],
            drains=c["drains"],
            chats_paced=len(self.chat_pacer),
        )

    # -- used by a drain -------------------------------------------------------------------------

    async def _deliver(self, message: ClaimedMessage) -> Verdict:
        try:
            text, parse_mode, markup = render(message, self.translator)
        except PayloadError as exc:
            return Verdict(DeliveryStatus.FAILED, str(exc))
        timeout = self.settings.send_timeout
        try:
            with trio.fail_after(timeout + 1):
                await self._bot.send_message(
                    chat_id=message.chat_id,
                    text=text,
                    parse_mode=parse_mode,
                    reply_markup=markup,
                    request_timeout=math.ceil(timeout),
                )
        except (AiogramError, trio.TooSlowError) as exc:
            verdict = classify(exc)
        else:
            verdict = Verdict(DeliveryStatus.SENT)
        if verdict.throttled:
            self._note_429(message.chat_id, verdict.retry_after or 1.0)
        else:
            self._streak.clear()
        return verdict

    def _note_429(self, chat_id: int, retry_after: float) -> None:
        now = trio.current_time()
        self.counts["throttled"] += 1
        self.chat_pacer.pause_until(chat_id, now + retry_after)
        self._streak.append((chat_id, retry_after))
        chats = {chat for chat, _ in self._streak}
        if len(chats) >= self.settings.global_429_streak:
            longest = max(wait for _, wait in self._streak)
            self.global_pacer.pause_until(now + longest)
            self.counts["global_pauses"] += 1
            _log.warning("%d chats in a row answered 429: pausing all sends for %gs", len(chats), longest)
            self._streak.clear()

    def _retry_time(self, attempts: int) -> dt.datetime:
        delay = self.settings.retry.delay(attempts, self._jitter)
        return self._clock.now() + dt.timedelta(seconds=delay)


def _leaves(group: BaseExceptionGroup[BaseException]) -> list[BaseException]:
    found: list[BaseException] = []
    for exc in group.exceptions:
        found.extend(_leaves(exc) if isinstance(exc, BaseExceptionGroup) else [exc])
    return found


@dataclass(slots=True)
class _Row:
    message: ClaimedMessage
    seq: int
    lease_deadline: float


@dataclass(slots=True)
class _Chat:
    rows: deque[_Row] = field(default_factory=deque)
    busy: bool = False
    scheduled: bool = False


@dataclass(frozen=True, slots=True)
class _Outcome:
    delivery: Delivery
    holds_slot: bool


class _Drain:
    """One drain: a claimer, a scheduler, send tasks and a recorder, under one owner id."""

    def __init__(self, sender: OutboxSender) -> None:
        self.sender = sender
        self.s = sender.settings
        self.owner = uuid.uuid4()
        self.deadline = trio.current_time() + self.s.tick_budget
        self.chats: dict[int, _Chat] = {}
        self.waiting: list[tuple[float, int, int]] = []  # (ready at, seq, chat)
        self.ready: list[tuple[int, int, int]] = []  # (priority, seq, chat)
        self.buffered = 0
        self.sending = 0
        self.unrecorded = 0
        self.claiming = True
        self.seq = 0
        self.changed = trio.lowlevel.ParkingLot()
        self.slots = trio.Semaphore(self.s.max_in_flight)
        # Unbounded channel, bounded by the claimer: it claims only while buffered + unrecorded
        # stays below two batches.
        self.outcomes_in, self.outcomes_out = trio.open_memory_channel[_Outcome](math.inf)

    async def run(self) -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self.recorder, name="outbox-recorder")
            async with self.outcomes_in, trio.open_nursery() as work:
                work.start_soon(self.claimer, name="outbox-claimer")
                await self.schedule(work)

    # -- claiming ------------------------------------------------------------------------------

    async def claimer(self) -> None:
        s, sender = self.s, self.sender
        try:
            while trio.current_time() < self.deadline:
                while self.buffered >= s.batch // 2 + 1 or self.unrecorded >= s.batch:
                    await self.changed.park()
                limit = s.batch - self.buffered
                now = sender._clock.now()
                claimed = await sender._db().run(
                    claim_outbox,
                    now=now,
                    owner=self.owner,
                    lease_until=now + dt.timedelta(seconds=s.lease),
                    limit=limit,
                )
                deadline = trio.current_time() + s.lease
                for message in claimed:
                    self.add(_Row(message, self.seq, deadline))
                    self.seq += 1
                sender.heartbeat()
                self.changed.unpark_all()
                if len(claimed) < limit:
                    break  # nothing more is due now; the next tick looks again
        finally:
            self.claiming = False
            self.changed.unpark_all()

    def add(self, row: _Row) -> None:
        chat = self.chats.setdefault(row.message.chat_id, _Chat())
        chat.rows.append(row)
        self.buffered += 1
        self.place(row.message.chat_id)

    def place(self, chat_id: int) -> None:
        """Put a chat with rows into the ready or waiting heap (or give its rows back)."""
        chat = self.chats.get(chat_id)
        if chat is None or chat.busy or chat.scheduled:
            return
        if not chat.rows:
            del self.chats[chat_id]
            return
        now = trio.current_time()
        at = self.sender.chat_pacer.ready_at(chat_id)
        if at - now > self.s.defer_after:
            when = self.sender._clock.now() + dt.timedelta(seconds=at - now)
            while chat.rows:
                row = chat.rows.popleft()
                self.buffered -= 1
                deferred = Delivery(row.message.id, chat_id, DeliveryStatus.DEFERRED, "chat paused", when)
                self.emit(deferred, False)
            del self.chats[chat_id]
            return
        chat.scheduled = True
        head = chat.rows[0]
        if at <= now:
            heapq.heappush(self.ready, (head.message.priority, head.seq, chat_id))
        else:
            heapq.heappush(self.waiting, (at, head.seq, chat_id))

    def promote(self) -> None:
        now = trio.current_time()
        while self.waiting and self.waiting[0][0] <= now:
            _, seq, chat_id = heapq.heappop(self.waiting)
            chat = self.chats[chat_id]
            heapq.heappush(self.ready, (chat.rows[0].message.priority, seq, chat_id))

    # -- sending -------------------------------------------------------------------------------

    async def schedule(self, work: trio.Nursery) -> None:
        while True:
            self.promote()
            if self.ready:
                await self.slots.acquire()
                try:
                    ticket = await self.sender.global_pacer.acquire()
                except BaseException:
                    self.slots.release()
                    raise
                try:
                    self.start_next(work, ticket)
                except BaseException:
                    ticket.done()  # a leaked ticket would hold back every later send of this actor
                    raise
                continue
            if not self.claiming and self.sending == 0:
                if self.buffered == 0:
                    return
                # Only paused chats are left: give their rows back (due when the pause ends) and
                # end the drain now rather than idle until then; the next tick claims them.
                self.give_back_waiting()
                continue
            wake_at = self.waiting[0][0] if self.waiting else math.inf
            with trio.move_on_at(wake_at):
                await self.changed.park()

    def start_next(self, work: trio.Nursery, ticket: PacerTicket) -> None:
        """Start the best ready row: decide synchronously; the I/O runs in its own task."""
        sender = self.sender
        self.promote()
        _, _, chat_id = heapq.heappop(self.ready)
        chat = self.chats[chat_id]
        chat.scheduled = False
        row = chat.rows.popleft()
        self.buffered -= 1
        self.changed.unpark_all()  # the claimer may be waiting for the buffer to shrink
        sender.heartbeat()
        if trio.current_time() > row.lease_deadline - self.s.send_timeout - LEASE_SAFETY:
            # Too little lease left to be sure nobody else holds the row when we send.
            ticket.done()
            self.slots.release()
            when = sender._clock.now()
            self.emit(Delivery(row.message.id, chat_id, DeliveryStatus.DEFERRED, None, when), False)
            self.place(chat_id)
            return
        chat.busy = True
        self.sending += 1
        work.start_soon(self.send_one, chat_id, chat, row, ticket)

    def give_back_waiting(self) -> None:
        now, wall = trio.current_time(), self.sender._clock.now()
        while self.waiting:
            at, _, chat_id = heapq.heappop(self.waiting)
            chat = self.chats.pop(chat_id)
            when = wall + dt.timedelta(seconds=max(0.0, at - now))
            for row in chat.rows:
                self.emit(Delivery(row.message.id, chat_id, DeliveryStatus.DEFERRED, None, when), False)
            self.buffered -= len(chat.rows)

    async def send_one(self, chat_id: int, chat: _Chat, row: _Row, ticket: PacerTicket) -> None:
        sender, message = self.sender, row.message
        try:
            verdict = await sender._deliver(message)
        finally:
            ticket.done()
            sender.chat_pacer.note_answered(chat_id, trio.current_time())
        if verdict.throttled:
            self.slots.release()
            chat.rows.appendleft(row)
            self.buffered += 1
        else:
            self.emit(self.delivery(message, verdict), True)
        chat.busy = False
        self.sending -= 1
        self.place(chat_id)
        self.changed.unpark_all()

    def delivery(self, message: ClaimedMessage, verdict: Verdict) -> Delivery:
        status = verdict.status
        assert status is not None
        if status is DeliveryStatus.RETRY:
            attempts = message.attempts + 1
            if attempts >= self.s.max_attempts:
                return Delivery(
                    message.id,
                    message.chat_id,
                    DeliveryStatus.FAILED,
                    f"gave up after {attempts} attempts: {verdict.error}",
                )
            retry_at = self.sender._retry_time(attempts)
            return Delivery(message.id, message.chat_id, status, verdict.error, retry_at)
        return Delivery(message.id, message.chat_id, status, verdict.error)

    def emit(self, delivery: Delivery, holds_slot: bool) -> None:
        self.unrecorded += 1
        self.outcomes_in.send_nowait(_Outcome(delivery, holds_slot))

    # -- recording -----------------------------------------------------------------------------

    async def recorder(self) -> None:
        # Group commit: after the first result, linger briefly for more, but never so long that
        # the unrecorded results reach max_in_flight (the scheduler would stall on its slots).
        target = max(1, self.s.max_in_flight // 2)
        batch: list[_Outcome] = []
        try:
            async for first in self.outcomes_out:
                batch = [first]
                with trio.move_on_after(RECORD_LINGER):
                    while len(batch) < target:
                        try:
                            batch.append(await self.outcomes_out.receive())
                        except trio.EndOfChannel:
                            break
                batch.extend(self.take_all(MAX_RECORD_BATCH - len(batch)))
                await self.record(batch)
                batch = []
        finally:
            leftovers = batch + self.take_all(math.inf)
            if leftovers:
                await self.final_flush(leftovers)

    def take_all(self, most: float) -> list[_Outcome]:
        taken: list[_Outcome] = []
        while len(taken) < most:
            try:
                taken.append(self.outcomes_out.receive_nowait())
            except (trio.WouldBlock, trio.EndOfChannel, trio.ClosedResourceError):
                break
        return taken

    async def final_flush(self, outcomes: list[_Outcome]) -> None:
        # The drain is ending abnormally (cancelled or crashed): record what is known, so that the
        # duplicate window is only what was truly in the air.
        with trio.CancelScope(shield=True), trio.move_on_after(5) as box:
            try:
                for start in range(0, len(outcomes), MAX_RECORD_BATCH):
                    await self.record(outcomes[start : start + MAX_RECORD_BATCH])
            except StorageError as exc:
                _log.error(
                    "could not record %d delivery results (%s); they are resent after their lease expires",
                    len(outcomes),
                    exc,
                )
        if box.cancelled_caught:
            _log.error(
                "recording %d delivery results timed out; they are resent after their lease expires",
                len(outcomes),
            )

    async def record(self, outcomes: list[_Outcome]) -> None:
        sender = self.sender
        summary = await sender._db().run(
            record_deliveries,
            now=sender._clock.now(),
            owner=self.owner,
            deliveries=[o.delivery for o in outcomes],
        )
        counts = sender.counts
        for outcome in outcomes:
            counts[_COUNTER[outcome.delivery.status]] += 1
            if outcome.holds_slot:
                self.slots.release()
        counts["not_owned"] += summary.not_owned
        if summary.not_owned:
            _log.warning("%d delivery results were for rows this sender no longer leased", summary.not_owned)
        self.unrecorded -= len(outcomes)
        sender.heartbeat()
        self.changed.unpark_all()


_COUNTER: Mapping[DeliveryStatus, str] = {
    DeliveryStatus.SENT: "sent",
    DeliveryStatus.BLOCKED: "blocked",
    DeliveryStatus.FAILED: "failed",
    DeliveryStatus.RETRY: "retried",
    DeliveryStatus.DEFERRED: "deferred",
}
