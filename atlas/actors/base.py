"""The Actor base: a bounded mailbox, optional jittered ticks, a heartbeat, one thing at a time.

An actor handles one message or one tick at a time, in one loop, so its own state needs no locks.
It is supervised like any child (:meth:`Actor.child_spec`): when ``handle`` or ``tick`` raises, the
message (or tick) being handled is dropped — it was already taken out of the mailbox, so a poison
message cannot crash the actor over and over — and the supervisor restarts the loop under its
policy. The crash report's ``handling`` names that message.

A dependency that is down is not a crash: when ``tick`` or ``handle`` raises one of
:attr:`Actor.waits_out` (``DatabaseUnavailable``, or ``BudgetExhausted``: a database so slow
that no connection comes free), the actor marks itself as waiting
(``ChildContext.mark_waiting``, shown in ``/status`` and failing ``/readyz``), backs off (jittered,
exponential) and tries again, on the same incarnation: a ten-second PostgreSQL restart costs no
restart intensity. The message being handled is dropped (a call gets the error); a tick is retried.

The mailbox belongs to the Actor *object*, not to the running loop: messages cast while the actor
is restarting wait in the mailbox for the next incarnation. So does the tick schedule.

Errors::

    ActorError                  base of the errors below
    ├── InvalidActorSpec        a constructor argument is wrong (.field, .value); also a ValueError
    ├── MailboxFull             cast_nowait found the mailbox full; also a trio.WouldBlock
    ├── CallTimeout             call() got no reply in time; also a trio.TooSlowError
    └── ActorCrashed            the actor crashed (or was stopped) while handling this call
"""

from __future__ import annotations

import logging
import math
import random
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import ClassVar

import trio

from atlas.clock import Clock, tick_period
from atlas.storage.errors import BudgetExhausted, DatabaseUnavailable
from atlas.supervision import Backoff, ChildContext, ChildSpec, RestartType

logger = logging.getLogger(__name__)

MAX_DESCRIPTION = 200


class ActorError(Exception):
    """Base class of actor errors."""


class InvalidActorSpec(ActorError, ValueError):
    """A constructor argument is invalid: ``field`` names it, ``value`` is what was given."""

    def __init__(self, field: str, value: object, why: str) -> None:
        self.field = field
        self.value = value
        super().__init__(f"invalid actor field {field}={value!r}: {why}")


class MailboxFull(ActorError, trio.WouldBlock):
    """``cast_nowait`` found the mailbox of ``actor`` full (``capacity`` messages waiting)."""

    def __init__(self, actor: str, capacity: int) -> None:
        self.actor = actor
        self.capacity = capacity
        super().__init__(f"mailbox of {actor!r} is full ({capacity} messages)")


class CallTimeout(ActorError, trio.TooSlowError):
    """No reply from ``actor`` within ``timeout`` s. The message may still be handled later."""

    def __init__(self, actor: str, timeout: float) -> None:
        self.actor = actor
        self.timeout = timeout
        super().__init__(f"no reply from {actor!r} within {timeout:g}s")


class ActorCrashed(ActorError):
    """``actor`` crashed or was stopped while handling this call's ``message`` (a description).

    ``cause`` is what the handler raised (None when the actor was cancelled); it is also chained
    as ``__cause__``. The actor itself is restarted by its supervisor.
    """

    def __init__(self, actor: str, message: str, cause: BaseException | None) -> None:
        self.actor = actor
        self.message = message
        self.cause = cause
        what = f"{type(cause).__name__}: {cause}" if cause is not None else "it was stopped"
        super().__init__(f"{actor!r} crashed while handling {message}: {what}")


@dataclass(frozen=True, slots=True)
class MailboxStatistics:
    """A snapshot of an actor (for ``/status`` and tests).

    ``depth`` messages wait in a mailbox of ``capacity``; ``senders_waiting`` tasks are blocked in
    ``cast``/``call`` for room. ``last_heartbeat`` is trio clock time (None before the first run).
    ``handling`` is what the actor is doing now (a message description or ``"tick"``), None if idle.
    """

    name: str
    depth: int
    capacity: int
    senders_waiting: int
    handled: int
    ticks: int
    crashes: int
    running: bool
    handling: str | None
    last_heartbeat: float | None
    next_tick: float | None


class _Reply:
    """A one-shot reply slot; setting it twice is ignored (the first answer wins)."""

    __slots__ = ("done", "error", "value")

    def __init__(self) -> None:
        self.done = trio.Event()
        self.value: object = None
        self.error: BaseException | None = None

    def succeed(self, value: object) -> None:
        if not self.done.is_set():
            self.value = value
            self.done.set()

    def fail(self, error: BaseException) -> None:
        if not self.done.is_set():
            self.error = error
            self.done.set()


