"""Finding the blocking call: a trio Instrument that times every scheduler step.

Trio runs one task step at a time; a step that takes long means that task did blocking work
(a synchronous DB driver call, a big JSON parse, ``time.sleep``) without yielding, and every other
task waited for it. Logging the slow step with the task's name points at the culprit, which is
what the predecessor's "event-loop lag monitor" could only hint at.
"""

from __future__ import annotations

import logging
import time

import trio


class SlowStepInstrument(trio.abc.Instrument):
    """Counts and logs task steps longer than ``threshold`` seconds (real time, ``perf_counter``).

    Attributes (read them for metrics): ``count`` slow steps so far, ``longest`` the longest step
    seen (seconds, slow or not), ``longest_task`` the name of the task that took it.
    Install with ``trio.lowlevel.add_instrument(instrument)`` or ``trio.run(..., instruments=[...])``.
    The hooks run inside the scheduler, so they only do arithmetic and, for a slow step, one log call.
    """

    def __init__(self, threshold: float, log: logging.Logger) -> None:
        if not threshold > 0:
            raise ValueError(f"threshold must be > 0 seconds, got {threshold!r}")
        self.threshold = threshold
        self.log = log
        self.count = 0
        self.longest = 0.0
        self.longest_task: str | None = None
        # Trio runs one step at a time on one thread, so one start time is enough. None when the
        # instrument was installed in the middle of a step (that step is not measured).
        self._step_started: float | None = None

    def before_task_step(self, task: trio.lowlevel.Task) -> None:
        """Note when the step starts."""
        self._step_started = time.perf_counter()

    def after_task_step(self, task: trio.lowlevel.Task) -> None:
        """Measure the step; log and count it when it exceeded the threshold."""
        if self._step_started is None:
            return
        elapsed = time.perf_counter() - self._step_started
        self._step_started = None
        if elapsed > self.longest:
            self.longest = elapsed
            self.longest_task = task.name
        if elapsed > self.threshold:
            self.count += 1
            self.log.warning(
                "slow scheduler step: task %s ran %.3fs without yielding (threshold %.3fs)",
                task.name,
                elapsed,
                self.threshold,
            )
