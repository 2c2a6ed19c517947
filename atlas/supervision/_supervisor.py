"""The Supervisor: starts children in order, restarts them by a table, gives up past a limit.

Shape of one run (:class:`_Supervision`, created afresh by every ``Supervisor.run``)::

    open the nursery (every child incarnation is a task in it, in its own cancel scope)
    start children in order ──(one fails)──▶ stop the started ones (reverse), start_error, raise
          │ all up: task_status.started()
          ▼
    loop: wait for a child to end, a stall check, or a restart to fall due
          ├─ child ended / stalled ─▶ RESTART_TABLE says no ─▶ leave it stopped (report if abnormal)
          │                         └▶ yes ─▶ intensity exceeded? ─▶ stop all, gave_up, raise
          │                                  └▶ report "restart in Ns"; stop the restart set
          │                                     (reverse order); due = now + backoff
          ├─ restarts due ─▶ start them in start order (a failure is retried with backoff)
          └─ a child would not stop (or a nested supervisor says one under it would not) ─▶ escalate
    cancelled ─▶ stop every child in reverse start order (shielded; each bounded by its timeout)
    close the nursery; raise the verdict (gave up, start failed, stuck), if any

Children are started with ``nursery.start`` (a child is up when it calls ``task_status.started()``)
and stopped one at a time by cancelling the child's own scope and waiting at most its
``shutdown_timeout`` (see ``_incarnation.py`` for why a running child is shielded from any other
cancellation). Waiting for a restart's backoff is a deadline of the loop, not a sleep, so the
supervisor keeps noticing other children while a restart is pending (OTP gets the same effect with
its ``try_again_restart`` message to itself).

What Atlas does instead of OTP's brutal kill. OTP ends a child that ignores its shutdown with
``exit(Pid, kill)``; trio cannot kill a task, and leaving it running beside a fresh incarnation
would run the same actor twice. So a child still running after its ``shutdown_timeout``:

1. gets a ``shutdown_error`` report (:class:`ChildWouldNotStop`, with the frames where it waits) and
   the state ``stuck``; it stays in the nursery, cancelled, and is never started again;
2. makes its supervisor escalate: the supervisor stops its other children (reverse order), emits a
   ``gave_up`` report and fails with :class:`SupervisorStuck`, whatever its restart intensity;
3. because the nursery cannot close while that task runs, the failure would reach the parent only
   when the task ends, so the supervisor also tells its parent at once (through the child context,
   ``ChildContext.report_stuck``, or ``on_stuck`` at the root); the parent reports the child's
   failure (``crash``, decision ``escalate``) and escalates the same way, never restarting it;
4. at the root, ``run_root`` ends the process with exit code 1 after the final ``gave_up`` report
   (its ``hard_exit``): trio.run cannot return while a task runs, and nothing else can end it.

If the task does end later (it was only slow), every nursery on the way closes and the
:class:`SupervisorStuck` errors propagate as ordinary exceptions.
"""

from __future__ import annotations

import logging
import math
import random
from collections.abc import Callable, Sequence
from typing import NoReturn

import trio

from atlas.supervision._backoff import Backoff
from atlas.supervision._checks import int_problem, name_problem, number_problem
from atlas.supervision._context import ChildContext
from atlas.supervision._errors import (
    ChildReturned,
    ChildStalled,
    ChildStartFailed,
    ChildWouldNotStop,
    InvalidSupervisorSpec,
    SupervisionError,
    SupervisorGaveUp,
    SupervisorStuck,
)
from atlas.supervision._incarnation import Incarnation
from atlas.supervision._intensity import RestartIntensity
from atlas.supervision._reports import CrashReporter, ReportKind, frames_of_exception, frames_of_task
from atlas.supervision._spec import ChildSpec, RestartType, Strategy, check_child_specs
from atlas.supervision._state import ChildState, ChildStatistics, SupervisorStatistics
from atlas.supervision._strategy import restart_set, should_restart

