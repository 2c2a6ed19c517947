"""Intake: how updates reach the dispatcher — long polling driven by Atlas, or a webhook route.

**Polling** (:class:`PollingIntake`). Atlas calls ``getUpdates`` itself instead of aiogram's
``start_polling``, which would spawn asyncio tasks nobody supervises and install its own signal
handlers. Each batch is handed to :class:`~atlas.telegram.dispatch.UpdateDispatcher` update by
update (waiting for room: back-pressure); only then is the next ``getUpdates`` sent with
``offset = last handed-over id + 1``, which is what confirms the batch to Telegram. So an intake
killed mid-batch confirms nothing of it: Telegram delivers the whole batch again, and the
dispatcher drops the updates it already has by ``update_id``. A crash re-delivers; it never loses.

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
update (400 if malformed, 413 if too large) and hands it over without waiting: 200 when queued or a
duplicate, 503 when the dispatcher is full or not running, so that Telegram retries later.

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
from atlas.storage import BudgetExhausted, Database, DatabaseUnavailable
from atlas.storage.locks import AdvisoryLock, AdvisoryLockBusy, AdvisoryLockLost, hold_advisory_lock
from atlas.supervision import Backoff, ChildContext, ChildSpec, RestartType
from atlas.telegram.dispatch import DispatchFull, DispatchNotRunning, UpdateDispatcher

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
    lock_name: str = "atlas.telegram.polling"

    def __post_init__(self) -> None:
        if isinstance(self.limit, bool) or not isinstance(self.limit, int) or not 1 <= self.limit <= 100:
            raise ValueError(f"PollingSettings.limit must be an int in 1..100, got {self.limit!r}")
        if isinstance(self.timeout, bool) or not isinstance(self.timeout, int) or not 0 <= self.timeout <= 50:
            raise ValueError(f"PollingSettings.timeout must be an int in 0..50 seconds, got {self.timeout!r}")
        for name in ("standby_retry", "lock_check_every"):
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


class PollingIntake:
    """Long polling, supervised: ``getUpdates`` → :meth:`UpdateDispatcher.submit`, offset after hand-off.

    ``db`` (a callable returning the open Database, as the runtime's services provide it) enables
    the singleton lock; None polls without one (tests, a single-process demo). ``rng`` jitters the
    backoff (seeded in tests).
    """

    def __init__(
        self,
        *,
        bot: Bot,
        dispatcher: UpdateDispatcher,
        db: Callable[[], Database] | None = None,
        settings: PollingSettings | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.settings = settings or PollingSettings()
        self._bot = bot
        self._dispatcher = dispatcher
        self._db = db
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

    async def _poll(self, lock: AdvisoryLock | None, ctx: ChildContext | None) -> None:
        settings = self.settings
        # A fresh incarnation starts from Telegram's own record (the last confirmed offset): it may
        # re-receive the last batch, and the dispatcher drops what it already has.
        offset: int | None = None
        self.offset = None
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
            for update in updates:
                await self._dispatcher.submit(update)
                offset = update.update_id + 1
                self.offset = offset
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
        )


# ---------------------------------------------------------------------------------------------
# Webhook


class UpdateSink(Protocol):
    """What the webhook route hands updates to: an :class:`UpdateDispatcher`, or a stand-in for one."""

    def submit_nowait(self, update: Update) -> bool:
        """Queue ``update``; False for a duplicate; ``DispatchFull``/``DispatchNotRunning`` when it can't."""
        ...


def telegram_webhook_route(
    path: str,
    secret: str,
    dispatcher: UpdateSink,
    bot: Bot,
    *,
    max_body: int = 1024 * 1024,
) -> Route:
    """A ``POST path`` route that feeds Telegram's webhook calls to ``dispatcher``.

    ``secret`` is the ``secret_token`` given to ``setWebhook`` (1-256 of ``A-Z a-z 0-9 _ -``);
    ``ValueError`` names a bad argument. Answers: 401 bad or missing secret (compared with
    ``hmac.compare_digest``), 413 body over ``max_body`` bytes, 400 not an update, 503 dispatcher
    full or not running (``Retry-After: 1``; Telegram retries any non-2xx), 200 queued or duplicate.
    """
    if not path.startswith("/"):
        raise ValueError(f"path must start with '/', got {path!r}")
    if not _SECRET.match(secret):
        raise ValueError("secret must be 1-256 characters of A-Z, a-z, 0-9, _ and - (Telegram's rule)")
    if max_body < 1:
        raise ValueError(f"max_body must be >= 1, got {max_body!r}")
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
            dispatcher.submit_nowait(update)
        except (DispatchFull, DispatchNotRunning) as exc:
            _log.warning("webhook update %s refused with 503: %s", update.update_id, exc)
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
