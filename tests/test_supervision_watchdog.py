"""Stalls, children that ignore cancellation (never run twice), slow scheduler steps, a frozen scheduler."""

from __future__ import annotations

import datetime as dt
import io
import logging
import random
import threading
import time
from pathlib import Path
from typing import TextIO

import pytest
import trio
import trio.lowlevel
import trio.testing

from atlas.supervision import (
    EXIT_GAVE_UP,
    Backoff,
    ChildContext,
    ChildSpec,
    ChildState,
    CrashReport,
    CrashReporter,
    RestartType,
    SchedulerWatchdog,
    SlowStepInstrument,
    Strategy,
    Supervisor,
    SupervisorStuck,
    format_task_tree,
    run_root,
)

NOW = dt.datetime(2025, 1, 1, tzinfo=dt.UTC)


class Reports:
    """A sink that lets a test wait for a report."""

    def __init__(self) -> None:
        self.items: list[CrashReport] = []
        self._changed = trio.Event()

    async def __call__(self, report: CrashReport) -> None:
        self.items.append(report)
        self._changed.set()
        self._changed = trio.Event()

    async def wait_for(self, kind: str) -> CrashReport:
        with trio.fail_after(10_000):
            while not any(r.kind == kind for r in self.items):
                await self._changed.wait()
        return next(r for r in self.items if r.kind == kind)


def _supervisor(children: list[ChildSpec], reports: Reports, **kw: object) -> Supervisor:
    return Supervisor(
        "root",
        Strategy.ONE_FOR_ONE,
        children,
        backoff=Backoff(initial=0.5, jitter=0.0),
        reporter=CrashReporter([reports], now=lambda: NOW),
        rng=random.Random(3),
        **kw,  # type: ignore[arg-type]
    )


async def test_a_stalled_child_is_cancelled_reported_and_restarted(
    autojump_clock: trio.testing.MockClock,
) -> None:
    reports = Reports()
    incarnations: list[float] = []
    cancelled_at: list[float] = []

    async def stuck_on_invoice(ctx: ChildContext, *, task_status: trio.TaskStatus[None]) -> None:
        incarnations.append(trio.current_time())
        task_status.started()
        if len(incarnations) > 1:
            await trio.sleep_forever()  # idle: never a stall, however long
        with ctx.busy("invoice 42"):
            try:
                await trio.sleep_forever()  # busy and silent: a stall
            except trio.Cancelled:
                cancelled_at.append(trio.current_time())
                raise

    sup = _supervisor([ChildSpec("payments", stuck_on_invoice, stall_after=2.0)], reports)
    assert sup.stall_check_interval == 0.5
    async with trio.open_nursery() as nursery:
        await nursery.start(sup.run)
        stall = await reports.wait_for("stall")
        assert (stall.path, stall.exc_type, stall.handling) == ("root/payments", "ChildStalled", "invoice 42")
        assert "no heartbeat for" in stall.message
        assert stall.decision == "restart in 0.50s"
        assert stall.restarts_in_window == 1
        assert any("in stuck_on_invoice" in frame for frame in stall.frames)  # where it was stuck
        await trio.sleep(100)  # virtual: the restarted, idle incarnation is never judged stalled
        # Judged at the first check after 2 s of silence (checks every 0.5 s).
        assert 2.0 < cancelled_at[0] - incarnations[0] <= 2.5 + 1e-9
        assert len(incarnations) == 2
        assert incarnations[1] - cancelled_at[0] == pytest.approx(0.5)
        assert [r.kind for r in reports.items] == ["stall"]
        nursery.cancel_scope.cancel()


async def test_a_beating_busy_child_is_not_stalled(autojump_clock: trio.testing.MockClock) -> None:
    reports = Reports()

    async def long_job(ctx: ChildContext, *, task_status: trio.TaskStatus[None]) -> None:
        task_status.started()
        with ctx.busy("reconcile"):
            for _batch in range(50):
                await trio.sleep(1.5)
                ctx.heartbeat()
        await trio.sleep_forever()

    sup = _supervisor([ChildSpec("vpn", long_job, stall_after=2.0)], reports)
    async with trio.open_nursery() as nursery:
        await nursery.start(sup.run)
        await trio.sleep(100)
        assert reports.items == []
        nursery.cancel_scope.cancel()


