"""Per-user ordered dispatch of Telegram updates into aiogram, with an error boundary.

The intake (polling or webhook) hands every update to :class:`UpdateDispatcher`. Updates of one
user are handled one after another, in the order they were handed over (a user who taps "buy"
twice must not race themselves); different users are handled in parallel, at most
``max_concurrency`` at a time (a ``trio.CapacityLimiter``). Each update goes to aiogram's
``Dispatcher.feed_update``, awaited directly from the user's trio task, so routers, filters,
middlewares and FSM work as aiogram documents them, and a handler awaits ``db.run`` and the trio
clients without crossing any bridge (the Bot's session is httpx on trio: :mod:`.session`).

Why aiogram runs from a trio task: aiogram's dispatch path is plain ``async``/``await`` over its
own objects, with two asyncio touch points, both handled:

- sync filters and handlers go through ``asyncio.to_thread``; the dispatcher is built with them
  called inline instead (:mod:`atlas.telegram.inline_callbacks`);
- ``feed_update`` reads ``asyncio.get_running_loop().time()`` for its log line. trio-asyncio
  (opened once at the process root, :mod:`atlas.runtime.bridge`) patches
  ``asyncio.get_running_loop`` to return its loop from any trio task below it, whose ``time()`` is
  ``trio.current_time()``. So **feed_update needs the bridge to be open**, and nothing else here
  does; without it aiogram raises ``RuntimeError: no running event loop``.

aiogram's FSM uses no asyncio primitive on this path: ``MemoryStorage`` is a dict, and the default
event isolation (``DisabledEventIsolation``) takes no lock — per-user ordering is ours (below).

Memory is bounded: at most ``max_pending`` updates are queued or running, at most
``per_user_queue`` of them for one user, and a user's queue (and its task) is dropped as soon as it
is empty. When there is no room, :meth:`UpdateDispatcher.submit` waits (polling: back-pressure, the
next ``getUpdates`` simply comes later) and :meth:`UpdateDispatcher.submit_nowait` raises
:class:`DispatchFull` (webhook: answer 503 and Telegram retries). Rejected alternative: dropping a
flooding user's updates — that is silence, which the predecessor's limiter produced.

Duplicates (a webhook retried after we accepted it, a batch re-polled after the intake restarted)
are recognised by ``update_id`` while queued and for the last ``dedupe_window`` completed updates,
and dropped.

Completion reports: every update that ends (handled, or failed and apologised for) is reported,
synchronously and in the order they end, to each ``on_finished`` listener: the polling intake
confirms to Telegram only what was reported (:mod:`atlas.telegram.watermark`), the handled-update
log records it (:mod:`atlas.telegram.handled_log`), and :meth:`UpdateDispatcher.take` (the webhook)
waits for it. An update dropped because :meth:`UpdateDispatcher.run` ended is never reported.

The error boundary: aiogram's own ``@router.errors(...)`` handlers see a failure first (errors are
events). A failure nobody handled — or a handler that runs longer than ``handler_timeout`` — is
caught here: the user gets a short apology in their language, sent directly and best effort, and a
crash report (kind ``crash``, path ``.../dispatch``, the update described without its text) goes to
the :class:`~atlas.supervision.CrashReporter`, and the user's FSM state (their conversation: "type
the broadcast text", "enter a promo code") is cleared, so that a failed step does not leave them
stuck in a prompt whose every answer fails again. The update is then done; the dispatcher goes on.
Never silence, never a dead user queue.

Latency (handed over → handled, and the handler alone) is kept in bounded reservoirs for p50/p99.

Errors::

    DispatchError
    ├── DispatchFull          busy: no room for the update (global or the user's queue); a WouldBlock
    └── DispatchNotRunning    you: submit before run() started or after it ended
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import trio
from aiogram import Bot, Dispatcher
from aiogram.dispatcher.middlewares.user_context import EventContext, UserContextMiddleware
from aiogram.exceptions import AiogramError
from aiogram.methods import TelegramMethod
from aiogram.types import Update

from atlas.storage import Database, StorageError
from atlas.storage.units.delivery import user_language
from atlas.supervision import ChildContext, ChildSpec, CrashReporter, ReportKind, RestartType
from atlas.telegram.i18n import Translator, bundled
from atlas.telegram.throttling import replies_wait_out_throttling

_log = logging.getLogger("atlas.telegram.dispatch")

LanguageResolver = Callable[[int], Awaitable[str | None]]
"""Given a user id, the language stored for them (None: unknown); used for the apology."""

UpdateKey = int | str

FinishListener = Callable[[int], None]
"""Told the id of each update that ended (handled or failed); must not block or raise."""


class DispatchError(Exception):
    """Base of the dispatcher's own errors."""


