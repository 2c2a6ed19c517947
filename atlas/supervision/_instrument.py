"""Finding the blocking call: which task held the scheduler, at almost no cost per step.

Trio runs one task step at a time; a step that takes long means that task did blocking work
(a synchronous DB driver call, a big JSON parse, ``time.sleep``) without yielding, and every other
task waited for it. Logging the slow step with the task's name points at the culprit, which is
what the predecessor's "event-loop lag monitor" could only hint at.

Why not time every step. The obvious instrument (``before_task_step`` / ``after_task_step``) makes
trio call two Python hooks on every step; the dispatch alone costs about as much as a short step
(measured: 2.4 µs per step bare, 3.4 µs with two empty step hooks, 3.8 µs with the timing ones),
and it cost the bot about a quarter of its throughput. So the work is split:

- in the scheduler, one hook, ``before_io_wait``, once per *batch* of steps (trio runs every
  runnable task once between two looks at I/O): a counter and a ``perf_counter`` stamp;
- a sampler thread wakes every ``threshold / 4``; while a batch is running it looks at the trio
  thread's stack (``sys._current_frames``), takes the frame that trio's run loop is stepping (the
  task's coroutine), and when the same frame is still running in the same batch ``threshold``
  later, that one step has been running that long: it is caught;
- when the batch ends, the trio thread names the caught task (its coroutine frame identifies it)
  and logs it. Nothing is allocated or logged on ordinary steps.

A step is caught once it has run ``threshold`` plus up to one sampling interval; the time reported
is what the sampler saw (a lower bound, within one interval of the truth).
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
from types import FrameType

import trio

_TRIO_DIR = os.path.dirname(trio.__file__)

# No batch ended for this long: trio is idle, or the instrument was removed (the hook no longer
# runs). The sampler thread ends, and the next end of a batch starts a new one. A real step this
# long is still reported (with the time seen so far); past a minute it is the scheduler watchdog's.
_ABANDON_AFTER = 10.0
_MAX_CAUGHT = 100  # catches waiting for the end of one batch (bounded even if the hook stopped)


class _Catch:
    """One slow step the sampler caught: the stepped frame and how long it was seen running."""

    __slots__ = ("frame", "ran")

    def __init__(self, frame: FrameType, ran: float) -> None:
        self.frame = frame
        self.ran = ran


def _stepped_frame(frame: FrameType | None) -> FrameType | None:
    """The coroutine frame that trio's run loop is stepping on this stack, or None between steps."""
    while frame is not None:
        caller = frame.f_back
        code = caller.f_code if caller is not None else None
        if code is not None and code.co_name == "unrolled_run" and code.co_filename.startswith(_TRIO_DIR):
            return frame
        frame = caller
    return None


