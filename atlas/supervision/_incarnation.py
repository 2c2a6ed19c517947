"""One incarnation of a child: run it where the supervisor does not have to wait for it.

Why not a nursery: a trio nursery always waits for its tasks, so a child that shields itself from
cancellation would hang its supervisor (and the whole tree) forever. OTP kills such a child with
``exit(Pid, kill)``; trio cannot kill a task. So each child runs in a *system task*
(``trio.lowlevel.spawn_system_task``) whose outcome is captured here, and the supervisor waits on
events it can stop waiting on: after ``shutdown_timeout`` an unresponsive child is abandoned (left
running, reported) and the supervisor carries on.

Alternatives turned down: a nursery owned by the root (the root still hangs on exit, and every
supervisor's stop would block on the slowest child); threads (children are trio code).

Consequences handled here:

- system tasks do not inherit context variables, so each incarnation runs in a *copy of the
  supervisor's context* taken when it starts (the trio-asyncio loop that hosts asyncpg is found
  through a context variable);
- a system task must never raise, so every outcome is captured (``trio.Cancelled`` coming from
  outside, i.e. trio.run shutting down, is the one exception that is let through: trio accepts it);
- an abandoned child still blocks the end of ``trio.run`` until it returns; in production the
  process exits through ``run_root``'s exit code, and the report says what was left behind.
"""

from __future__ import annotations

import contextvars
from collections.abc import Callable

import trio

from atlas.supervision._context import ChildContext
from atlas.supervision._spec import ChildSpec


class _StartHandshake:
    """The ``task_status`` passed to a child: ``started()`` marks the incarnation as up."""

    def __init__(self, incarnation: Incarnation) -> None:
        self._incarnation = incarnation

    def started(self, value: object = None) -> None:
        """Say the child is up; the supervisor goes on to start the next child."""
        inc = self._incarnation
        if inc.up:
            raise RuntimeError(f"{inc.ctx.path} called task_status.started() twice")
        inc.up = True
        inc.settled.set()


class Incarnation:
    """One start of a child, running in its own system task.

    Life: ``spawn()`` → the child calls ``started()`` (``up``, ``settled`` set) → it returns or
    raises (``finished`` set, ``error`` holds the exception, None for a normal return). When the
    supervisor stops it, ``stop_reason`` is set first, so its end is not mistaken for a crash.
    ``settled`` is set by whichever of "started" and "finished" comes first.
    """

    def __init__(self, spec: ChildSpec, path: str, on_finished: Callable[[], None]) -> None:
        self.spec = spec
        self.ctx = ChildContext(path)
        self.scope = trio.CancelScope()
        self.settled = trio.Event()
        self.finished = trio.Event()
        self.up = False
        self.error: BaseException | None = None
        self.stop_reason: str | None = None
        self.abandoned = False
        self.task: trio.lowlevel.Task | None = None
        self._on_finished = on_finished

    @property
    def path(self) -> str:
        """The child's path (``root/workers/renewal``)."""
        return self.ctx.path

    def spawn(self) -> None:
        """Start the child in a system task running in a copy of the caller's context."""
        trio.lowlevel.spawn_system_task(
            self._host, name=f"atlas:{self.ctx.path}", context=contextvars.copy_context()
        )

    async def _host(self) -> None:
        self.task = trio.lowlevel.current_task()
        try:
            with self.scope:
                await self.spec.start(self.ctx, task_status=_StartHandshake(self))
        except trio.Cancelled:
            # Our own scope absorbs the supervisor's cancellation, so a Cancelled that gets here
            # comes from outside (trio.run is ending and cancels system tasks): let it through.
            raise
        except BaseException as exc:  # noqa: BLE001 - captured: the supervisor reports and decides
            self.error = exc
        finally:
            self.finished.set()
            self.settled.set()
            self._on_finished()

    def cancel(self, reason: str) -> None:
        """Ask the child to stop (idempotent); ``reason`` shows up on the ``Cancelled`` it sees."""
        if self.stop_reason is None:
            self.stop_reason = reason
        self.scope.cancel(reason=reason)

    @property
    def uptime(self) -> float:
        """Seconds since this incarnation was started."""
        return trio.current_time() - self.ctx.started_at
