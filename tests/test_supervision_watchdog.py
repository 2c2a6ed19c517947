"""Stalls, children that ignore cancellation, slow scheduler steps and a frozen scheduler."""

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
    Backoff,
    ChildContext,
    ChildSpec,
    CrashReport,
    CrashReporter,
    RestartType,
    SchedulerWatchdog,
    SlowStepInstrument,
    Strategy,
    Supervisor,
    format_task_tree,
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


async def test_a_child_ignoring_cancellation_is_abandoned(autojump_clock: trio.testing.MockClock) -> None:
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
            await release.wait()  # ignores the supervisor; the test releases it at the end
        stopped.append(("stubborn", trio.current_time()))

    sup = _supervisor(
        [ChildSpec("polite", polite), ChildSpec("stubborn", stubborn, shutdown_timeout=3.0)], reports
    )
    t0 = trio.current_time()
    with trio.move_on_after(10):
        await sup.run()
    # Cancelled at t0+10; stubborn (stopped first: reverse order) was abandoned after 3 s, then
    # polite was stopped at once, and run() returned: the supervisor did not hang.
    assert trio.current_time() - t0 == pytest.approx(13)
    assert [name for name, _ in stopped] == ["polite"]
    assert stopped[0][1] == pytest.approx(t0 + 13)
    [report] = reports.items
    assert (report.kind, report.path, report.exc_type) == (
        "shutdown_error",
        "root/stubborn",
        "ChildAbandoned",
    )
    assert report.decision == "abandoned after 3s; the supervisor goes on"
    assert any("in stubborn" in frame for frame in report.frames)
    release.set()
    await trio.testing.wait_all_tasks_blocked()
    assert stopped[-1][0] == "stubborn"


async def test_a_stubborn_sibling_does_not_block_a_restart(autojump_clock: trio.testing.MockClock) -> None:
    reports = Reports()
    release = trio.Event()
    starts: list[str] = []

    async def crasher(ctx: ChildContext, *, task_status: trio.TaskStatus[None]) -> None:
        starts.append("crasher")
        task_status.started()
        if starts.count("crasher") == 1:
            await trio.sleep(1)
            raise RuntimeError("crash")
        await trio.sleep_forever()

    async def stubborn(ctx: ChildContext, *, task_status: trio.TaskStatus[None]) -> None:
        starts.append("stubborn")
        task_status.started()
        with trio.CancelScope(shield=True):
            await release.wait()

    sup = Supervisor(
        "root",
        Strategy.ONE_FOR_ALL,
        [ChildSpec("crasher", crasher), ChildSpec("stubborn", stubborn, shutdown_timeout=2.0)],
        backoff=Backoff(initial=0.5, jitter=0.0),
        reporter=CrashReporter([reports], now=lambda: NOW),
    )
    async with trio.open_nursery() as nursery:
        await nursery.start(sup.run)
        await trio.sleep(10)
        assert starts == ["crasher", "stubborn", "crasher", "stubborn"]
        assert [(r.kind, r.path) for r in reports.items] == [
            ("crash", "root/crasher"),
            ("shutdown_error", "root/stubborn"),
        ]
        release.set()  # lets both stubborn incarnations go when the test stops the tree
        nursery.cancel_scope.cancel()


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
    # >= rather than ==: on a loaded machine the OS may stretch some other step past 50 ms too.
    assert instrument.count >= 1
    assert instrument.longest_task == "the-hog"
    assert instrument.longest >= 0.2
    assert any("task the-hog ran" in record.getMessage() for record in caplog.records)


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