class DispatchFull(DispatchError, trio.WouldBlock):
    """No room for the update: ``max_pending`` reached, or the user's queue is full (``scope``)."""

    def __init__(self, scope: str, limit: int) -> None:
        self.scope = scope
        self.limit = limit
        super().__init__(f"dispatch is full: {scope} holds {limit} updates")


class DispatchNotRunning(DispatchError):
    """An update was submitted while the dispatcher is not running."""


@dataclass(frozen=True, slots=True)
class DispatchSettings:
    """Bounds of the dispatcher. All optional:

    - ``max_concurrency`` (64): handlers running at once, across users.
    - ``max_pending`` (1000): updates queued or running, across users.
    - ``per_user_queue`` (50): updates queued or running for one user.
    - ``handler_timeout`` (60 s): a handler running longer is cancelled and treated as a failure.
    - ``apology_timeout`` (5 s): the time box of the apology (and of the language lookup).
    - ``dedupe_window`` (10000): completed update ids remembered to drop duplicates.
    - ``latency_samples`` (4096): size of each latency reservoir.
    """

    max_concurrency: int = 64
    max_pending: int = 1000
    per_user_queue: int = 50
    handler_timeout: float = 60.0
    apology_timeout: float = 5.0
    dedupe_window: int = 10_000
    latency_samples: int = 4096

    def __post_init__(self) -> None:
        for name in ("max_concurrency", "max_pending", "per_user_queue", "dedupe_window", "latency_samples"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"DispatchSettings.{name} must be an int >= 1, got {value!r}")
        for name in ("handler_timeout", "apology_timeout"):
            value = getattr(self, name)
            if not isinstance(value, int | float) or isinstance(value, bool) or not 0 < value < math.inf:
                raise ValueError(f"DispatchSettings.{name} must be a finite number > 0, got {value!r}")
        if self.per_user_queue > self.max_pending:
            raise ValueError(
                f"DispatchSettings.per_user_queue ({self.per_user_queue}) exceeds max_pending "
                f"({self.max_pending})"
            )


class LatencyReservoir:
    """The most recent ``capacity`` samples (seconds), plus the count and maximum of all of them.

    A ring of recent samples rather than a uniform sample of all time: an operator wants to know
    how slow the bot is now, and a benchmark run fits in the ring anyway.
    """

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError(f"capacity must be >= 1, got {capacity!r}")
        self._samples: deque[float] = deque(maxlen=capacity)
        self.count = 0
        self.maximum = 0.0

    def add(self, seconds: float) -> None:
        """Record one sample."""
        self._samples.append(seconds)
        self.count += 1
        self.maximum = max(self.maximum, seconds)

    def percentile(self, p: float) -> float | None:
        """The ``p``-th percentile (0..100, nearest rank) of the kept samples; None when empty."""
        if not 0 <= p <= 100:
            raise ValueError(f"percentile must be in 0..100, got {p!r}")
        if not self._samples:
            return None
        ordered = sorted(self._samples)
        rank = max(1, math.ceil(p / 100 * len(ordered)))
        return ordered[rank - 1]


@dataclass(frozen=True, slots=True)
class DispatchStatistics:
    """A snapshot: queues, counters and latency (seconds; None before the first update).

    ``submitters_waiting`` counts :meth:`UpdateDispatcher.submit` calls waiting for room (the
    polling intake under back-pressure).
    """

    pending: int
    active_users: int
    running: int
    submitters_waiting: int
    handled: int
    failed: int
    duplicates: int
    rejected: int
    latency_p50: float | None
    latency_p99: float | None
    latency_max: float
    handler_p50: float | None
    handler_p99: float | None


@dataclass(slots=True)
class _Item:
    update: Update
    received: float


def event_context(update: Update) -> EventContext:
    """The chat and user an update belongs to (aiogram's own resolution)."""
    return UserContextMiddleware.resolve_event_context(update)


def update_key(update: Update) -> UpdateKey:
    """What orders updates: the user id, else the chat id, else the update itself (no ordering)."""
    context = event_context(update)
    if context.user_id is not None:
        return context.user_id
    if context.chat_id is not None:
        return f"chat:{context.chat_id}"
    return f"update:{update.update_id}"