logger = logging.getLogger(__name__)


class Supervisor:
    """Runs children by a :class:`Strategy`, restarting them with backoff under an intensity cap.

    Everything is validated here, before anything starts (:class:`InvalidChildSpec`,
    :class:`DuplicateChildName`, :class:`InvalidSupervisorSpec`).

    - ``max_restarts`` / ``period``: more than ``max_restarts`` restarts (of any children) within
      ``period`` seconds and the supervisor stops all its children, emits a ``gave_up`` report and
      raises :class:`SupervisorGaveUp`. A child's consecutive-failure count (which drives the
      backoff) resets once it has stayed up longer than ``period``.
    - ``backoff``: the delay before each restart (:class:`Backoff`), jittered from ``rng``.
    - ``stall_check_interval``: how often stalls are judged; default: the smallest child
      ``stall_after`` / 4 (no checks when no child has one).

    The same object can be run again (its parent restarts it through :meth:`as_child`); every run
    starts with a fresh intensity window and fresh children.
    """

    def __init__(
        self,
        name: str,
        strategy: Strategy,
        children: Sequence[ChildSpec],
        *,
        max_restarts: int = 3,
        period: float = 5.0,
        backoff: Backoff | None = None,
        reporter: CrashReporter,
        rng: random.Random | None = None,
        stall_check_interval: float | None = None,
    ) -> None:
        problem = name_problem(name)
        if problem:
            raise InvalidSupervisorSpec("name", name, problem)
        if not isinstance(strategy, Strategy):
            raise InvalidSupervisorSpec("strategy", strategy, "must be a Strategy")
        if not isinstance(children, list | tuple):
            raise InvalidSupervisorSpec("children", children, "must be a list or tuple of ChildSpec")
        check_child_specs(children)
        problem = int_problem(max_restarts)
        if problem:
            raise InvalidSupervisorSpec("max_restarts", max_restarts, problem)
        problem = number_problem(period)
        if problem:
            raise InvalidSupervisorSpec("period", period, problem)
        backoff = Backoff() if backoff is None else backoff
        if not isinstance(backoff, Backoff):
            raise InvalidSupervisorSpec("backoff", backoff, "must be a Backoff")
        if not isinstance(reporter, CrashReporter):
            raise InvalidSupervisorSpec("reporter", reporter, "must be a CrashReporter")
        if rng is not None and not isinstance(rng, random.Random):
            raise InvalidSupervisorSpec("rng", rng, "must be a random.Random")
        if stall_check_interval is not None:
            problem = number_problem(stall_check_interval)
            if problem:
                raise InvalidSupervisorSpec("stall_check_interval", stall_check_interval, problem)
        else:
            stalls = [c.stall_after for c in children if c.stall_after is not None]
            stall_check_interval = min(stalls) / 4 if stalls else None

        self.name = name
        self.strategy = strategy
        self.children: tuple[ChildSpec, ...] = tuple(children)
        self.max_restarts = max_restarts
        self.period = float(period)
        self.backoff = backoff
        self.reporter = reporter
        self.rng = rng if rng is not None else random.Random()
        self.stall_check_interval = stall_check_interval
        self._current: _Supervision | None = None

    def __repr__(self) -> str:
        return f"<Supervisor {self.name!r} {self.strategy.value} children={[c.name for c in self.children]}>"

    async def run(
        self, parent_path: str = "", *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Start the children, report started, supervise until cancelled.

        Startup is all-or-nothing: if a child fails to start, the started ones are stopped in
        reverse order, a ``start_error`` report is emitted and :class:`ChildStartFailed` is raised.
        On cancellation every child is stopped in reverse start order and ``Cancelled`` propagates.
        Raises :class:`SupervisorGaveUp` when restarts exceed the intensity, and
        :class:`SupervisorStuck` when a child would not stop within its ``shutdown_timeout``: that
        one is raised only once the stuck task has ended, because the supervisor's nursery waits
        for it (the reports are out long before; see the module docstring).
        """
        path = f"{parent_path}/{self.name}" if parent_path else self.name
        await self._run(path, task_status, gave_up_decision="escalate to parent")

    async def _run(
        self,
        path: str,
        task_status: trio.TaskStatus[None],
        *,
        gave_up_decision: str,
        on_stuck: Callable[[SupervisorStuck], None] | None = None,
    ) -> None:
        run = _Supervision(self, path, gave_up_decision, on_stuck)
        self._current = run
        async with trio.open_nursery() as nursery:
            verdict = await run.run(nursery, task_status)
        if verdict is not None:
            # Raised here, outside the nursery, so that callers see the error itself rather than an
            # exception group; the nursery has closed, so every child task has ended.
            raise verdict

    def as_child(
        self, restart: RestartType = RestartType.PERMANENT, shutdown_timeout: float | None = None
    ) -> ChildSpec:
        """A :class:`ChildSpec` that runs this supervisor under a parent.

        Its ``SupervisorGaveUp`` (or ``ChildStartFailed``) is just a crash of that child for the
        parent, except :class:`SupervisorStuck`, which it reports to the parent at once through
        its context and which the parent never answers with a restart. ``shutdown_timeout``
        defaults to the sum of the children's timeouts plus 5 s, so the parent waits for an orderly
        stop of the whole subtree but never forever.
        """
        if shutdown_timeout is None:
            shutdown_timeout = math.fsum(c.shutdown_timeout for c in self.children) + 5.0

        async def start(
            ctx: ChildContext, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
        ) -> None:
            await self._run(
                ctx.path, task_status, gave_up_decision="escalate to parent", on_stuck=ctx.report_stuck
            )

        return ChildSpec(name=self.name, start=start, restart=restart, shutdown_timeout=shutdown_timeout)

    def statistics(self) -> SupervisorStatistics:
        """A snapshot of the current (or last) run; call it from the trio thread."""
        run = self._current
        if run is None:
            return SupervisorStatistics(
                self.name, None, self.strategy, False, 0, self.max_restarts, self.period, ()
            )
        return run.statistics()


class _Child:
    """Mutable bookkeeping for one child within one run of a supervisor."""

    def __init__(self, spec: ChildSpec, position: int) -> None:
        self.spec = spec
        self.position = position
        self.state = ChildState.STOPPED
        self.inc: Incarnation | None = None
        self.restarts = 0
        self.consecutive = 0
        self.due: float | None = None


class _Supervision:
    """One run of a :class:`Supervisor`: the state machine drawn in the module docstring."""

    def __init__(
        self,
        sup: Supervisor,
        path: str,
        gave_up_decision: str,
        on_stuck: Callable[[SupervisorStuck], None] | None,
    ) -> None:
        self.sup = sup
        self.path = path
        self.gave_up_decision = gave_up_decision
        self.on_stuck = on_stuck
        self.children = [_Child(spec, i) for i, spec in enumerate(sup.children)]
        self.intensity = RestartIntensity(sup.max_restarts, sup.period)
        self.started_at = trio.current_time()
        self.running = True
        self.nursery: trio.Nursery | None = None
        # The first task found that would not stop (its path, and where it waits), and whether the
        # escalation it forces has happened (once per run).
        self.stuck: tuple[str, tuple[str, ...]] | None = None
        self.escalated = False
        self._told_parent = False
        self._wake = trio.Event()
        interval = sup.stall_check_interval
        self.next_stall_check = math.inf if interval is None else self.started_at + interval

    async def run(
        self, nursery: trio.Nursery, task_status: trio.TaskStatus[None]
    ) -> SupervisionError | None:
        """Start, supervise, stop; return the verdict to raise once ``nursery`` has closed.

        ``Cancelled`` propagates (after every child is stopped), unless stopping found a child
        that would not stop: then the verdict is :class:`SupervisorStuck`.
        """
        self.nursery = nursery
        try:
            try:
                await self.start_all()
                task_status.started()
                await self.supervise()
            finally:
                self.running = False
                with trio.CancelScope(shield=True):
                    await self.stop_all(f"supervisor {self.path} is stopping")
                    await self._escalate_if_stuck()
        except SupervisionError as verdict:
            return verdict

    # -- helpers -----------------------------------------------------------------------------

    def _notify(self) -> None:
        self._wake.set()

    def _tell_parent(self, error: SupervisorStuck) -> None:
        if self.on_stuck is not None and not self._told_parent:
            self._told_parent = True
            self.on_stuck(error)

    def _child_escalated(self, inc: Incarnation) -> None:
        """A nested supervisor says a task under it would not stop (called from its task)."""
        if inc.up or not isinstance(inc.escalation, SupervisorStuck):
            return  # the loop handles it (_step)
        # It was still starting: this supervisor waits in nursery.start() for it and cannot act,
        # so pass the word up now; the parent will stop this supervisor, which then stops the rest.
        error = inc.escalation
        restarts = self.intensity.count(trio.current_time())
        self._tell_parent(SupervisorStuck(self.sup.name, error.stuck_path, restarts, self.sup.period))

    async def _report(
        self,
        kind: ReportKind,
        inc: Incarnation | None,
        error: BaseException,
        decision: str,
        *,
        frames: tuple[str, ...] | None = None,
        path: str | None = None,
        handling: str | None = None,
        message: str | None = None,
        restarts: int | None = None,
    ) -> None:
        sup = self.sup
        report = sup.reporter.compose(
            kind=kind,
            path=path if path is not None else (inc.path if inc is not None else self.path),
            error=error,
            decision=decision,
            restarts_in_window=self.intensity.count(trio.current_time()) if restarts is None else restarts,
            max_restarts=sup.max_restarts,
            period=sup.period,
            uptime=inc.uptime if inc is not None else trio.current_time() - self.started_at,
            frames=frames,
            handling=handling if handling is not None else (inc.ctx.handling if inc is not None else None),
            mailbox_depth=inc.ctx.mailbox_depth() if inc is not None else None,
            message=message,
        )
        await sup.reporter.report(report)

    # -- starting ----------------------------------------------------------------------------

    async def _start(self, child: _Child) -> BaseException | None:
        """Start one child and wait until it says it is up; return its error if it did not."""
        assert self.nursery is not None
        path = f"{self.path}/{child.spec.name}"
        inc = Incarnation(child.spec, path, self.nursery, self._notify, self._child_escalated)
        child.inc = inc
        child.state = ChildState.STARTING
        child.due = None
        await self.nursery.start(inc.host, name=inc.path)
        if inc.up:
            child.state = ChildState.RUNNING
            logger.debug("→ started %s", inc.path)
            return None
        child.inc = None
        child.state = ChildState.STOPPED
        if inc.error is not None:
            return inc.error
        return RuntimeError(f"{inc.path} returned without calling task_status.started()")

    async def start_all(self) -> None:
        for child in self.children:
            error = await self._start(child)
            if error is None:
                continue
            started = sum(1 for c in self.children if c.inc is not None)
            await self._report(
                ReportKind.START_ERROR,
                None,
                error,
                f"abort start: stop {started} started children and escalate",
                path=f"{self.path}/{child.spec.name}",
            )
            await self.stop_all(f"{child.spec.name} failed to start")
            await self._escalate_if_stuck()
            raise ChildStartFailed(child.spec.name, error) from error

    # -- stopping ----------------------------------------------------------------------------

    def _note_stuck(self, child: _Child, inc: Incarnation) -> None:
        """Remember a child that will not stop (its own task, or one under a nested supervisor)."""
        child.state = ChildState.STUCK
        child.due = None
        if self.stuck is None:
            if isinstance(inc.escalation, SupervisorStuck):
                self.stuck = (inc.escalation.stuck_path, ())  # its frames are in the leaf's report
            else:
                self.stuck = (inc.path, frames_of_task(inc.task))

    async def _stop(self, child: _Child, reason: str) -> None:
        """Cancel one child and wait its shutdown timeout; past it, the child is stuck (reported).

        Shielded: a stop that has begun finishes (it is bounded by ``shutdown_timeout`` plus the
        reports) even if the supervisor itself is cancelled meanwhile. A stuck child makes the
        supervisor escalate; the callers do that (``_escalate_if_stuck``) once their stops are done.
        """
        inc = child.inc
        if inc is None:
            return
        child.inc = None
        with trio.CancelScope(shield=True):
            ended_on_its_own = inc.finished.is_set() and inc.stop_reason is None
            if not inc.finished.is_set():
                inc.cancel(reason)
                if inc.escalation is None:
                    with trio.move_on_after(inc.spec.shutdown_timeout):
                        await inc.gone.wait()
            if inc.escalation is not None and not inc.finished.is_set():
                # A nested supervisor: the task that would not stop was reported where it is.
                self._note_stuck(child, inc)
                logger.error("%s cannot stop: %s", inc.path, inc.escalation)
                return
            if not inc.finished.is_set():
                frames = frames_of_task(inc.task)
                self._note_stuck(child, inc)
                error = ChildWouldNotStop(inc.path, inc.spec.shutdown_timeout)
                logger.error("%s ignored cancellation (%s); escalating", inc.path, reason)
                await self._report(
                    ReportKind.SHUTDOWN_ERROR,
                    inc,
                    error,
                    f"escalate: still running after {inc.spec.shutdown_timeout:g}s, never started twice",
                    frames=frames,
                )
                return
            if inc.error is not None and not isinstance(inc.error, trio.Cancelled):
                # It crashed just before we stopped it (its end was not processed yet), or it
                # raised while cleaning up after the cancellation: either way, say so.
                kind = ReportKind.CRASH if ended_on_its_own else ReportKind.SHUTDOWN_ERROR
                await self._report(kind, inc, inc.error, f"stopped ({reason})")
            logger.debug("← stopped %s (%s)", inc.path, reason)

    async def stop_all(self, reason: str) -> None:
        for child in reversed(self.children):
            if child.inc is not None:
                await self._stop(child, reason)
            if child.state not in (ChildState.STOPPED, ChildState.STUCK):
                child.state = ChildState.STOPPED
                child.due = None

    async def _escalate_if_stuck(self) -> None:
        """If a child would not stop: stop the rest, report ``gave_up``, tell the parent, raise.

        Whatever the intensity: the stuck child cannot be started again (it would run twice), and
        this supervisor cannot end while it runs, so the decision belongs to the parent.
        """
        if self.stuck is None or self.escalated:
            return
        self.escalated = True
        stuck_path, frames = self.stuck
        await self.stop_all(f"supervisor {self.path} escalates: {stuck_path} would not stop")
        sup = self.sup
        restarts = self.intensity.count(trio.current_time())
        error = SupervisorStuck(sup.name, stuck_path, restarts, sup.period)
        await self._report(
            ReportKind.GAVE_UP,
            None,
            error,
            self.gave_up_decision,
            path=self.path,
            frames=frames,
            restarts=restarts,
        )
        logger.error("%s", error)
        self._tell_parent(error)
        raise error

    # -- supervising -------------------------------------------------------------------------

    async def supervise(self) -> NoReturn:
        while True:
            # A fresh event before looking: anything that ends after the look sets this one.
            self._wake = trio.Event()
            if await self._step():
                continue
            deadline = min([self.next_stall_check] + [c.due for c in self.children if c.due is not None])
            with trio.move_on_at(deadline):
                await self._wake.wait()

    async def _step(self) -> bool:
        """Do the first thing that needs doing; return whether anything was done."""
        for child in self.children:
            inc = child.inc
            if child.state is ChildState.RUNNING and inc is not None and inc.escalation is not None:
                await self._on_stuck_below(child, inc)
                return True
        for child in self.children:
            inc = child.inc
            if (
                child.state is ChildState.RUNNING
                and inc is not None
                and inc.finished.is_set()
                and inc.stop_reason is None
            ):
                await self._on_exit(child, inc)
                return True
        now = trio.current_time()
        if now >= self.next_stall_check:
            for child in self.children:
                if child.state is ChildState.RUNNING and child.inc is not None and self._stalled(child.inc):
                    await self._on_stall(child, child.inc)
                    return True
            assert self.sup.stall_check_interval is not None
            self.next_stall_check = now + self.sup.stall_check_interval
        due = [
            c for c in self.children if c.state is ChildState.WAITING and c.due is not None and c.due <= now
        ]
        if due:
            await self._restart(due)
            return True
        return False

    def _stalled(self, inc: Incarnation) -> bool:
        limit = inc.spec.stall_after
        if limit is None or inc.ctx.busy_with is None or inc.finished.is_set():
            return False
        return trio.current_time() - inc.ctx.last_heartbeat > limit

    async def _on_stuck_below(self, child: _Child, inc: Incarnation) -> None:
        """A nested supervisor gave up because a task under it would not stop: escalate too."""
        assert inc.escalation is not None
        await self._report(
            ReportKind.CRASH, inc, inc.escalation, "escalate: not restarted while a task under it runs"
        )
        inc.cancel(f"supervisor {self.path} escalates")
        child.inc = None
        self._note_stuck(child, inc)
        await self._escalate_if_stuck()

    async def _on_exit(self, child: _Child, inc: Incarnation) -> None:
        if inc.error is None:
            if should_restart(child.spec.restart, abnormal=False):
                error: BaseException = ChildReturned(inc.path)
                await self._failure(child, inc, ReportKind.CRASH, error, abnormal=False, frames=())
            else:
                logger.info("%s ended normally; not restarted (%s)", inc.path, child.spec.restart.value)
                child.inc = None
                child.state = ChildState.STOPPED
            return
        await self._failure(child, inc, ReportKind.CRASH, inc.error, abnormal=True)

    async def _on_stall(self, child: _Child, inc: Incarnation) -> None:
        age = trio.current_time() - inc.ctx.last_heartbeat
        assert inc.spec.stall_after is not None
        error = ChildStalled(inc.path, inc.ctx.busy_with, age, inc.spec.stall_after)
        # Where it is stuck, captured before the cancellation unwinds it.
        await self._failure(
            child, inc, ReportKind.STALL, error, abnormal=True, frames=frames_of_task(inc.task)
        )

    async def _failure(
        self,
        child: _Child,
        inc: Incarnation,
        kind: ReportKind,
        error: BaseException,
        *,
        abnormal: bool,
        frames: tuple[str, ...] | None = None,
    ) -> None:
        """Decide (table, intensity, backoff), report, then act (stop the set, schedule it)."""
        sup = self.sup
        spec = child.spec
        if inc.finished.is_set():
            child.inc = None  # already ended: nothing to stop, and _stop must not report it again
        if not should_restart(spec.restart, abnormal):
            await self._report(kind, inc, error, f"not restarted ({spec.restart.value})", frames=frames)
            await self._stop(child, f"{kind}: not restarted")
            if child.state is not ChildState.STUCK:
                child.state = ChildState.STOPPED
            await self._escalate_if_stuck()
            return
        now = trio.current_time()
        if not self.intensity.record(now):
            await self._report(kind, inc, error, "escalate", frames=frames)
            await self._give_up(inc, error)
        child.consecutive = 1 if inc.uptime > sup.period else child.consecutive + 1
        delay = sup.backoff.delay(child.consecutive, sup.rng)
        live = [c.position for c in self.children if c.state not in (ChildState.STOPPED, ChildState.STUCK)]
        members = [self.children[p] for p in restart_set(sup.strategy, live, child.position)]
        others = [m.spec.name for m in members if m is not child]
        decision = f"restart in {delay:.2f}s"
        if others:
            decision += f" with {', '.join(others)} ({sup.strategy.value})"
        await self._report(kind, inc, error, decision, frames=frames)
        for member in reversed(members):
            reason = f"{kind}: restarting" if member is child else f"restarting with {spec.name}"
            await self._stop(member, f"supervisor {self.path}: {reason}")
        # A member that would not stop is never started beside itself: escalate instead.
        await self._escalate_if_stuck()
        due = trio.current_time() + delay
        for member in members:
            if member is not child and member.spec.restart is RestartType.TEMPORARY:
                member.state = ChildState.STOPPED
                member.due = None
            else:
                member.state = ChildState.WAITING
                member.due = due
        logger.info("↻ %s: %s", inc.path, decision)

    async def _restart(self, due: list[_Child]) -> None:
        """Start the children whose backoff is over, in start order."""
        for i, child in enumerate(due):
            error = await self._start(child)
            if error is None:
                child.restarts += 1
                continue
            path = f"{self.path}/{child.spec.name}"
            child.consecutive += 1
            if not self.intensity.record(trio.current_time()):
                await self._report(ReportKind.START_ERROR, None, error, "escalate", path=path)
                await self._give_up(None, error, path=path)
            delay = self.sup.backoff.delay(child.consecutive, self.sup.rng)
            await self._report(ReportKind.START_ERROR, None, error, f"retry in {delay:.2f}s", path=path)
            child.state = ChildState.WAITING
            child.due = trio.current_time() + delay
            if self.sup.strategy is not Strategy.ONE_FOR_ONE:
                # Later members of the set depend on this one: they wait for it.
                for later in due[i + 1 :]:
                    later.due = child.due
                return

    async def _give_up(
        self, inc: Incarnation | None, trigger: BaseException, *, path: str | None = None
    ) -> NoReturn:
        sup = self.sup
        restarts = self.intensity.count(trio.current_time())
        error = SupervisorGaveUp(sup.name, restarts, sup.period)
        await self.stop_all(f"supervisor {self.path} gave up")
        await self._escalate_if_stuck()  # a child that would not stop outranks the intensity
        self.escalated = True
        where = path if path is not None else (inc.path if inc is not None else self.path)
        await self._report(
            ReportKind.GAVE_UP,
            None,
            error,
            self.gave_up_decision,
            path=self.path,
            frames=frames_of_exception(trigger),
            restarts=restarts,
            message=(
                f"{error} (max {sup.max_restarts}); "
                f"last failure: {where}: {type(trigger).__name__}: {trigger}"
            ),
        )
        logger.error("%s", error)
        raise error from trigger

    # -- statistics --------------------------------------------------------------------------

    def statistics(self) -> SupervisorStatistics:
        now = trio.current_time()
        children = []
        for c in self.children:
            inc = c.inc
            children.append(
                ChildStatistics(
                    name=c.spec.name,
                    path=f"{self.path}/{c.spec.name}",
                    state=c.state,
                    restarts=c.restarts,
                    consecutive_failures=c.consecutive,
                    uptime=inc.uptime if inc is not None else None,
                    busy_with=inc.ctx.busy_with if inc is not None else None,
                    heartbeat_age=now - inc.ctx.last_heartbeat if inc is not None else None,
                    restart_in=max(0.0, c.due - now) if c.due is not None else None,
                    waiting_for=inc.ctx.waiting_for if inc is not None else None,
                )
            )
        sup = self.sup
        return SupervisorStatistics(
            name=sup.name,
            path=self.path,
            strategy=sup.strategy,
            running=self.running,
            restarts_in_window=self.intensity.count(now),
            max_restarts=sup.max_restarts,
            period=sup.period,
            children=tuple(children),
        )
