"""The last resort: a thread outside trio that notices when the scheduler itself stops.

Everything else in supervision runs *inside* trio, so it is helpless when trio stops running
tasks: a CPU loop or a blocking call in some task step freezes every supervisor, watchdog policy and
health check at once (the predecessor froze this way every ~600 s). Only a thread can see that.

:class:`SchedulerWatchdog` has two halves. A trio task refreshes a timestamp every ``timeout / 4``
(and, while it is at it, snapshots the task tree). A daemon thread checks that timestamp; when it
has not moved for ``timeout`` seconds it writes every thread's stack (``faulthandler``, which shows
the blocking function on the trio thread) and the last known task tree to ``dump_to``, then calls
``os._exit(exit_code)`` so that systemd (or the operator) starts a fresh process. ``os._exit``
because nothing cooperative can be trusted any more: the trio thread is the one that is stuck.

This is the one place in Atlas where a thread waits: it must run when trio cannot.
"""

from __future__ import annotations

import faulthandler
import io
import os
import sys
import threading
import time
import traceback
from collections.abc import Callable
from typing import TextIO

import trio

_TRIO_DIR = os.path.dirname(trio.__file__)


def _where(task: trio.lowlevel.Task) -> str:
    """The innermost frame of ``task`` outside trio itself: the code that is waiting."""
    frames = list(task.iter_await_frames())
    outside = [(f, line) for f, line in frames if not f.f_code.co_filename.startswith(_TRIO_DIR)]
    if not (outside or frames):
        return ""
    frame, line = (outside or frames)[-1]
    return f" at {frame.f_code.co_filename}:{line} in {frame.f_code.co_name}"


def format_task_tree(root: trio.lowlevel.Task | None = None, *, max_tasks: int = 500) -> str:
    """A text outline of trio's task tree: each task's name and where it waits (innermost own frame).

    Bounded to ``max_tasks`` tasks so that a runaway spawner cannot make the snapshot huge.
    Must be called from the trio thread.
    """
    if root is None:
        root = trio.lowlevel.current_root_task()
    if root is None:
        return "(no trio run)"
    lines: list[str] = []
    stack: list[tuple[trio.lowlevel.Task, int]] = [(root, 0)]
    while stack and len(lines) < max_tasks:
        task, depth = stack.pop()
        lines.append(f"{'  ' * depth}{task.name}{_where(task)}")
        children = [child for nursery in task.child_nurseries for child in nursery.child_tasks]
        stack.extend((child, depth + 1) for child in reversed(children))
    if stack:
        lines.append(f"... ({len(stack)} more tasks not shown)")
    return "\n".join(lines)


class SchedulerWatchdog:
    """Exit the process when the trio scheduler has not run for ``timeout`` seconds.

    Run :meth:`run` as a task (the root starts it first); cancelling it stops the thread. ``exit``
    is injectable so that tests can observe a firing without dying; in production it is
    ``os._exit``. After firing once the thread stops, whatever ``exit`` did. ``dump_to`` defaults to
    whatever ``sys.stderr`` is at the moment of the dump; a stream with a file descriptor gets
    faulthandler's dump (which works even when Python-level formatting would not).
    """

    def __init__(
        self,
        timeout: float,
        dump_to: TextIO | None = None,
        exit_code: int = 70,
        *,
        exit: Callable[[int], object] = os._exit,
    ) -> None:
        if not timeout > 0:
            raise ValueError(f"timeout must be > 0 seconds, got {timeout!r}")
        self.timeout = timeout
        self.dump_to = dump_to
        self.exit_code = exit_code
        self._exit = exit
        self._last_beat = time.monotonic()
        self._last_tree = "(no snapshot yet)"
        self._stop = threading.Event()
        self.fired = False

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Start the thread and keep the timestamp fresh until cancelled (then stop the thread).

        Reports started (for ``nursery.start``) once the thread runs and the first beat is in.
        """
        self._last_beat = time.monotonic()
        self._stop.clear()
        thread = threading.Thread(target=self._watch, name="atlas-scheduler-watchdog", daemon=True)
        thread.start()
        try:
            self._beat()
            task_status.started()
            while True:
                await trio.sleep(self.timeout / 4)
                self._beat()
        finally:
            self._stop.set()

    def _beat(self) -> None:
        self._last_tree = format_task_tree()
        self._last_beat = time.monotonic()

    def _watch(self) -> None:
        # Wake four times per timeout so a freeze is noticed within 1.25 x timeout.
        while not self._stop.wait(self.timeout / 4):
            silent = time.monotonic() - self._last_beat
            if silent > self.timeout:
                self.fired = True
                self._dump(silent)
                self._exit(self.exit_code)
                return

    def _dump(self, silent: float) -> None:
        out = self.dump_to if self.dump_to is not None else sys.stderr
        out.write(
            f"\n=== atlas scheduler watchdog: trio has not run for {silent:.2f}s "
            f"(timeout {self.timeout:g}s); exiting with code {self.exit_code} ===\n"
            "--- all threads ---\n"
        )
        out.flush()
        try:
            fileno = out.fileno()
        except (AttributeError, OSError, io.UnsupportedOperation):
            fileno = -1
        if fileno >= 0:
            faulthandler.dump_traceback(file=fileno, all_threads=True)
        else:
            # No file descriptor (e.g. a StringIO): format the stacks in Python instead.
            for ident, frame in sys._current_frames().items():
                out.write(f"Thread {ident:#x}:\n{''.join(traceback.format_stack(frame))}")
        out.write(f"--- last known trio task tree ---\n{self._last_tree}\n")
        out.flush()
