"""The root of the tree: turning "the root supervisor gave up" into a process exit code.

DESIGN.md: the root giving up ends the process with a non-zero code after a final report, so that
systemd (or the operator) restarts it. The CLI calls ``sys.exit(main())``, and ``main`` returns what
``trio.run`` returned: the code from ``run_root``, once every task of the tree has ended.

The one exception is a task that would not stop when cancelled (see ``_supervisor.py``): the root
escalates, its final ``gave_up`` report goes out, and then ``trio.run`` cannot return, because a
task is still running. Only then does ``run_root`` call ``hard_exit(1)`` (``os._exit`` in
production, after the CLI flushes the logs). The scheduler watchdog thread stays the way out when
the scheduler itself is stuck (a step that never yields), which no trio code can see.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable

import trio

from atlas.supervision._errors import ChildStartFailed, SupervisorGaveUp, SupervisorStuck
from atlas.supervision._supervisor import Supervisor
from atlas.supervision._watchdog import format_task_tree

logger = logging.getLogger(__name__)

EXIT_OK = 0
EXIT_GAVE_UP = 1


class _Relay:
    """Passes the root's ``started()`` on to run_root's caller and remembers that it did."""

    def __init__(self, outer: trio.TaskStatus[None]) -> None:
        self._outer = outer
        self.up = False

    def started(self, value: object = None) -> None:
        if not self.up:
            self.up = True
            self._outer.started()


async def run_root(
    supervisor: Supervisor,
    *,
    stop: trio.Event | None = None,
    hard_exit: Callable[[int], object] = os._exit,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> int:
    """Run ``supervisor`` as the root; return the process exit code.

    - ``EXIT_GAVE_UP`` (1) when it gives up (its final ``gave_up`` report, whose decision reads
      ``"exit with code 1"``, is out before this returns) or when its children fail to start (the
      ``start_error`` report is out).
    - ``EXIT_OK`` (0) when ``stop`` is set (the CLI's signal handler sets it): the tree is stopped
      in reverse order first.
    - When the tree has not stopped within the sum of the root children's shutdown timeouts plus
      5 s after ``stop`` (only a child ignoring cancellation while starting can cause that), the
      task tree is logged and ``hard_exit(EXIT_GAVE_UP)`` is called.
    - When a task would not stop, the root escalates (:class:`SupervisorStuck`, final report out)
      and ``hard_exit(EXIT_GAVE_UP)`` is called at once, since this function could return only
      after that task ends. Tests pass a ``hard_exit`` that records the call; then this returns 1
      once the task does end.

    The root supervisor runs in a task named after it (``root``), the parent of the whole tree.
    ``task_status.started()`` is called once every child is up, or, when the tree never came up,
    just before returning, so that ``nursery.start(run_root, ...)`` always ends in an exit code
    rather than a RuntimeError. Cancelling ``run_root`` itself stops the tree and propagates
    ``Cancelled`` as usual.
    """
    code = EXIT_OK
    decision = f"exit with code {EXIT_GAVE_UP}"
    relay = _Relay(task_status)
    ended = trio.Event()
    # How long a requested stop may take: every child's shutdown timeout in turn, plus slack
    # (as Supervisor.as_child gives a nested supervisor).
    stop_bound = math.fsum(c.shutdown_timeout for c in supervisor.children) + 5.0

    def _stuck(error: SupervisorStuck) -> None:
        nonlocal code
        code = EXIT_GAVE_UP
        logger.critical(
            "%s; trio.run cannot end while that task runs: exiting now with code %d", error, EXIT_GAVE_UP
        )
        hard_exit(EXIT_GAVE_UP)

    async def _supervise(nursery: trio.Nursery) -> None:
        nonlocal code
        try:
            await supervisor._run(supervisor.name, relay, gave_up_decision=decision, on_stuck=_stuck)
        except SupervisorGaveUp as exc:
            logger.critical("root supervisor gave up: %s; exiting with code %d", exc, EXIT_GAVE_UP)
            code = EXIT_GAVE_UP
        except ChildStartFailed as exc:
            logger.critical("root supervisor could not start: %s; exiting with code %d", exc, EXIT_GAVE_UP)
            code = EXIT_GAVE_UP
        finally:
            ended.set()
            nursery.cancel_scope.cancel(reason="root supervisor ended")

    async def _wait_for_stop(event: trio.Event, nursery: trio.Nursery) -> None:
        nonlocal code
        await event.wait()
        logger.info("stop requested; stopping the tree")
        nursery.cancel_scope.cancel(reason="stop requested")
        # The supervisors bound every stop they make; this bounds the one case they cannot: a
        # child that ignores cancellation while it is starting holds the root in nursery.start().
        with trio.CancelScope(shield=True), trio.move_on_after(stop_bound):
            await ended.wait()
        if not ended.is_set():
            code = EXIT_GAVE_UP
            logger.critical(
                "the tree did not stop within %gs of the stop request; exiting now with code %d\n%s",
                stop_bound,
                EXIT_GAVE_UP,
                format_task_tree(),
            )
            hard_exit(EXIT_GAVE_UP)

    async with trio.open_nursery() as nursery:
        if stop is not None:
            nursery.start_soon(_wait_for_stop, stop, nursery, name=f"{supervisor.name}: stop request")
        nursery.start_soon(_supervise, nursery, name=supervisor.name)
    relay.started()
    return code