def describe_update(update: Update) -> str:
    """A one-line description for reports and logs; never the user's text."""
    context = event_context(update)
    try:
        kind = update.event_type
    except AiogramError:
        kind = "unknown"
    return f"update {update.update_id} {kind} from user {context.user_id} in chat {context.chat_id}"


def stored_language(db: Callable[[], Database]) -> LanguageResolver:
    """A :data:`LanguageResolver` reading ``users.language`` through a unit of work."""

    async def resolve(user_id: int) -> str | None:
        return await db().run(user_language, user_id=user_id)

    return resolve


class UpdateDispatcher:
    """Hands updates to aiogram: in order per user, in parallel across users, within bounds.

    ``dispatcher`` is the aiogram root (see :func:`atlas.telegram.wiring.build_dispatcher`),
    ``bot`` the Bot the handlers answer with, ``reporter`` where failures are reported.
    ``language`` (optional) finds a user's stored language for the apology; without it (or when it
    fails) the client's ``language_code`` decides. ``feed_kwargs`` reach every handler.
    ``on_finished`` listeners get each completion report (see the module docstring).
    Start it with :meth:`run` (a supervised child: :meth:`child_spec`) before submitting.
    """

    def __init__(
        self,
        *,
        dispatcher: Dispatcher,
        bot: Bot,
        reporter: CrashReporter,
        settings: DispatchSettings | None = None,
        translator: Translator | None = None,
        language: LanguageResolver | None = None,
        path: str = "root/telegram/dispatch",
        feed_kwargs: Mapping[str, Any] | None = None,
        on_finished: Iterable[FinishListener] = (),
    ) -> None:
        self.settings = settings or DispatchSettings()
        self._listeners: list[FinishListener] = list(on_finished)
        self._finished_events: dict[int, trio.Event] = {}
        self._dp = dispatcher
        self._bot = bot
        self._reporter = reporter
        self._translator = translator
        self._language = language
        self.path = path
        self._feed_kwargs = dict(feed_kwargs or {})
        self._limiter = trio.CapacityLimiter(self.settings.max_concurrency)
        self._queues: dict[UpdateKey, deque[_Item]] = {}
        self._pending = 0
        self._inflight: set[int] = set()
        self._done_order: deque[int] = deque()
        self._done: set[int] = set()
        self._room = trio.lowlevel.ParkingLot()
        self._idle = trio.lowlevel.ParkingLot()
        self._nursery: trio.Nursery | None = None
        self._started_at = 0.0
        self.latency = LatencyReservoir(self.settings.latency_samples)
        self.handler_time = LatencyReservoir(self.settings.latency_samples)
        self.handled = 0
        self.failed = 0
        self.duplicates = 0
        self.rejected = 0

    # -- running ---------------------------------------------------------------------------------

    @property
    def running(self) -> bool:
        """True while :meth:`run` is accepting updates."""
        return self._nursery is not None

    async def run(
        self,
        ctx: ChildContext | None = None,
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Accept and handle updates until cancelled.

        Cancellation cancels the handlers in progress and drops what was queued: those updates
        are never reported finished, so they were not confirmed to Telegram (polling) or answered
        (webhook), and Telegram sends them again. Raises ``RuntimeError`` at once when no asyncio loop is
        visible from trio (the bridge is not open); otherwise only for a bug in the dispatcher.
        """
        if self._nursery is not None:
            raise RuntimeError("UpdateDispatcher.run is already running")
        try:
            asyncio.get_running_loop()  # what feed_update calls; fail at start, not on every update
        except RuntimeError as exc:
            raise RuntimeError(
                "UpdateDispatcher needs the trio-asyncio bridge open (atlas.runtime.bridge.open_bridge): "
                "aiogram's feed_update calls asyncio.get_running_loop()"
            ) from exc
        if ctx is not None:
            self.path = ctx.path
        self._started_at = trio.current_time()
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                task_status.started()
                await trio.sleep_forever()
        finally:
            self._nursery = None
            dropped = self._pending
            self._queues.clear()
            self._inflight.clear()
            self._pending = 0
            self._room.unpark_all()
            self._idle.unpark_all()
            for event in self._finished_events.values():
                event.set()  # the waiters see the update not done: answered 503
            self._finished_events.clear()
            if dropped:
                _log.warning("dispatcher stopped with %d updates queued or running: dropped", dropped)

    def child_spec(self, name: str = "dispatch", shutdown_timeout: float = 10.0) -> ChildSpec:
        """A permanent child running :meth:`run`."""
        return ChildSpec(
            name=name, start=self.run, restart=RestartType.PERMANENT, shutdown_timeout=shutdown_timeout
        )

    # -- submitting ------------------------------------------------------------------------------

    def submit_nowait(self, update: Update) -> bool:
        """Queue ``update`` for its user; False if it is a duplicate (dropped).

        Raises :class:`DispatchFull` when there is no room and :class:`DispatchNotRunning` when the
        dispatcher is not running; nothing changes then.
        """
        nursery = self._nursery
        if nursery is None:
            raise DispatchNotRunning("the update dispatcher is not running")
        update_id = update.update_id
        if update_id in self._inflight or update_id in self._done:
            self.duplicates += 1
            return False
        key = update_key(update)
        queue = self._queues.get(key)
        if self._pending >= self.settings.max_pending:
            self.rejected += 1
            raise DispatchFull("the dispatcher", self.settings.max_pending)
        if queue is not None and len(queue) >= self.settings.per_user_queue:
            self.rejected += 1
            raise DispatchFull(f"the queue of {key}", self.settings.per_user_queue)
        item = _Item(update, trio.current_time())
        if queue is None:
            queue = deque([item])
            self._queues[key] = queue
            nursery.start_soon(self._serve, key, queue, name=f"telegram-user:{key}")
        else:
            queue.append(item)
        self._pending += 1
        self._inflight.add(update_id)
        return True

    async def submit(self, update: Update) -> bool:
        """Like :meth:`submit_nowait`, but wait for room instead of raising :class:`DispatchFull`.

        Cancelled while waiting: the update was not queued.
        """
        while True:
            try:
                return self.submit_nowait(update)
            except DispatchFull:
                await self._room.park()

    def is_done(self, update_id: int) -> bool:
        """True if ``update_id`` ended here (handled or failed), within the last ``dedupe_window``."""
        return update_id in self._done

    def add_finish_listener(self, listener: FinishListener) -> Callable[[], None]:
        """Add a completion listener; returns the function that removes it again."""
        self._listeners.append(listener)

        def remove() -> None:
            if listener in self._listeners:
                self._listeners.remove(listener)

        return remove

    async def take(self, update: Update, within: float) -> bool:
        """Queue ``update`` (unless already here) and wait until it ended, at most ``within`` s.

        True once it ended (now or earlier: a duplicate of a finished update); False when
        ``within`` passed first or the dispatcher stopped with it unhandled — it stays queued or
        running then, and a duplicate taken later waits for the same completion. Raises like
        :meth:`submit_nowait` when it cannot be queued. For the webhook, which answers Telegram
        only for what was handled.
        """
        update_id = update.update_id
        if update_id in self._done:
            self.duplicates += 1
            return True
        self.submit_nowait(update)  # a duplicate still in flight returns False: wait for it too
        event = self._finished_events.get(update_id)
        if event is None:
            event = self._finished_events[update_id] = trio.Event()
        with trio.move_on_after(within):
            await event.wait()
        return update_id in self._done

    async def join(self) -> None:
        """Wait until nothing is queued or running (tests, graceful drain)."""
        while self._pending:
            await self._idle.park()

    # -- handling --------------------------------------------------------------------------------

    async def _serve(self, key: UpdateKey, queue: deque[_Item]) -> None:
        # The item stays at the head while it runs, so the per-user bound counts it.
        try:
            while queue:
                item = queue[0]
                ended = False
                try:
                    await self._handle(item)
                    ended = True
                finally:
                    queue.popleft()
                    # Cancelled mid-way (the dispatcher stopping) is not finished: never reported,
                    # so it is neither confirmed nor recorded, and Telegram sends it again.
                    self._finish(item.update.update_id, ended=ended)
        finally:
            # Synchronously after the queue ran dry: a later submit starts a fresh task.
            if self._queues.get(key) is queue:
                del self._queues[key]

    def _finish(self, update_id: int, *, ended: bool) -> None:
        if update_id not in self._inflight:
            return  # run() ended and reset the books
        self._inflight.discard(update_id)
        self._pending -= 1
        self._room.unpark_all()
        if self._pending == 0:
            self._idle.unpark_all()
        if not ended:
            return
        self._done.add(update_id)
        self._done_order.append(update_id)
        while len(self._done_order) > self.settings.dedupe_window:
            self._done.discard(self._done_order.popleft())
        event = self._finished_events.pop(update_id, None)
        if event is not None:
            event.set()
        for listener in self._listeners:
            listener(update_id)

    async def _handle(self, item: _Item) -> None:
        try:
            async with self._limiter:
                began = trio.current_time()
                try:
                    with trio.fail_after(self.settings.handler_timeout):
                        await self._feed(item.update)
                finally:
                    self.handler_time.add(trio.current_time() - began)
            self.handled += 1
        except Exception as exc:  # noqa: BLE001 - the boundary: every failure is reported, then we go on
            self.failed += 1
            await self._boundary(item.update, exc)
        finally:
            self.latency.add(trio.current_time() - item.received)

    async def _feed(self, update: Update) -> None:
        # A handler may return a method instead of awaiting it (the webhook-reply style); aiogram's
        # own polling executes it, so do we.
        with replies_wait_out_throttling():
            response = await self._dp.feed_update(self._bot, update, **self._feed_kwargs)
            if isinstance(response, TelegramMethod):
                await self._bot(response)

    async def _boundary(self, update: Update, error: Exception) -> None:
        what = describe_update(update)
        if isinstance(error, trio.TooSlowError):
            message = f"handler did not finish within {self.settings.handler_timeout:g}s"
        else:
            message = f"{type(error).__name__}: {error}"
        _log.error("handler failed on %s: %s", what, message, exc_info=error)
        state = await self._clear_state(update)
        apology = await self._apologise(update)
        report = self._reporter.compose(
            kind=ReportKind.CRASH,
            path=self.path,
            error=error,
            decision=f"update dropped; {state}; {apology}",
            restarts_in_window=0,
            max_restarts=0,
            period=0.0,
            uptime=trio.current_time() - self._started_at,
            handling=what,
            mailbox_depth=self._pending,
            message=message,
        )
        await self._reporter.report(report)

    async def _clear_state(self, update: Update) -> str:
        """End the user's FSM conversation (the step that failed must not be asked again)."""
        context = event_context(update)
        fsm = self._dp.fsm.resolve_context(
            bot=self._bot,
            chat_id=context.chat_id,
            user_id=context.user_id,
            thread_id=context.thread_id,
            business_connection_id=context.business_connection_id,
        )
        if fsm is None:
            return "no conversation state"
        try:
            with trio.move_on_after(self.settings.apology_timeout) as scope:
                await fsm.clear()
        except Exception as exc:  # noqa: BLE001 - a storage failure must not cost the apology; it is logged and reported
            _log.warning("could not clear the conversation state of %s: %s", context.user_id, exc)
            return f"conversation state not cleared: {type(exc).__name__}: {exc}"
        if scope.cancelled_caught:
            return "conversation state not cleared: timed out"
        return "conversation state cleared"

    async def _apologise(self, update: Update) -> str:
        """Send the apology (best effort, time-boxed); return what happened, for the report."""
        context = event_context(update)
        chat_id = context.chat_id if context.chat_id is not None else context.user_id
        if chat_id is None:
            return "no chat to apologise to"
        translator = self._translator or bundled()
        outcome = "apology not sent: timed out"
        with trio.move_on_after(self.settings.apology_timeout):
            language = await self._language_of(context)
            text = translator.t(language, "errors.apology")
            try:
                if update.callback_query is not None:
                    # Stop the button's spinner too; the message below carries the words.
                    await self._bot.answer_callback_query(update.callback_query.id)
                await self._bot.send_message(chat_id, text, parse_mode="HTML")
                outcome = f"apology sent to chat {chat_id} ({translator.language_for(language)})"
            except AiogramError as exc:
                outcome = f"apology not sent: {type(exc).__name__}: {exc}"
                _log.warning("could not apologise to chat %s: %s", chat_id, exc)
        return outcome

    async def _language_of(self, context: EventContext) -> str | None:
        client = context.user.language_code if context.user is not None else None
        if self._language is None or context.user_id is None:
            return client
        try:
            stored = await self._language(context.user_id)
        except StorageError as exc:
            _log.warning("language of user %s unknown (%s); using the client's", context.user_id, exc)
            return client
        return stored or client

    # -- observing -------------------------------------------------------------------------------

    def statistics(self) -> DispatchStatistics:
        """A snapshot of queues, counters and latencies."""
        return DispatchStatistics(
            pending=self._pending,
            active_users=len(self._queues),
            running=int(self._limiter.borrowed_tokens),
            submitters_waiting=self._room.statistics().tasks_waiting,
            handled=self.handled,
            failed=self.failed,
            duplicates=self.duplicates,
            rejected=self.rejected,
            latency_p50=self.latency.percentile(50),
            latency_p99=self.latency.percentile(99),
            latency_max=self.latency.maximum,
            handler_p50=self.handler_time.percentile(50),
            handler_p99=self.handler_time.percentile(99),
        )
