"""One incarnation of a child: a task in its supervisor's nursery, inside its own cancel scope.

The supervisor starts it with ``nursery.start(incarnation.host, name=path)``, so the child is up
when it says so and runs, until then, under the supervisor's own cancellation (a supervisor that is
stopped while a child starts stops that start too). Once it is up, its scope is shielded: from then
on the child is cancelled only by its supervisor (``cancel``), never by a cancellation sweeping
down the tree, so that the supervisor can stop its children one by one in reverse start order,
each with its own ``shutdown_timeout``. The supervisor always cancels every
child before its nursery closes, so the shield cannot keep a child alive by itself.

The host keeps every outcome for the supervisor to judge (``error``; None for a normal return)
instead of raising it into the nursery, where it would cancel the siblings: deciding who else stops
is the strategy's job. A ``trio.Cancelled`` that is not the child's own (the supervisor was
cancelled while the child was starting) is let through, as trio expects.

Trio cannot kill a task. A child that does not stop within its shutdown timeout stays in the
nursery, cancelled, and the supervisor escalates (see ``_supervisor.py``); it is never started a
second time beside itself. A nested supervisor in that state says so through
``ChildContext.report_stuck``, which lands in :attr:`Incarnation.escalation`.
"""

from __future__ import annotations

from collections.abc import Callable

import trio

from atlas.supervision._context import ChildContext
from atlas.supervision._spec import ChildSpec


class _StartHandshake:
    """The ``task_status`` passed to a child: ``started()`` marks the incarnation as up."""

    def __init__(self, incarnation: Incarnation, outer: trio.TaskStatus[None]) -> None:
        self._incarnation = incarnation
        self._outer = outer
        self._forwarded = False

    def started(self, value: object = None) -> None:
        """Say the child is up; the supervisor goes on to start the next child."""
        inc = self._incarnation
        if inc.up:
            raise RuntimeError(f"{inc.ctx.path} called task_status.started() twice")
        inc.up = True
        # Shielded from the moment it is up: a cancellation sweeping down the tree from here on
        # must not reach it before its supervisor stops it in turn. If the start itself is being
        # cancelled, trio leaves the task where it was (not in the nursery): then no shield, so
        # that the cancellation ends it.
        inc.scope.shield = True
        self.release()
        if trio.lowlevel.current_task().parent_nursery is not inc.nursery:
            inc.scope.shield = False

    def release(self) -> None:
        """Let ``nursery.start`` return (once): the child is up, or it ended without saying so."""
        if not self._forwarded:
            self._forwarded = True
            self._outer.started()


class Incarnation:
    """One start of a child, running as a task in its supervisor's nursery.

    Life: ``host`` starts → the child calls ``started()`` (``up``) → it returns or raises
    (``finished`` set, ``error`` holds the exception, None for a normal return). When the
    supervisor stops it, ``stop_reason`` is set first, so its end is not mistaken for a crash.
    ``gone`` is set when the supervisor can stop waiting for it: it finished, or (a nested
    supervisor) it reported through its context that a task under it will not stop
    (``escalation``).
    """

    def __init__(
        self,
        spec: ChildSpec,
        path: str,
        nursery: trio.Nursery,
        on_change: Callable[[], None],
        on_escalation: Callable[[Incarnation], None],
    ) -> None:
        self.spec = spec
        self.nursery = nursery
        self.ctx = ChildContext(path, on_stuck=self._report_stuck)
        self.scope = trio.CancelScope()
        self.finished = trio.Event()
        self.gone = trio.Event()
        self.up = False
        self.error: BaseException | None = None
        self.escalation: BaseException | None = None
        self.stop_reason: str | None = None
        self.task: trio.lowlevel.Task | None = None
        self._on_change = on_change
        self._on_escalation = on_escalation

    @property
    def path(self) -> str:
        """The child's path (``root/workers/renewal``), also the name of its trio task."""
        return self.ctx.path

    async def host(self, *, task_status: trio.TaskStatus[None]) -> None:
        """The task: run the child in :attr:`scope` and keep its outcome."""
        self.task = trio.lowlevel.current_task()
        handshake = _StartHandshake(self, task_status)
        try:
            with self.scope:
                await self.spec.start(self.ctx, task_status=handshake)
        except BaseException as exc:  # kept: the supervisor reports and decides
            if isinstance(exc, trio.Cancelled) and not self.up:
                raise  # not ours (ours ends at self.scope): the supervisor was cancelled meanwhile
            self.error = exc
        finally:
            self.finished.set()
            self.gone.set()
            handshake.release()  # ended before started(): nursery.start returns, .up says it failed
            self._on_change()

    def cancel(self, reason: str) -> None:
        """Ask the child to stop (idempotent); ``reason`` shows up on the ``Cancelled`` it sees."""
        if self.stop_reason is None:
            self.stop_reason = reason
        self.scope.cancel(reason=reason)

    def _report_stuck(self, error: BaseException) -> None:
        if self.escalation is None:
            self.escalation = error
            self.gone.set()
            self._on_escalation(self)
            self._on_change()

    @property
    def uptime(self) -> float:
        """Seconds since this incarnation was started."""
        return trio.current_time() - self.ctx.started_at
