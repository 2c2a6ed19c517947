"""``StorageLoop``: a stdlib asyncio event loop in a thread of its own, where asyncpg runs.

Why a thread and not the process's trio-asyncio loop: asyncpg is asyncio-only, and on
trio-asyncio's loop every one of its callbacks pays for trio-asyncio's scheduling (a loop
iteration is a channel receive in a cancel scope). Measured side by side (docs/benchmarks.md), a
one-statement unit cost 1,193 µs there against 334 µs on a stdlib loop, and 77 % of a busy bot's CPU
was spent in trio-asyncio's main loop. Here asyncpg runs on its own
uvloop loop (:data:`LOOP_FACTORY`), and a unit of work costs trio *one* handoff each way.

The handoff (:meth:`StorageLoop.call`):

* trio → loop: ``call_soon_threadsafe`` starts an asyncio task for the coroutine. The handle copies
  the caller's context, so context variables set in the trio task are visible in the unit (the
  unit's own ``holding_connection`` mark stays in the unit's task).
* loop → trio: the task's done-callback reschedules the waiting trio task through its
  ``TrioToken`` (``run_sync_soon``), carrying the outcome.
* Cancellation: cancelling the trio caller cancels the asyncio task and then *waits for it to
  finish* — asyncpg rolls the transaction back, or the pool terminates the connection — before the
  caller sees ``Cancelled``. So a budget token is never returned while its connection is still in
  use: the property ``db.run`` needs, which trio-asyncio's future adapter gave before.

The thread is not a way of waiting (the brief forbids threads for waiting): it runs an event loop
for the whole life of the pool, started and stopped by :class:`~atlas.storage.Database`. Nothing
but asyncpg code runs on it; trio code never runs there, and asyncpg code never runs in trio's
thread.

Errors::

    StorageLoopError
    └── StorageLoopClosed    you: a call after close(), or before start() finished
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import outcome
import trio
import uvloop

T = TypeVar("T")

_log = logging.getLogger("atlas.storage.loop")

LOOP_FACTORY: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
"""How the storage thread builds its loop: uvloop, which asyncpg is written for (measured: a
3-statement unit 0.95× the latency of plain asyncpg on a stdlib ``SelectorEventLoop``, against 1.3×
with a ``SelectorEventLoop`` here too; docs/benchmarks.md). Explicit on purpose: once
``trio_asyncio`` is imported, ``asyncio.new_event_loop()`` builds trio-asyncio's loop, which is what
this module exists to avoid. Tests may swap it for ``asyncio.SelectorEventLoop``."""


class StorageLoopError(RuntimeError):
    """Base of the storage loop's own errors."""


class StorageLoopClosed(StorageLoopError):
    """The loop is not running: :meth:`StorageLoop.call` after :meth:`StorageLoop.close`."""


class StorageLoop:
    """A dedicated asyncio loop thread, and the one way for trio code to run a coroutine on it."""

    def __init__(self, name: str = "atlas-storage") -> None:
        self.name = name
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._token: trio.lowlevel.TrioToken | None = None
        self._closing = False
        self._stopped = trio.Event()
        self.calls = 0

    @classmethod
    async def start(cls, name: str = "atlas-storage") -> StorageLoop:
        """Start the thread and return once its loop runs (the caller's trio run owns it)."""
        self = cls(name)
        self._token = trio.lowlevel.current_trio_token()
        running = trio.Event()
        stopped = self._stopped
        token = self._token

        def thread_main() -> None:
            loop = LOOP_FACTORY()
            self._loop = loop
            loop.call_soon(token.run_sync_soon, running.set)
            try:
                loop.run_forever()
            finally:
                try:
                    _cancel_leftovers(loop)
                finally:
                    loop.close()
                    # If trio ended first, nobody waits for this thread any more.
                    with contextlib.suppress(trio.RunFinishedError):
                        token.run_sync_soon(stopped.set)

        self._thread = threading.Thread(target=thread_main, name=name, daemon=True)
        self._thread.start()
        await running.wait()
        return self

    @property
    def running(self) -> bool:
        """True between :meth:`start` and :meth:`close`."""
        return self._loop is not None and not self._closing and not self._loop.is_closed()

    async def call(self, fn: Callable[..., Awaitable[T]], /, *args: Any) -> T:
        """Run ``fn(*args)`` as an asyncio task on the storage loop and return its result.

        Exceptions raised by ``fn`` are re-raised here unchanged. Cancelling the caller cancels the
        task and waits for it to end before raising ``trio.Cancelled`` (see the module docstring); if
        the task finished anyway (it was past its last await), its result is returned and the
        cancellation is delivered at the caller's next checkpoint.
        """
        loop = self._loop
        token = self._token
        if loop is None or token is None or self._closing:
            raise StorageLoopClosed(f"the storage loop {self.name!r} is not running")
        waiter = trio.lowlevel.current_task()
        started: list[asyncio.Task[T]] = []
        cancel_requested = False

        def finished(task: asyncio.Future[T]) -> None:
            if task.cancelled():
                result: outcome.Outcome[T] = outcome.Error(asyncio.CancelledError())
            else:
                result = outcome.capture(task.result)
            # wait_task_rescheduled unwraps what it is sent: send the outcome itself, as a value.
            token.run_sync_soon(trio.lowlevel.reschedule, waiter, outcome.Value(result))

        def begin() -> None:
            task: asyncio.Task[T] = loop.create_task(fn(*args))  # type: ignore[arg-type]
            task.add_done_callback(finished)
            started.append(task)
            if cancel_requested:
                task.cancel()

        def cancel() -> None:
            if started:
                started[0].cancel()

        def abort(_: Any) -> trio.lowlevel.Abort:
            nonlocal cancel_requested
            cancel_requested = True
            loop.call_soon_threadsafe(cancel)
            # Not aborted yet: ``finished`` reschedules us once the task has really ended.
            return trio.lowlevel.Abort.FAILED

        self.calls += 1
        loop.call_soon_threadsafe(begin)
        result: outcome.Outcome[T] = await trio.lowlevel.wait_task_rescheduled(abort)
        if (
            cancel_requested
            and isinstance(result, outcome.Error)
            and isinstance(result.error, asyncio.CancelledError)
        ):
            await trio.lowlevel.checkpoint()  # raises the trio.Cancelled that caused the abort
        return result.unwrap()

    def call_soon(self, fn: Callable[..., object], /, *args: Any) -> None:
        """Schedule a plain function on the storage loop (fire and forget; e.g. ``pool.terminate``)."""
        loop = self._loop
        if loop is None or loop.is_closed():
            raise StorageLoopClosed(f"the storage loop {self.name!r} is not running")
        loop.call_soon_threadsafe(fn, *args)

    async def close(self) -> None:
        """Stop the loop (tasks still on it are cancelled) and wait for the thread to end."""
        loop, thread = self._loop, self._thread
        if loop is None or thread is None or self._closing:
            return
        self._closing = True
        if not loop.is_closed():
            loop.call_soon_threadsafe(loop.stop)
        await self._stopped.wait()
        # The thread's last act was to set ``_stopped``; joining it now waits for nothing but its exit.
        thread.join(timeout=1.0)


def _cancel_leftovers(loop: asyncio.AbstractEventLoop) -> None:
    """Cancel whatever tasks are still on the loop and let them unwind (run in the loop thread)."""
    pending = [task for task in asyncio.all_tasks(loop) if not task.done()]
    if not pending:
        return
    _log.warning("storage loop stopping with %d task(s) still running; cancelling them", len(pending))
    for task in pending:
        task.cancel()
    loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