class LiveTasks(trio.abc.Instrument):
    """Counts the live trio tasks named ``name`` at every spawn and exit, and the most ever alive."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.live = 0
        self.most = 0

    def task_spawned(self, task: trio.lowlevel.Task) -> None:
        if task.name == self.name:
            self.live += 1
            self.most = max(self.most, self.live)

    def task_exited(self, task: trio.lowlevel.Task) -> None:
        if task.name == self.name:
            self.live -= 1


async def test_a_supervisor_run_directly_raises_stuck_once_the_task_ends(
    autojump_clock: trio.testing.MockClock,
) -> None:
    reports = Reports()
    release = trio.Event()
    stopped: list[tuple[str, float]] = []

    async def polite(ctx: ChildContext, *, task_status: trio.TaskStatus[None]) -> None:
        task_status.started()
        try:
            await trio.sleep_forever()
        finally:
            stopped.append(("polite", trio.current_time()))

    async def stubborn(ctx: ChildContext, *, task_status: trio.TaskStatus[None]) -> None:
        task_status.started()
        with trio.CancelScope(shield=True):
            await release.wait()  # ignores the supervisor; the test releases it later
        stopped.append(("stubborn", trio.current_time()))

    sup = _supervisor(
        [ChildSpec("polite", polite), ChildSpec("stubborn", stubborn, shutdown_timeout=3.0)], reports
    )
    t0 = trio.current_time()
    raised: list[BaseException] = []

    async def run_and_catch(*, task_status: trio.TaskStatus[None]) -> None:
        with trio.move_on_after(10):
            try:
                await sup.run(task_status=task_status)
            except SupervisorStuck as exc:
                raised.append(exc)

    async with trio.open_nursery() as nursery:
        await nursery.start(run_and_catch)
        try:
            await reports.wait_for("gave_up")
            # Cancelled at t0+10; stubborn (stopped first: reverse order) got its 3 s, then polite
            # was stopped at once. The supervisor's nursery still holds stubborn: run() goes on.
            assert trio.current_time() - t0 == pytest.approx(13)
            assert stopped == [("polite", pytest.approx(t0 + 13))]
            assert sup.statistics().children[1].state is ChildState.STUCK
            assert [(r.kind, r.path, r.exc_type) for r in reports.items] == [
                ("shutdown_error", "root/stubborn", "ChildWouldNotStop"),
                ("gave_up", "root", "SupervisorStuck"),
            ]
            report = reports.items[0]
            assert report.decision == "escalate: still running after 3s, never started twice"
            assert any("in stubborn" in frame for frame in report.frames)
            await trio.sleep(50)
            assert raised == []
        finally:
            release.set()
    assert [name for name, _ in stopped] == ["polite", "stubborn"]
    [error] = raised
    assert (error.name, error.stuck_path) == ("root", "root/stubborn")


@pytest.mark.parametrize("trigger", ["sibling crash", "stall", "stop"])
async def test_a_child_that_ignores_cancellation_is_never_run_twice(
    autojump_clock: trio.testing.MockClock, trigger: str
) -> None:
    """root → workers (one_for_all: crasher, stubborn); stubborn shields itself from cancellation."""
    reports = Reports()
    release = trio.Event()
    incarnations: list[float] = []
    live = LiveTasks("root/workers/stubborn")
    trio.lowlevel.add_instrument(live)

    async def crasher(ctx: ChildContext, *, task_status: trio.TaskStatus[None]) -> None:
        task_status.started()
        await trio.sleep(1)
        if trigger == "sibling crash":
            raise RuntimeError("crash")
        await trio.sleep_forever()

    async def stubborn(ctx: ChildContext, *, task_status: trio.TaskStatus[None]) -> None:
        incarnations.append(trio.current_time())
        task_status.started()
        with ctx.busy("job 1"), trio.CancelScope(shield=True):
            await release.wait()

    async def web(ctx: ChildContext, *, task_status: trio.TaskStatus[None]) -> None:
        task_status.started()
        await trio.sleep_forever()

    reporter = CrashReporter([reports], now=lambda: NOW)
    backoff = Backoff(initial=0.5, jitter=0.0)
    stall_after = 5.0 if trigger == "stall" else None
    workers = Supervisor(
        "workers",
        Strategy.ONE_FOR_ALL,
        [
            ChildSpec("crasher", crasher),
            ChildSpec("stubborn", stubborn, shutdown_timeout=3.0, stall_after=stall_after),
        ],
        backoff=backoff,
        reporter=reporter,
        max_restarts=100,
    )
    root = Supervisor(
        "root",
        Strategy.ONE_FOR_ONE,
        [ChildSpec("web", web), workers.as_child()],
        backoff=backoff,
        reporter=reporter,
        max_restarts=100,
    )
    exits: list[int] = []
    codes: list[int] = []
    stop = trio.Event()

    async def main() -> None:
        codes.append(await run_root(root, stop=stop, hard_exit=exits.append))

    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(main)
            try:
                await trio.sleep(2)
                if trigger == "stop":
                    stop.set()
                with trio.fail_after(10_000):
                    while not exits:  # noqa: ASYNC110 - the hard exit is a plain call, no event
                        await trio.sleep(1)
                assert exits == [EXIT_GAVE_UP]  # at the root: the process would end here, non-zero
                assert workers.statistics().children[1].state is ChildState.STUCK
                await trio.sleep(100)  # virtual: far past any backoff, and still no second incarnation
                assert len(incarnations) == 1
                assert live.live == 1
            finally:
                release.set()  # lets the tree unwind, also when an assertion failed
    finally:
        trio.lowlevel.remove_instrument(live)
    assert codes == [EXIT_GAVE_UP]
    assert live.most == 1 and live.live == 0
    kinds = [(r.kind, r.path, r.exc_type) for r in reports.items]
    escalation = [
        ("shutdown_error", "root/workers/stubborn", "ChildWouldNotStop"),
        ("gave_up", "root/workers", "SupervisorStuck"),
    ]
    first = {
        "sibling crash": [("crash", "root/workers/crasher", "RuntimeError")],
        "stall": [("stall", "root/workers/stubborn", "ChildStalled")],
        "stop": [],
    }[trigger]
    # While stopping, the root was waiting for workers to stop: no separate crash report for it.
    parent = [] if trigger == "stop" else [("crash", "root/workers", "SupervisorStuck")]
    assert kinds == [*first, *escalation, *parent, ("gave_up", "root", "SupervisorStuck")]
    final = reports.items[-1]
    assert final.decision == f"exit with code {EXIT_GAVE_UP}"
    assert "root/workers/stubborn would not stop" in final.message
    shutdown_error = reports.items[len(first)]
    assert shutdown_error.decision == "escalate: still running after 3s, never started twice"
    assert any("in stubborn" in frame for frame in shutdown_error.frames)


async def test_a_temporary_stalled_child_is_stopped_not_restarted(
    autojump_clock: trio.testing.MockClock,
) -> None:
    reports = Reports()
    starts: list[float] = []

    async def stuck(ctx: ChildContext, *, task_status: trio.TaskStatus[None]) -> None:
        starts.append(trio.current_time())
        task_status.started()
        with ctx.busy("once"):
            await trio.sleep_forever()

    sup = _supervisor([ChildSpec("t", stuck, restart=RestartType.TEMPORARY, stall_after=1.0)], reports)
    async with trio.open_nursery() as nursery:
        await nursery.start(sup.run)
        report = await reports.wait_for("stall")
        assert report.decision == "not restarted (temporary)"
        await trio.sleep(60)
        assert len(starts) == 1
        nursery.cancel_scope.cancel()


# -- the scheduler itself -------------------------------------------------------------------------


def _spin(seconds: float) -> None:
    """Hold the trio thread without yielding (the bug the instrument is there to find)."""
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass


async def test_slow_step_instrument_names_the_blocking_task(caplog: pytest.LogCaptureFixture) -> None:
    instrument = SlowStepInstrument(threshold=0.05, log=logging.getLogger("atlas.test.slowstep"))
    trio.lowlevel.add_instrument(instrument)
    try:

        async def hog() -> None:
            _spin(0.2)
            await trio.lowlevel.checkpoint()

        async def polite() -> None:
            for _ in range(5):
                await trio.lowlevel.checkpoint()

        with caplog.at_level(logging.WARNING, logger="atlas.test.slowstep"):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(hog, name="the-hog")
                nursery.start_soon(polite, name="the-polite-one")
    finally:
        trio.lowlevel.remove_instrument(instrument)
        instrument.close()
    # >= rather than ==: on a loaded machine the OS may stretch some other step past 50 ms too.
    assert instrument.count >= 1
    assert instrument.longest_task == "the-hog"
    assert instrument.longest >= 0.2
    assert any("task the-hog ran" in record.getMessage() for record in caplog.records)


async def test_slow_step_instrument_names_a_slow_step_among_many_short_ones(
    caplog: pytest.LogCaptureFixture,
) -> None:
    instrument = SlowStepInstrument(threshold=0.05, log=logging.getLogger("atlas.test.slowstep"))
    trio.lowlevel.add_instrument(instrument)
    try:

        async def busy(n: int) -> None:
            for _ in range(n):
                _spin(0.0005)  # short steps: together they make long batches, none of them is slow
                await trio.lowlevel.checkpoint()

        async def hog_later() -> None:
            await trio.sleep(0.05)
            _spin(0.2)
            await trio.lowlevel.checkpoint()

        with caplog.at_level(logging.WARNING, logger="atlas.test.slowstep"):
            async with trio.open_nursery() as nursery:
                for i in range(50):
                    nursery.start_soon(busy, 20, name=f"busy-{i}")
                nursery.start_soon(hog_later, name="the-late-hog")
    finally:
        trio.lowlevel.remove_instrument(instrument)
        instrument.close()
    named = {r.getMessage().split()[4] for r in caplog.records if "slow scheduler step" in r.getMessage()}
    assert "the-late-hog" in named
    # Batches of 50 short steps took ~25 ms each: many steps, none slow, so none is blamed (bar
    # the OS pausing this process for 50 ms in one of them on a loaded machine).
    assert len(named - {"the-late-hog"}) <= 1
    assert instrument.longest >= 0.2


def test_slow_step_instrument_adds_no_per_step_hook() -> None:
    """The cost that mattered: trio calls step hooks on every step, so the instrument has none."""
    for hook in ("before_task_step", "after_task_step", "task_scheduled"):
        assert getattr(SlowStepInstrument, hook) is getattr(trio.abc.Instrument, hook)


def _block_the_scheduler(until: threading.Event, limit: float) -> None:
    """A CPU loop on the trio thread: the freeze the watchdog exists for."""
    end = time.perf_counter() + limit
    while not until.is_set() and time.perf_counter() < end:
        pass


@pytest.mark.parametrize("stream", ["file", "stringio"])
async def test_scheduler_watchdog_dumps_and_exits_when_trio_is_blocked(tmp_path: Path, stream: str) -> None:
    """A real freeze: the trio thread spins in a CPU loop past the timeout."""
    exits: list[int] = []
    fired = threading.Event()

    def fake_exit(code: int) -> None:
        exits.append(code)
        fired.set()

    dump_path = tmp_path / "dump.txt"
    with dump_path.open("w") as file:
        dump: TextIO = file if stream == "file" else io.StringIO()  # faulthandler / Python fallback
        watchdog = SchedulerWatchdog(0.3, dump_to=dump, exit_code=70, exit=fake_exit)
        async with trio.open_nursery() as nursery:
            await nursery.start(watchdog.run, name="scheduler-watchdog-beat")
            _block_the_scheduler(fired, limit=10.0)
            nursery.cancel_scope.cancel()
        text = dump.getvalue() if isinstance(dump, io.StringIO) else ""
    text = text or dump_path.read_text()
    assert exits == [70]
    assert watchdog.fired
    assert "trio has not run for" in text
    assert "_block_the_scheduler" in text  # faulthandler shows the trio thread's stack
    assert "last known trio task tree" in text
    assert "scheduler-watchdog-beat" in text


async def test_scheduler_watchdog_stays_quiet_while_trio_runs() -> None:
    exits: list[int] = []
    watchdog = SchedulerWatchdog(0.4, exit=exits.append)
    async with trio.open_nursery() as nursery:
        await nursery.start(watchdog.run)
        for _ in range(50):
            await trio.sleep(0.02)  # real time: a healthy scheduler for 1 s (2.5 timeouts)
        nursery.cancel_scope.cancel()
    assert exits == []
    assert not watchdog.fired


async def test_task_tree_lists_tasks_and_where_they_wait() -> None:
    async def napping() -> None:
        await trio.sleep_forever()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(napping, name="napper")
        await trio.testing.wait_all_tasks_blocked()
        tree = format_task_tree()
        nursery.cancel_scope.cancel()
    assert "napper" in tree
    assert "in napping" in tree
