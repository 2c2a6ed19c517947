"""Intake: how updates reach the dispatcher — long polling driven by Atlas, or a webhook route.

**Polling** (:class:`PollingIntake`). Atlas calls ``getUpdates`` itself instead of aiogram's
``start_polling``, which would spawn asyncio tasks nobody supervises and install its own signal
handlers. Each batch is handed to :class:`~atlas.telegram.dispatch.UpdateDispatcher` update by
update (waiting for room: back-pressure). The ``offset`` of the next ``getUpdates`` — what
confirms updates to Telegram — is the **lowest update id not yet handled**, per the dispatcher's
completion reports (:class:`~atlas.telegram.watermark.HandledWatermark`); one past the last when
all are handled. So a process killed at any point (even SIGKILL) has confirmed only updates that
were handled: Telegram sends the rest to the next poller. Nothing handed over is lost.

What the next poller receives again may include updates the killed one had already handled
(handled while a lower one was still running). Those are recorded in PostgreSQL at once
(:class:`~atlas.telegram.handled_log.HandledLog`: one INSERT for all that finished meanwhile;
the others every 0.25 s), and on taking the lock
the intake reads the highest recorded id: updates of a batch at or below it are looked up (one
query per such batch, only in the first rounds after a takeover) and skipped when recorded. An
update replied to but neither recorded nor confirmed when the process died is handled again (the
remaining window, milliseconds: see :mod:`atlas.telegram.handled_log`). Within one process, the
dispatcher's own dedupe recognises re-sent updates after an intake restart.

While updates are unhandled, ``getUpdates`` at the low offset answers at once with what the intake
already has, so after a batch the intake waits until the offset moves (the lowest one finished),
at most ``recheck_every`` (0.25 s), before it polls again: in the common case one ``getUpdates``
per batch, as before, and a new update waits at most ``recheck_every`` behind a slow one. A batch
holds at most ``limit`` (100) updates from the offset on, so at most about 100 updates past the
oldest unhandled one are in hand: a handler stuck for its whole ``handler_timeout`` holds the
intake back that far (the dispatcher's own bound, ``max_pending``, is larger).

Only one process may poll a bot (Telegram answers 409 to the other). A PostgreSQL session advisory
lock (:func:`atlas.storage.locks.hold_advisory_lock`) is held for as long as this intake polls; a
second process stands by, trying again every ``standby_retry`` seconds, and takes over when the
first one stops. The lock's session is probed every ``lock_check_every`` seconds; if it is gone,
the intake stops polling at once (:class:`~atlas.storage.locks.AdvisoryLockLost`) rather than
poll unlocked, and, like a lock it cannot take because the database is away, waits for the
database (marked as waiting) and takes the lock again, instead of crashing its supervisor.

Failures of ``getUpdates``, by cause:

==========================  ===============================================================
error                       what the intake does
==========================  ===============================================================
409 Conflict                a webhook is set, or another process polls without the lock: a
                            clear error log, then retry with backoff (up to ``max_backoff``)
429 retry_after             wait ``retry_after``, then retry
5xx, network, bad JSON      retry with exponential, jittered backoff
401 Unauthorized            :class:`IntakeUnauthorized` (the token is wrong: nothing to retry)
other 4xx                   :class:`IntakeRefused` (the request or API base is wrong)
==========================  ===============================================================

**Webhook** (:func:`telegram_webhook_route`): a Starlette route that checks
``X-Telegram-Bot-Api-Secret-Token`` in constant time (401 on a bad or missing secret), parses the
update (400 if malformed, 413 if too large) and answers only once the update is **handled**: 200
when the dispatcher reports it done (or it was done already: a duplicate, here or recorded in
PostgreSQL by any process), 503 when the dispatcher is full or not running, or when it is not
done within ``answer_within`` (25 s), so that Telegram sends it again later.

Why answer after handling rather than record first: Telegram holds the update until it gets a 2xx
and sends it again otherwise, so it is the durable queue already; recording "taken" first would
need an inbox table and a recovery worker to handle what a killed process took and never handled.
The cost is an open request per update being handled (Telegram allows ``max_connections``, 40, at
once). A re-sent update is looked up in the handled-update log (one indexed query) before it is
handled, because behind a load balancer it may reach another process than the one that handled
it. Past ``answer_within`` the update stays in hand; the re-send, if it reaches the same process,
waits for that same completion. The remaining window is the log's (an update handled and replied
to whose answer and record were both cut by a SIGKILL is handled again).

Errors::

    IntakeError
    ├── IntakeUnauthorized   you: Telegram refused the bot token (401)
    └── IntakeRefused        you: Telegram refused getUpdates with another 4xx
"""