@dataclass(frozen=True, slots=True)
class _Envelope:
    message: object
    reply: _Reply | None


def describe(message: object) -> str:
    """A short description of ``message`` for reports and logs (its repr, clipped)."""
    text = repr(message)
    return text if len(text) <= MAX_DESCRIPTION else text[: MAX_DESCRIPTION - 1] + "…"


class Actor:
    """Base class: override :meth:`handle` (messages) and/or :meth:`tick` (periodic work).

    - ``name``: the child name under its supervisor.
    - ``mailbox_size`` (default 100, >= 1): the bound; ``cast`` waits for room, ``cast_nowait``
      raises :class:`MailboxFull`.
    - ``period`` (default None = no ticks): seconds between ticks — *business* seconds once
      :meth:`follow_clock` is called (``atlas run`` calls it for every worker), trio seconds before.
    - ``first_tick`` (default (0, 0)): the first tick comes after a delay drawn uniformly from
      ``(min, max)`` with ``rng``, so that actors started together do not tick in lockstep (the
      predecessor's 600-second stampede). Same seed, same delays.
    - ``rng``: the seeded random source for that delay (default: an unseeded one).

    Ticks keep their phase: the next tick is ``period`` after the previous *due* time; ticks missed
    while a long tick ran are skipped, not queued. A due tick runs before the next message, so a
    busy mailbox cannot starve ticks; a message is handled between ticks, so ticks cannot starve
    messages unless a tick takes longer than ``period``.
    """

    #: Errors that mean "a dependency is down, wait for it" rather than "crash" (see the module).
    #: A slow database counts as one that is down: when every connection is stuck behind a lock,
    #: ``BudgetExhausted`` crashed six actors within 10 s and the workers supervisor gave up
    #: (tests/test_fault_postgres_slow.py).
    waits_out: ClassVar[tuple[type[Exception], ...]] = (DatabaseUnavailable, BudgetExhausted)
    #: The delays between attempts while waiting (jittered from the actor's ``rng``).
    wait_backoff: ClassVar[Backoff] = Backoff(initial=0.5, maximum=30.0)

    def __init__(
        self,
        name: str,
        *,
        mailbox_size: int = 100,
        period: float | None = None,
        first_tick: tuple[float, float] = (0.0, 0.0),
        rng: random.Random | None = None,
    ) -> None:
        _check_args(name, mailbox_size, period, first_tick, rng)
        self.name = name
        self.mailbox_size = mailbox_size
        self.period = period
        self.first_tick = (float(first_tick[0]), float(first_tick[1]))
        # Trio seconds per business second of period and first-tick delay (1 until follow_clock).
        self._tick_scale = 1.0
        self._rng = rng if rng is not None else random.Random()
        self._send, self._receive = trio.open_memory_channel[_Envelope](mailbox_size)
        self._ctx: ChildContext | None = None
        self._next_tick: float | None = None
        self._handling: str | None = None
        self._handled = 0
        self._ticks = 0
        self._crashes = 0
        self._last_heartbeat: float | None = None
        self._failed_attempts = 0  # consecutive steps that met a dependency that was down

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name!r}>"

    # -- to override -------------------------------------------------------------------------

    async def handle(self, message: object) -> object:
        """Handle one message; the return value is the reply to :meth:`call` (ignored for casts).

        Raising crashes the actor (the message is dropped, the supervisor restarts it). The
        default raises ``TypeError``: an actor that gets messages must say how to handle them.
        """
        raise TypeError(
            f"{type(self).__name__} {self.name!r} does not handle messages (got {describe(message)})"
        )

    async def tick(self) -> None:
        """Do the periodic work. Raising crashes the actor; the tick is not retried early."""

    # -- talking to the actor ----------------------------------------------------------------

    async def cast(self, message: object) -> None:
        """Put ``message`` in the mailbox, waiting for room. Cancelled: nothing was sent."""
        await self._send.send(_Envelope(message, None))

    def cast_nowait(self, message: object) -> None:
        """Put ``message`` in the mailbox or raise :class:`MailboxFull` at once."""
        try:
            self._send.send_nowait(_Envelope(message, None))
        except trio.WouldBlock as exc:
            raise MailboxFull(self.name, self.mailbox_size) from exc

    # The timeout is part of the call protocol (as in OTP's gen_server:call/3): it is mandatory
    # and maps to CallTimeout, which trio.fail_after around the call could not express.
    async def call(self, message: object, timeout: float) -> object:  # noqa: ASYNC109
        """Send ``message`` and wait for ``handle``'s return value, within ``timeout`` seconds.

        The time covers waiting for room in the mailbox and the handling. Raises
        :class:`CallTimeout` (the message may still be handled later: like an OTP call, a timeout
        does not say whether it happened) or :class:`ActorCrashed`. If the caller is cancelled,
        the actor is not affected: it still handles the message and its reply is dropped.
        """
        if not timeout > 0:
            raise ValueError(f"timeout must be > 0 seconds, got {timeout!r}")
        reply = _Reply()
        with trio.move_on_after(timeout):
            await self._send.send(_Envelope(message, reply))
            await reply.done.wait()
        if not reply.done.is_set():
            raise CallTimeout(self.name, timeout)
        if reply.error is not None:
            cause = reply.error.__cause__ if isinstance(reply.error, ActorCrashed) else None
            raise reply.error from cause
        return reply.value

    def statistics(self) -> MailboxStatistics:
        """A snapshot of the mailbox and the loop's counters."""
        stats = self._send.statistics()
        return MailboxStatistics(
            name=self.name,
            depth=stats.current_buffer_used,
            capacity=self.mailbox_size,
            senders_waiting=stats.tasks_waiting_send,
            handled=self._handled,
            ticks=self._ticks,
            crashes=self._crashes,
            running=self._ctx is not None,
            handling=self._handling,
            last_heartbeat=self._last_heartbeat,
            next_tick=self._next_tick,
        )

    # -- for subclasses ----------------------------------------------------------------------

    def heartbeat(self) -> None:
        """Record progress; call it between batches of a long tick so it is not judged stalled."""
        self._last_heartbeat = trio.current_time()
        if self._ctx is not None:
            self._ctx.heartbeat()

    # -- time ---------------------------------------------------------------------------------

    def follow_clock(self, clock: Clock, tick_floor: float) -> None:
        """Read ``period`` and ``first_tick`` as business seconds of ``clock``.

        The trio period becomes :func:`atlas.clock.tick_period` (the period divided by the
        clock's speed, at least ``tick_floor`` trio seconds, never longer than before); the
        first-tick delay shrinks in the same ratio, so the jitter keeps its share of a period.
        At speed 1 nothing changes. Call it before the actor first runs.
        """
        if self.period is None:
            return
        self._tick_scale = tick_period(self.period, speed=clock.speed, floor=tick_floor) / self.period

    @property
    def tick_period(self) -> float | None:
        """Trio seconds between ticks (``period`` after :meth:`follow_clock`), None without ticks."""
        return None if self.period is None else self.period * self._tick_scale

    # -- supervision -------------------------------------------------------------------------

    def child_spec(
        self,
        restart: RestartType = RestartType.PERMANENT,
        shutdown_timeout: float = 5.0,
        stall_after: float | None = None,
    ) -> ChildSpec:
        """The :class:`ChildSpec` that runs this actor's loop under a supervisor."""
        return ChildSpec(
            name=self.name,
            start=self.run,
            restart=restart,
            shutdown_timeout=shutdown_timeout,
            stall_after=stall_after,
        )

    async def run(
        self, ctx: ChildContext, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """The actor's loop (the child's start function): runs until cancelled or a crash.

        It says it is up at once; the first tick (if any) is scheduled on the first run only,
        so a restart neither ticks at once nor postpones a tick that was already due.
        """
        self._ctx = ctx
        ctx.set_mailbox_probe(self._depth)
        if self.period is not None and self._next_tick is None:
            low, high = self.first_tick
            delay = self._rng.uniform(low, high) * self._tick_scale
            self._next_tick = trio.current_time() + delay
        self.heartbeat()
        task_status.started()
        try:
            while True:
                await self._step(ctx)
        except trio.Cancelled:
            raise
        except BaseException:
            self._crashes += 1
            raise
        finally:
            if self._ctx is ctx:
                self._ctx = None
            self._handling = None

    # -- the loop ----------------------------------------------------------------------------

    def _depth(self) -> int:
        return self._send.statistics().current_buffer_used

    async def _step(self, ctx: ChildContext) -> None:
        if self._next_tick is not None and trio.current_time() >= self._next_tick:
            await self._tick(ctx)
            return
        deadline = self._next_tick if self._next_tick is not None else math.inf
        envelope: _Envelope | None = None
        with trio.move_on_at(deadline):
            envelope = await self._receive.receive()
        if envelope is not None:
            await self._handle(ctx, envelope)

    @contextmanager
    def _busy(self, ctx: ChildContext, what: str) -> Iterator[None]:
        self.heartbeat()
        self._handling = what
        try:
            with ctx.busy(what):
                yield
        finally:
            self._handling = None
            self.heartbeat()

    async def _tick(self, ctx: ChildContext) -> None:
        due = self._next_tick
        assert due is not None and self.period is not None
        try:
            with self._busy(ctx, "tick"):
                await self.tick()
        except BaseException as exc:
            outage = self._outage(exc)
            if outage is None:
                self._schedule_after(due)  # a crashing tick is not retried at once by the next one
                raise
            # Retried after a backoff instead of at the next period: the tick's work is still due.
            self._next_tick = trio.current_time() + self._start_waiting(ctx, outage)
            return
        self._ticks += 1
        self._schedule_after(due)
        self._stop_waiting(ctx)

    def _schedule_after(self, due: float) -> None:
        # Keep the phase; skip (do not queue) ticks missed while this one ran.
        period = self.tick_period
        assert period is not None
        missed = math.floor((trio.current_time() - due) / period)
        self._next_tick = due + period * (max(0, missed) + 1)

    def _outage(self, error: BaseException) -> Exception | None:
        """The :attr:`waits_out` error behind ``error`` (alone, or every leaf of a group), or None."""
        if isinstance(error, self.waits_out):
            return error
        if isinstance(error, BaseExceptionGroup):
            matched, rest = error.split(self.waits_out)
            if matched is not None and rest is None:
                leaf: BaseException = matched
                while isinstance(leaf, BaseExceptionGroup):
                    leaf = leaf.exceptions[0]
                return leaf if isinstance(leaf, Exception) else None
        return None

    def _start_waiting(self, ctx: ChildContext, error: Exception) -> float:
        """Mark the actor waiting for the dependency behind ``error``; return the delay to wait."""
        self._failed_attempts += 1
        delay = self.wait_backoff.delay(self._failed_attempts, self._rng)
        database = isinstance(error, (DatabaseUnavailable, BudgetExhausted))
        what = "database" if database else type(error).__name__
        log = logger.warning if ctx.waiting_for is None else logger.info
        log("%s waits for the %s (%s); next attempt in %.2fs", ctx.path, what, error, delay)
        ctx.mark_waiting(what)
        return delay

    def _stop_waiting(self, ctx: ChildContext) -> None:
        if ctx.waiting_for is not None:
            logger.warning("%s: the %s is back", ctx.path, ctx.waiting_for)
            ctx.mark_waiting(None)
        self._failed_attempts = 0

    async def _handle(self, ctx: ChildContext, envelope: _Envelope) -> None:
        what = describe(envelope.message)
        try:
            with self._busy(ctx, what):
                result = await self.handle(envelope.message)
        except BaseException as exc:
            outage = self._outage(exc)
            if outage is not None:
                if envelope.reply is not None:
                    envelope.reply.fail(outage)
                else:
                    logger.warning("%s dropped %s: %s", ctx.path, what, outage)
                # The next message would meet the same outage: the mailbox waits too.
                await trio.sleep(self._start_waiting(ctx, outage))
                return
            if envelope.reply is not None:
                cause = None if isinstance(exc, trio.Cancelled) else exc
                crashed = ActorCrashed(self.name, what, cause)
                crashed.__cause__ = cause
                envelope.reply.fail(crashed)
            raise
        self._handled += 1
        self._stop_waiting(ctx)
        if envelope.reply is not None:
            envelope.reply.succeed(result)


def _check_args(name: object, mailbox_size: object, period: object, first_tick: object, rng: object) -> None:
    if not isinstance(name, str) or not name or "/" in name:
        raise InvalidActorSpec("name", name, "must be a non-empty str without '/'")
    if isinstance(mailbox_size, bool) or not isinstance(mailbox_size, int) or mailbox_size < 1:
        raise InvalidActorSpec("mailbox_size", mailbox_size, "must be an int >= 1")
    if period is not None:
        value = _finite(period)
        if value is None or value <= 0:
            raise InvalidActorSpec("period", period, "must be None or a finite number > 0")
    bounds = [_finite(v) for v in first_tick] if isinstance(first_tick, tuple) else []
    low, high = (bounds[0], bounds[1]) if len(bounds) == 2 else (None, None)
    if low is None or high is None or not 0 <= low <= high:
        raise InvalidActorSpec("first_tick", first_tick, "must be (min, max) with 0 <= min <= max, finite")
    if rng is not None and not isinstance(rng, random.Random):
        raise InvalidActorSpec("rng", rng, "must be a random.Random")


def _finite(value: object) -> float | None:
    """``value`` as a float if it is a finite real number (bools excluded), else None."""
    if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    return None