class SlowStepInstrument(trio.abc.Instrument):
    """Counts and logs task steps longer than ``threshold`` seconds (real time), naming the task.

    Attributes (read them for metrics): ``count`` slow steps so far; ``longest`` the longest batch
    of steps seen (seconds, slow or not: the longest the scheduler went without looking at I/O,
    which bounds every step in it); ``longest_task`` the task caught in that batch (None when no
    single step in it was slow).

    Install with ``trio.lowlevel.add_instrument(instrument)`` or ``trio.run(..., instruments=[...])``;
    the sampler thread starts with the first batch and ends with ``trio.run`` (or :meth:`close`).
    A batch that follows a real wait for I/O is timed from the sampler's first sight of a running
    step (a lower bound, within one sampling interval); one that follows a poll is timed exactly.
    """

    def __init__(self, threshold: float, log: logging.Logger) -> None:
        if not threshold > 0:
            raise ValueError(f"threshold must be > 0 seconds, got {threshold!r}")
        self.threshold = threshold
        self.log = log
        self.count = 0
        self.longest = 0.0
        self.longest_task: str | None = None
        self._interval = threshold / 4
        # Written by the trio thread (the hook), read by the sampler: plain attribute stores.
        self._batch = 0  # batches ended so far: the current one's number
        self._batch_started: float | None = None  # None when it began after a real wait for I/O
        self._trio_thread: int | None = None
        # Written by the sampler: (batch, when it first saw a step running in it).
        self._running_since: tuple[int, float] | None = None
        # Appended by the sampler, drained by the trio thread at the end of the batch.
        self._caught: list[_Catch] = []
        self._sampler: threading.Thread | None = None
        self._closed = threading.Event()

    # -- the hook (trio thread, once per batch) -----------------------------------------------

    def before_io_wait(self, timeout: float) -> None:
        """A batch of steps just ended: measure it, log what the sampler caught, open the next."""
        # This runs once per batch, which under light load is once per step: keep it to a few
        # attribute reads and writes (no locks, no allocation on the ordinary path).
        now = time.perf_counter()
        started = self._batch_started
        if started is None:
            seen = self._running_since
            if seen is not None and seen[0] == self._batch:
                started = seen[1]  # a lower bound: when the sampler first saw a step running
        if self._caught:
            caught, self._caught = self._caught, []
            self._report(caught, now - started if started is not None else 0.0)
        elif started is not None and now - started > self.longest:
            self.longest = now - started
            self.longest_task = None
        self._batch += 1
        # After a poll (timeout 0: tasks are waiting to run) the next batch starts right away; after
        # a real wait its start is unknown, and the sampler's first sight of a running step stands in.
        self._batch_started = now if timeout == 0 else None
        if self._sampler is None:
            self._start_sampler()

    def after_run(self) -> None:
        """``trio.run`` is ending: stop the sampler."""
        self.close()

    def close(self) -> None:
        """Stop the sampler thread (idempotent); the hooks start a new one if they run again."""
        self._closed.set()
        sampler = self._sampler
        if sampler is not None and sampler is not threading.current_thread():
            sampler.join(timeout=1.0)
        self._sampler = None

    # -- the trio side of a catch ------------------------------------------------------------

    def _report(self, caught: list[_Catch], batch_time: float) -> None:
        names = _task_names({id(catch.frame) for catch in caught})
        for catch in caught:
            frame, ran = catch.frame, catch.ran
            name = names.get(id(frame)) or f"<ended task running {frame.f_code.co_qualname}>"
            self.count += 1
            if batch_time > self.longest:
                self.longest = batch_time
                self.longest_task = name
            self.log.warning(
                "slow scheduler step: task %s ran %.3fs without yielding (threshold %.3fs)",
                name,
                ran,
                self.threshold,
            )

    # -- the sampler thread ------------------------------------------------------------------

    def _start_sampler(self) -> None:
        self._trio_thread = threading.get_ident()
        self._closed.clear()
        self._sampler = threading.Thread(target=self._sample, name="atlas-slow-step-sampler", daemon=True)
        self._sampler.start()

    def _sample(self) -> None:
        seen: tuple[int, FrameType] | None = None  # (batch, frame) running at the last look
        since = 0.0  # when that frame was first seen running in that batch
        catch: _Catch | None = None  # the catch for that step, once it ran past the threshold
        batch_seen, batch_seen_at = -1, time.perf_counter()
        while not self._closed.wait(self._interval):
            batch, now = self._batch, time.perf_counter()
            if batch != batch_seen:
                batch_seen, batch_seen_at = batch, now
            elif now - batch_seen_at > _ABANDON_AFTER:
                # Idle for long, or the instrument was removed: leave; the hook starts a new one.
                self._sampler = None
                return
            thread = self._trio_thread
            frame = _stepped_frame(sys._current_frames().get(thread)) if thread is not None else None
            if frame is None:
                seen = None  # waiting for I/O, or between two steps
                continue
            if self._running_since is None or self._running_since[0] != batch:
                self._running_since = (batch, now)
            if seen != (batch, frame):
                seen, since, catch = (batch, frame), now, None
                continue
            ran = now - since
            if catch is not None:
                catch.ran = ran  # still running: the time grows until the batch ends
            elif ran >= self.threshold and len(self._caught) < _MAX_CAUGHT:
                catch = _Catch(frame, ran)
                self._caught.append(catch)


def _task_names(frames: set[int]) -> dict[int, str]:
    """Names of the live tasks whose coroutine frame is in ``frames`` (by id), from the task tree."""
    root = trio.lowlevel.current_root_task()
    names: dict[int, str] = {}
    stack = [root] if root is not None else []
    while stack:
        task = stack.pop()
        frame = getattr(task.coro, "cr_frame", None)
        if frame is not None and id(frame) in frames:
            names[id(frame)] = task.name
        stack.extend(child for nursery in task.child_nurseries for child in nursery.child_tasks)
    return names