from __future__ import annotations

import hmac
import logging
import random
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import trio
from aiogram import Bot
from aiogram.exceptions import (
    ClientDecodeError,
    TelegramAPIError,
    TelegramConflictError,
    TelegramNetworkError,
    TelegramRetryAfter,
    TelegramServerError,
    TelegramUnauthorizedError,
)
from aiogram.types import Update
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from atlas.net.json_limits import loads_bounded
from atlas.storage import BudgetExhausted, Database, DatabaseUnavailable, StorageError
from atlas.storage.locks import AdvisoryLock, AdvisoryLockBusy, AdvisoryLockLost, hold_advisory_lock
from atlas.supervision import Backoff, ChildContext, ChildSpec, RestartType
from atlas.telegram.dispatch import DispatchFull, DispatchNotRunning, UpdateDispatcher
from atlas.telegram.handled_log import HandledLog
from atlas.telegram.watermark import HandledWatermark

_log = logging.getLogger("atlas.telegram.intake")

_SECRET = re.compile(r"^[A-Za-z0-9_-]{1,256}$")
SECRET_HEADER = "x-telegram-bot-api-secret-token"


class IntakeError(Exception):
    """Base of the intake's errors."""


class IntakeUnauthorized(IntakeError):
    """Telegram answered 401 to getUpdates: the bot token is wrong or revoked."""


class IntakeRefused(IntakeError):
    """Telegram refused getUpdates with a 4xx other than 401/409/429."""


# The explicit map of transient getUpdates failures (retried with backoff).
_TRANSIENT: tuple[type[BaseException], ...] = (
    TelegramServerError,
    TelegramNetworkError,
    ClientDecodeError,
    trio.TooSlowError,
)


@dataclass(frozen=True, slots=True)
class PollingSettings:
    """How to poll. All optional:

    - ``limit`` (100, 1..100): updates per ``getUpdates``.
    - ``timeout`` (25 s): the long-poll wait Telegram may take before answering an empty list.
    - ``allowed_updates`` (None = Telegram's default set): update kinds to receive.
    - ``backoff``: delays after consecutive failures (1 s doubling to 60 s, ±20 %).
    - ``standby_retry`` (5 s): how often a standby process tries to take the lock.
    - ``lock_check_every`` (30 s): how often the lock's session is probed while polling.
    - ``recheck_every`` (0.25 s): while updates are unhandled, the longest wait for the offset to
      move before polling again (how long a new update may wait behind a slow one).
    - ``lock_name``: the advisory lock's name; one per bot (the token's bot id is appended).
    """

    limit: int = 100
    timeout: int = 25
    allowed_updates: Sequence[str] | None = None
    backoff: Backoff = field(
        default_factory=lambda: Backoff(initial=1.0, factor=2.0, maximum=60.0, jitter=0.2)
    )
    standby_retry: float = 5.0
    lock_check_every: float = 30.0
    recheck_every: float = 0.25
    lock_name: str = "atlas.telegram.polling"

    def __post_init__(self) -> None:
        if isinstance(self.limit, bool) or not isinstance(self.limit, int) or not 1 <= self.limit <= 100:
            raise ValueError(f"PollingSettings.limit must be an int in 1..100, got {self.limit!r}")
        if isinstance(self.timeout, bool) or not isinstance(self.timeout, int) or not 0 <= self.timeout <= 50:
            raise ValueError(f"PollingSettings.timeout must be an int in 0..50 seconds, got {self.timeout!r}")
        for name in ("standby_retry", "lock_check_every", "recheck_every"):
            value = getattr(self, name)
            if not isinstance(value, int | float) or isinstance(value, bool) or not value > 0:
                raise ValueError(f"PollingSettings.{name} must be a number > 0, got {value!r}")


@dataclass(frozen=True, slots=True)
class IntakeStatistics:
    """A snapshot of the polling intake. ``state`` is standby, polling or backoff (or stopped)."""

    state: str
    polls: int
    updates: int
    failures: int
    conflicts: int
    offset: int | None
    unhandled: int
    skipped_recorded: int


class PollingIntake:
    """Long polling, supervised: ``getUpdates`` → :meth:`UpdateDispatcher.submit`, offset past the handled.

    ``db`` (a callable returning the open Database, as the runtime's services provide it) enables
    the singleton lock; None polls without one (tests, a single-process demo). ``log`` (the
    handled-update log) makes a new poller skip what a killed predecessor handled; None relies on
    the dispatcher's memory only. ``rng`` jitters the backoff (seeded in tests).
    """

    def __init__(
        self,
        *,
        bot: Bot,
        dispatcher: UpdateDispatcher,
        db: Callable[[], Database] | None = None,
        log: HandledLog | None = None,
        settings: PollingSettings | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.settings = settings or PollingSettings()
        self._bot = bot
        self._dispatcher = dispatcher
        self._db = db
        self._log = log
        self._watermark = HandledWatermark()
        # Registered once: the completions of every incarnation's hand-overs reach the current one.
        dispatcher.add_finish_listener(self._finished)
        self.skipped_recorded = 0
        self._rng = rng or random.Random()
        self.state = "stopped"
        self.polls = 0
        self.updates = 0
        self.failures = 0
        self.conflicts = 0
        self.offset: int | None = None

    def child_spec(self, name: str = "intake", shutdown_timeout: float = 5.0) -> ChildSpec:
        """A permanent child running :meth:`run`; start it after the dispatcher's child."""
        return ChildSpec(
            name=name, start=self.run, restart=RestartType.PERMANENT, shutdown_timeout=shutdown_timeout
        )

    @property
    def lock_name(self) -> str:
        """The advisory lock's name for this bot."""
        return f"{self.settings.lock_name}:{self._bot.id}"

    async def run(
        self,
        ctx: ChildContext | None = None,
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Poll until cancelled. Up at once (a standby process is up too: standing by is its job).

        Cancellation ends the current ``getUpdates`` (its HTTP request is abandoned) and releases
        the lock; nothing of an unfinished batch was confirmed.
        """
        task_status.started()
        try:
            if self._db is None:
                await self._poll(None, ctx)
                return
            while True:
                try:
                    async with hold_advisory_lock(self._db(), self.lock_name) as lock:
                        if ctx is not None:
                            ctx.mark_waiting(None)
                        _log.info("polling lock %r taken; this process polls Telegram", self.lock_name)
                        await self._poll(lock, ctx)
                except AdvisoryLockBusy:
                    if self.state != "standby":
                        _log.info(
                            "another process holds the polling lock %r; standing by (retry every %gs)",
                            self.lock_name,
                            self.settings.standby_retry,
                        )
                    self.state = "standby"
                    await trio.sleep(self.settings.standby_retry)
                except (DatabaseUnavailable, BudgetExhausted, AdvisoryLockLost) as exc:
                    # The database went away (the lock with its session): wait for it and take the
                    # lock again on this incarnation, instead of crashing the bot's supervisor.
                    _log.warning(
                        "polling lock %r: the database is away (%s); trying again in %gs",
                        self.lock_name,
                        exc,
                        self.settings.standby_retry,
                    )
                    self.state = "standby"
                    if ctx is not None:
                        ctx.mark_waiting("database")
                    await trio.sleep(self.settings.standby_retry)
        finally:
            self.state = "stopped"

    def _finished(self, update_id: int) -> None:
        watermark = self._watermark
        watermark.handled(update_id)
        offset = self.offset = watermark.offset
        if self._log is not None and offset is not None and update_id > offset:
            # Finished while a lower update still runs: not confirmable yet, so record it now.
            self._log.hurry()

    async def _poll(self, lock: AdvisoryLock | None, ctx: ChildContext | None) -> None:
        settings = self.settings
        # A fresh incarnation starts from Telegram's own record (the last confirmed offset: the
        # lowest update not handled when the last poller stopped).
        watermark = self._watermark = HandledWatermark()
        self.offset = None
        # Updates up to the highest recorded id may have been handled by a predecessor.
        horizon = await self._log.highest() if self._log is not None else None
        consecutive = 0
        checked_at = trio.current_time()
        allowed = list(settings.allowed_updates) if settings.allowed_updates is not None else None
        while True:
            if lock is not None and trio.current_time() - checked_at >= settings.lock_check_every:
                await lock.check()
                checked_at = trio.current_time()
            self.state = "polling"
            if ctx is not None:
                ctx.heartbeat()
            offset = watermark.offset
            try:
                with trio.fail_after(settings.timeout + 30):
                    updates = await self._bot.get_updates(
                        offset=offset,
                        limit=settings.limit,
                        timeout=settings.timeout,
                        allowed_updates=allowed,
                        request_timeout=settings.timeout + 15,
                    )
            except TelegramUnauthorizedError as exc:
                raise IntakeUnauthorized(f"Telegram refused the bot token: {exc.message}") from exc
            except TelegramConflictError as exc:
                self.conflicts += 1
                consecutive += 1
                delay = settings.backoff.delay(consecutive, self._rng)
                _log.error(
                    "getUpdates answered 409 Conflict (%s): a webhook is set for this bot, or another "
                    "process polls with the same token. Polling needs no webhook — delete it "
                    "(deleteWebhook) or run in webhook mode. Retrying in %.1fs",
                    exc.message,
                    delay,
                )
                await self._back_off(delay)
                continue
            except TelegramRetryAfter as exc:
                _log.warning("getUpdates: 429, retrying after %ss", exc.retry_after)
                await self._back_off(float(exc.retry_after))
                continue
            except _TRANSIENT as exc:
                self.failures += 1
                consecutive += 1
                delay = settings.backoff.delay(consecutive, self._rng)
                _log.warning("getUpdates failed (%s: %s); retrying in %.1fs", type(exc).__name__, exc, delay)
                await self._back_off(delay)
                continue
            except TelegramAPIError as exc:
                refused = f"Telegram refused getUpdates: {type(exc).__name__}: {exc.message}"
                raise IntakeRefused(refused) from exc
            consecutive = 0
            self.polls += 1
            fresh = [update for update in updates if not watermark.knows(update.update_id)]
            recorded = await self._recorded(fresh, horizon)
            for update in fresh:  # in order: see HandledWatermark.handled
                await self._hand_over(watermark, update, recorded)
            self.offset = watermark.offset
            if watermark.unhandled:
                # getUpdates would answer at once with what we already hold: poll again when the
                # offset has moved (confirming what finished), or after recheck_every for new ones.
                await watermark.wait_moved(self.offset, settings.recheck_every)

    async def _recorded(self, fresh: list[Update], horizon: int | None) -> set[int]:
        """The ids of ``fresh`` a predecessor recorded as handled (looked up only up to ``horizon``)."""
        if self._log is None or horizon is None:
            return set()
        candidates = [update.update_id for update in fresh if update.update_id <= horizon]
        return await self._log.recorded_among(candidates) if candidates else set()

    async def _hand_over(self, watermark: HandledWatermark, update: Update, recorded: set[int]) -> None:
        update_id = update.update_id
        if update_id in recorded:
            self.skipped_recorded += 1
            watermark.passed_over(update_id)
            return
        watermark.handed_over(update_id)
        if not await self._dispatcher.submit(update) and self._dispatcher.is_done(update_id):
            # Already handled by this process (an earlier incarnation of the intake handed it
            # over); one still running reports its completion in time.
            watermark.handled(update_id)
        self.updates += 1

    async def _back_off(self, delay: float) -> None:
        self.state = "backoff"
        await trio.sleep(delay)

    def statistics(self) -> IntakeStatistics:
        """A snapshot of the intake."""
        return IntakeStatistics(
            state=self.state,
            polls=self.polls,
            updates=self.updates,
            failures=self.failures,
            conflicts=self.conflicts,
            offset=self.offset,
            unhandled=self._watermark.unhandled,
            skipped_recorded=self.skipped_recorded,
        )


# ---------------------------------------------------------------------------------------------
# Webhook


class UpdateSink(Protocol):
    """What the webhook route hands updates to: an :class:`UpdateDispatcher`, or a stand-in for one."""

    async def take(self, update: Update, within: float) -> bool:
        """Have ``update`` handled; True once it is (or was), False if not within ``within`` seconds.

        ``DispatchFull``/``DispatchNotRunning`` when it cannot be queued (see
        :meth:`UpdateDispatcher.take`).
        """
        ...


def telegram_webhook_route(
    path: str,
    secret: str,
    dispatcher: UpdateSink,
    bot: Bot,
    *,
    max_body: int = 1024 * 1024,
    answer_within: float = 25.0,
) -> Route:
    """A ``POST path`` route that feeds Telegram's webhook calls to ``dispatcher``.

    ``secret`` is the ``secret_token`` given to ``setWebhook`` (1-256 of ``A-Z a-z 0-9 _ -``);
    ``ValueError`` names a bad argument. Answers: 401 bad or missing secret (compared with
    ``hmac.compare_digest``), 413 body over ``max_body`` bytes, 400 not an update, 503 dispatcher
    full or not running, or the update not handled within ``answer_within`` seconds
    (``Retry-After: 1``; Telegram retries any non-2xx), 200 handled (now, or earlier: a duplicate).
    """
    if not path.startswith("/"):
        raise ValueError(f"path must start with '/', got {path!r}")
    if not _SECRET.match(secret):
        raise ValueError("secret must be 1-256 characters of A-Z, a-z, 0-9, _ and - (Telegram's rule)")
    if max_body < 1:
        raise ValueError(f"max_body must be >= 1, got {max_body!r}")
    if not 0 < answer_within < 3600:
        raise ValueError(f"answer_within must be in (0, 3600) seconds, got {answer_within!r}")
    expected = secret.encode()

    async def webhook(request: Request) -> Response:
        given = request.headers.get(SECRET_HEADER, "")
        if not hmac.compare_digest(given.encode(), expected):
            return Response(status_code=401)
        body = await _read_bounded(request, max_body)
        if body is None:
            return Response(status_code=413)
        try:
            update = Update.model_validate(loads_bounded(body), context={"bot": bot})
        except ValueError:  # bad or too deeply nested JSON, and pydantic's ValidationError: all ValueErrors
            return Response(status_code=400)
        try:
            handled = await dispatcher.take(update, answer_within)
        except (DispatchFull, DispatchNotRunning, StorageError) as exc:
            _log.warning("webhook update %s refused with 503: %s", update.update_id, exc)
            return Response(status_code=503, headers={"Retry-After": "1"})
        if not handled:
            _log.warning("webhook update %s not handled within %gs (or the dispatcher stopped): 503, "
                         "Telegram sends it again", update.update_id, answer_within)  # fmt: skip
            return Response(status_code=503, headers={"Retry-After": "1"})
        return Response(status_code=200)

    return Route(path, webhook, methods=["POST"], name="telegram_webhook")


async def _read_bounded(request: Request, limit: int) -> bytes | None:
    """The request body, or None as soon as it exceeds ``limit`` bytes."""
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
    return b"".join(chunks)


async def configure_webhook(
    bot: Bot,
    url: str,
    secret: str,
    *,
    allowed_updates: Sequence[str] | None = None,
    max_connections: int = 40,
    drop_pending_updates: bool = False,
) -> None:
    """Point Telegram at ``url`` with ``secret`` (``setWebhook``); aiogram's errors propagate."""
    if not _SECRET.match(secret):
        raise ValueError("secret must be 1-256 characters of A-Z, a-z, 0-9, _ and - (Telegram's rule)")
    await bot.set_webhook(
        url,
        secret_token=secret,
        allowed_updates=list(allowed_updates) if allowed_updates is not None else None,
        max_connections=max_connections,
        drop_pending_updates=drop_pending_updates,
    )
