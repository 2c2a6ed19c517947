"""Supervisor behaviour on trio's MockClock: strategies, restart types, startup, intensity, nesting.

Children are scripted: each start records ("start", name) and then obeys one command ("crash" or
"return"); a cancelled child records ("stop", name). Tests wait on recorded events, never on time,
except where virtual time is the point (the autojump clock makes it instant and deterministic).
"""

from __future__ import annotations

import asyncio
import contextvars
import datetime as dt
import functools
import itertools
import random
from collections.abc import Callable
from typing import Any

import pytest
import trio
import trio.testing
import trio_asyncio

from atlas.supervision import (
    EXIT_GAVE_UP,
    EXIT_OK,
    Backoff,
    ChildContext,
    ChildSpec,
    ChildStartFailed,
    ChildState,
    CrashReport,
    CrashReporter,
    RestartType,
    RingSink,
    Strategy,
    Supervisor,
    SupervisorGaveUp,
    run_root,
)
from tests._tree_support import atlas_tasks_outside, parent_task, supervision_tasks

NOW = dt.datetime(2025, 1, 1, tzinfo=dt.UTC)


class Recorder:
    """Scripted children plus a log of what happened to them, with a way to wait for it."""

    def __init__(self) -> None:
        self.events: list[tuple[str, str]] = []
        self.reports: list[CrashReport] = []
        self.ring = RingSink()
        self.reporter = CrashReporter([self._sink, self.ring], now=lambda: NOW)
        self._changed = trio.Event()
        self._commands: dict[str, tuple[trio.MemorySendChannel[str], trio.MemoryReceiveChannel[str]]] = {}

    def note(self, kind: str, name: str) -> None:
        self.events.append((kind, name))
        self._changed.set()
        self._changed = trio.Event()

    async def _sink(self, report: CrashReport) -> None:
        self.reports.append(report)
        self.note(f"report:{report.kind}", report.path)

    async def wait_until(self, predicate: Callable[[], bool]) -> None:
        with trio.fail_after(10_000):  # virtual seconds: only a broken test waits this long
            while not predicate():
                await self._changed.wait()

    def count(self, kind: str, name: str) -> int:
        return self.events.count((kind, name))

    def _channel(self, name: str) -> tuple[trio.MemorySendChannel[str], trio.MemoryReceiveChannel[str]]:
        if name not in self._commands:
            self._commands[name] = trio.open_memory_channel[str](100)
        return self._commands[name]

    def command(self, name: str, what: str) -> None:
        self._channel(name)[0].send_nowait(what)

    def spec(self, name: str, restart: RestartType = RestartType.PERMANENT, **kw: Any) -> ChildSpec:
        async def start(ctx: ChildContext, *, task_status: trio.TaskStatus[None]) -> None:
            self.note("start", name)
            task_status.started()
            try:
                what = await self._channel(name)[1].receive()
            except trio.Cancelled:
                self.note("stop", name)
                raise
            self.note(what, name)
            if what == "crash":
                raise RuntimeError(f"{name} was told to crash")

        return ChildSpec(name=name, start=start, restart=restart, **kw)

    def supervisor(self, name: str, strategy: Strategy, children: list[ChildSpec], **kw: Any) -> Supervisor:
        kw.setdefault("backoff", Backoff(initial=0.1, jitter=0.0))
        kw.setdefault("rng", random.Random(1))
        return Supervisor(name, strategy, children, reporter=self.reporter, **kw)


def _tail(events: list[tuple[str, str]], start: int) -> list[tuple[str, str]]:
    return [e for e in events[start:] if not e[0].startswith("report:")]


@pytest.mark.parametrize(
    ("strategy", "expected"),
    [
        (Strategy.ONE_FOR_ONE, [("crash", "b"), ("start", "b")]),
        (
            Strategy.ONE_FOR_ALL,
            [("crash", "b"), ("stop", "c"), ("stop", "a"), ("start", "a"), ("start", "b"), ("start", "c")],
        ),
        (Strategy.REST_FOR_ONE, [("crash", "b"), ("stop", "c"), ("start", "b"), ("start", "c")]),
    ],
)
async def test_strategy_restart_set_and_order(
    autojump_clock: trio.testing.MockClock, strategy: Strategy, expected: list[tuple[str, str]]
) -> None:
    rec = Recorder()
    sup = rec.supervisor("root", strategy, [rec.spec("a"), rec.spec("b"), rec.spec("c")])
    async with trio.open_nursery() as nursery:
        await nursery.start(sup.run)
        assert rec.events == [("start", "a"), ("start", "b"), ("start", "c")]
        mark = len(rec.events)
        rec.command("b", "crash")
        await rec.wait_until(
            lambda: rec.count("start", "b") == 2 and _tail(rec.events, mark)[-1:] == expected[-1:]
        )
        assert _tail(rec.events, mark) == expected
        crash = [r for r in rec.reports if r.kind == "crash"]
        assert [r.path for r in crash] == ["root/b"]
        assert crash[0].decision.startswith("restart in 0.10s")
        nursery.cancel_scope.cancel()
    # Stopping the supervisor stops every child in reverse start order.
    assert _tail(rec.events, len(rec.events) - 3) == [("stop", "c"), ("stop", "b"), ("stop", "a")]


@pytest.mark.parametrize(
    ("restart", "command", "restarted"),
    [
        (RestartType.PERMANENT, "return", True),
        (RestartType.PERMANENT, "crash", True),
        (RestartType.TRANSIENT, "return", False),
        (RestartType.TRANSIENT, "crash", True),
        (RestartType.TEMPORARY, "return", False),
        (RestartType.TEMPORARY, "crash", False),
    ],
)
async def test_restart_types(
    autojump_clock: trio.testing.MockClock, restart: RestartType, command: str, restarted: bool
) -> None:
    rec = Recorder()
    sup = rec.supervisor("root", Strategy.ONE_FOR_ONE, [rec.spec("w", restart)])
    async with trio.open_nursery() as nursery:
        await nursery.start(sup.run)
        rec.command("w", command)
        # Virtual time: far past any backoff, so "not restarted" cannot mean "not yet".
        await trio.sleep(60)
        assert rec.count("start", "w") == (2 if restarted else 1)
        state = sup.statistics().children[0].state
        assert state is (ChildState.RUNNING if restarted else ChildState.STOPPED)
        kinds = [(r.kind, r.exc_type, r.decision) for r in rec.reports]
        if restarted:
            exc_type = "RuntimeError" if command == "crash" else "ChildReturned"
            assert kinds == [("crash", exc_type, "restart in 0.10s")]
        elif command == "crash":
            assert kinds == [("crash", "RuntimeError", "not restarted (temporary)")]
        else:
            assert kinds == []  # a normal end of a transient/temporary child is not a failure
        nursery.cancel_scope.cancel()


async def test_temporary_sibling_is_not_restarted_with_the_set(
    autojump_clock: trio.testing.MockClock,
) -> None:
    rec = Recorder()
    specs = [rec.spec("a"), rec.spec("t", RestartType.TEMPORARY), rec.spec("b")]
    sup = rec.supervisor("root", Strategy.ONE_FOR_ALL, specs)
    async with trio.open_nursery() as nursery:
        await nursery.start(sup.run)
        rec.command("b", "crash")
        await rec.wait_until(lambda: rec.count("start", "b") == 2)
        await trio.testing.wait_all_tasks_blocked()  # let the supervisor finish its bookkeeping
        assert rec.count("stop", "t") == 1
        assert rec.count("start", "t") == 1
        assert sup.statistics().children[1].state is ChildState.STOPPED
        # One restart set: a and b back up, restart counted once.
        assert [c.restarts for c in sup.statistics().children] == [1, 0, 1]
        assert sup.statistics().restarts_in_window == 1
        nursery.cancel_scope.cancel()


async def test_children_start_in_order_only_after_started(autojump_clock: trio.testing.MockClock) -> None:
    rec = Recorder()
    started_at: dict[str, float] = {}

    async def slow(ctx: ChildContext, *, task_status: trio.TaskStatus[None]) -> None:
        await trio.sleep(5)
        started_at["slow"] = trio.current_time()
        task_status.started()
        await trio.sleep_forever()

    async def quick(ctx: ChildContext, *, task_status: trio.TaskStatus[None]) -> None:
        started_at["quick"] = trio.current_time()
        task_status.started()
        await trio.sleep_forever()

    sup = rec.supervisor("root", Strategy.ONE_FOR_ONE, [ChildSpec("slow", slow), ChildSpec("quick", quick)])
    t0 = trio.current_time()
    async with trio.open_nursery() as nursery:
        await nursery.start(sup.run)
        assert trio.current_time() - t0 == pytest.approx(5)
        assert started_at["quick"] >= started_at["slow"]
        nursery.cancel_scope.cancel()


async def test_start_failure_is_all_or_nothing(autojump_clock: trio.testing.MockClock) -> None:
    rec = Recorder()

    async def broken(ctx: ChildContext, *, task_status: trio.TaskStatus[None]) -> None:
        rec.note("start", "c")
        raise ConnectionRefusedError("database is down")

    sup = rec.supervisor("root", Strategy.ONE_FOR_ONE, [rec.spec("a"), rec.spec("b"), ChildSpec("c", broken)])
    with pytest.raises(ChildStartFailed) as info:
        await sup.run()
    assert info.value.name == "c"
    assert isinstance(info.value.cause, ConnectionRefusedError)
    assert info.value.__cause__ is info.value.cause
    assert _tail(rec.events, 0) == [
        ("start", "a"),
        ("start", "b"),
        ("start", "c"),
        ("stop", "b"),
        ("stop", "a"),
    ]
    [report] = rec.reports
    assert (report.kind, report.path, report.exc_type) == ("start_error", "root/c", "ConnectionRefusedError")
    assert "database is down" in report.message
    assert report.decision == "abort start: stop 2 started children and escalate"
    assert any("in broken" in f for f in report.frames)


async def test_returning_without_started_is_a_start_failure(autojump_clock: trio.testing.MockClock) -> None:
    rec = Recorder()

    async def forgetful(ctx: ChildContext, *, task_status: trio.TaskStatus[None]) -> None:
        return

    sup = rec.supervisor("root", Strategy.ONE_FOR_ONE, [ChildSpec("f", forgetful)])
    with pytest.raises(ChildStartFailed, match=r"without calling task_status.started\(\)"):
        await sup.run()


async def test_failed_restart_is_retried_with_backoff(autojump_clock: trio.testing.MockClock) -> None:
    rec = Recorder()
    attempts: list[float] = []

    async def flaky(ctx: ChildContext, *, task_status: trio.TaskStatus[None]) -> None:
        attempts.append(trio.current_time())
        if len(attempts) == 2:
            raise OSError("node unreachable")  # the first restart fails to start
        task_status.started()
        rec.note("up", "flaky")
        if len(attempts) == 1:
            raise RuntimeError("crash after start")
        await trio.sleep_forever()

    sup = rec.supervisor("root", Strategy.ONE_FOR_ONE, [ChildSpec("flaky", flaky)], max_restarts=5)
    async with trio.open_nursery() as nursery:
        await nursery.start(sup.run)
        await rec.wait_until(lambda: rec.count("up", "flaky") == 2)
        await trio.testing.wait_all_tasks_blocked()  # let the supervisor finish its bookkeeping
        assert [b - a for a, b in itertools.pairwise(attempts)] == pytest.approx([0.1, 0.2])
        assert [(r.kind, r.decision) for r in rec.reports] == [
            ("crash", "restart in 0.10s"),
            ("start_error", "retry in 0.20s"),
        ]
        assert sup.statistics().children[0].state is ChildState.RUNNING
        nursery.cancel_scope.cancel()


async def test_intensity_exceeded_reaches_the_parent(autojump_clock: trio.testing.MockClock) -> None:
    rec = Recorder()

    async def doomed(ctx: ChildContext, *, task_status: trio.TaskStatus[None]) -> None:
        rec.note("start", ctx.path)
        task_status.started()
        raise RuntimeError("dependency is gone")

    inner = rec.supervisor(
        "inner",
        Strategy.ONE_FOR_ONE,
        [rec.spec("sibling"), ChildSpec("doomed", doomed)],
        max_restarts=2,
        period=10,
    )
    root = rec.supervisor("root", Strategy.ONE_FOR_ONE, [inner.as_child()], max_restarts=1, period=60)
    with pytest.raises(SupervisorGaveUp) as info:
        await root.run()
    assert (info.value.name, info.value.restarts, info.value.period) == ("root", 2, 60)

    # The inner supervisor ran twice (started by the root, restarted once), each time restarting
    # its doomed child twice before giving up, and stopping its sibling before raising.
    assert rec.count("start", "root/inner/doomed") == 6
    assert rec.count("start", "sibling") == 2
    assert rec.count("stop", "sibling") == 2
    summary = [(r.kind, r.path, r.exc_type, r.decision) for r in rec.reports]
    inner_run = [
        ("crash", "root/inner/doomed", "RuntimeError", "restart in 0.10s"),
        ("crash", "root/inner/doomed", "RuntimeError", "restart in 0.20s"),
        ("crash", "root/inner/doomed", "RuntimeError", "escalate"),
        ("gave_up", "root/inner", "SupervisorGaveUp", "escalate to parent"),
    ]
    assert summary == [
        *inner_run,
        ("crash", "root/inner", "SupervisorGaveUp", "restart in 0.10s"),
        *inner_run,
        ("crash", "root/inner", "SupervisorGaveUp", "escalate"),
        ("gave_up", "root", "SupervisorGaveUp", "escalate to parent"),
    ]
    gave_up = rec.reports[3]
    assert gave_up.restarts_in_window == 3 and gave_up.max_restarts == 2 and gave_up.period == 10
    assert "last failure: root/inner/doomed: RuntimeError: dependency is gone" in gave_up.message
    assert any("in doomed" in f for f in gave_up.frames)


async def test_intensity_window_slides(autojump_clock: trio.testing.MockClock) -> None:
    rec = Recorder()

    async def crashes_every_6s(ctx: ChildContext, *, task_status: trio.TaskStatus[None]) -> None:
        rec.note("start", "w")
        task_status.started()
        await trio.sleep(6)
        raise RuntimeError("periodic failure")

    sup = rec.supervisor(
        "root", Strategy.ONE_FOR_ONE, [ChildSpec("w", crashes_every_6s)], max_restarts=1, period=5
    )
    async with trio.open_nursery() as nursery:
        await nursery.start(sup.run)
        await rec.wait_until(lambda: rec.count("start", "w") == 6)  # never two restarts within 5 s
        # Five restarts, but never two within 5 s: only the latest is in the window.
        assert sup.statistics().restarts_in_window == 1
        nursery.cancel_scope.cancel()


async def test_nested_paths_and_statistics(autojump_clock: trio.testing.MockClock) -> None:
    rec = Recorder()
    paths: list[str] = []

    async def worker(ctx: ChildContext, *, task_status: trio.TaskStatus[None]) -> None:
        paths.append(ctx.path)
        task_status.started()
        with ctx.busy("job 7"):
            await trio.sleep_forever()

    workers = rec.supervisor("workers", Strategy.ONE_FOR_ONE, [ChildSpec("renewal", worker)])
    root = rec.supervisor("root", Strategy.REST_FOR_ONE, [rec.spec("storage"), workers.as_child()])
    assert root.statistics().running is False
    async with trio.open_nursery() as nursery:
        await nursery.start(root.run)
        await trio.sleep(3)
        assert paths == ["root/workers/renewal"]
        stats = workers.statistics()
        assert stats.path == "root/workers" and stats.running
        [renewal] = stats.children
        assert (renewal.path, renewal.state, renewal.busy_with) == (
            "root/workers/renewal",
            ChildState.RUNNING,
            "job 7",
        )
        assert renewal.uptime == pytest.approx(3)
        assert renewal.heartbeat_age == pytest.approx(3)
        assert [c.name for c in root.statistics().children] == ["storage", "workers"]
        nursery.cancel_scope.cancel()
    assert workers.statistics().running is False


_marker: contextvars.ContextVar[str] = contextvars.ContextVar("marker", default="unset")


async def test_context_variables_set_above_the_tree_reach_every_child(
    autojump_clock: trio.testing.MockClock, bridge: None
) -> None:
    """Children are tasks of their supervisor's nursery: they inherit its context like any task."""
    rec = Recorder()
    seen: dict[str, list[object]] = {}

    def spec(name: str) -> ChildSpec:
        async def child(ctx: ChildContext, *, task_status: trio.TaskStatus[None]) -> None:
            seen[ctx.path] = [_marker.get()]
            _marker.set(f"changed by {ctx.path}")  # a copy: siblings and parents never see it
            # The trio-asyncio loop (asyncpg's host) is found through a context variable too.
            seen[ctx.path].append(await trio_asyncio.aio_as_trio(asyncio.sleep)(0, "asyncio reached"))
            task_status.started()
            await trio.sleep_forever()

        return ChildSpec(name, child)

    workers = rec.supervisor("workers", Strategy.ONE_FOR_ONE, [spec("a"), spec("b")])
    root = rec.supervisor("root", Strategy.REST_FOR_ONE, [spec("storage"), workers.as_child(), spec("last")])
    _marker.set("set above the tree")
    async with trio.open_nursery() as nursery:
        await nursery.start(root.run)
        assert seen == {
            path: ["set above the tree", "asyncio reached"]
            for path in ["root/storage", "root/workers/a", "root/workers/b", "root/last"]
        }
        assert _marker.get() == "set above the tree"
        nursery.cancel_scope.cancel()


async def test_the_supervision_tree_is_trios_task_tree(autojump_clock: trio.testing.MockClock) -> None:
    rec = Recorder()
    renewal = rec.spec("renewal")
    workers = rec.supervisor("workers", Strategy.ONE_FOR_ONE, [renewal, rec.spec("expiry")])
    root = rec.supervisor("root", Strategy.REST_FOR_ONE, [rec.spec("storage"), workers.as_child()])
    stop = trio.Event()
    async with trio.open_nursery() as nursery:
        await nursery.start(functools.partial(run_root, root, stop=stop))
        root_task, tree = supervision_tasks("root")
        paths = [c.path for sup in (root, workers) for c in sup.statistics().children]
        assert paths == ["root/storage", "root/workers", "root/workers/renewal", "root/workers/expiry"]
        for path in paths:
            # Each child is a task named by its path, in the nursery of its supervisor's task.
            parent = parent_task(tree[path])
            assert parent is not None and parent.name == path.rsplit("/", 1)[0]
        # Outside the tree: only run_root itself and its stop waiter, which hold the root.
        assert atlas_tasks_outside(root_task) == ["atlas.supervision._root.run_root", "root: stop request"]

        # A restart puts the new incarnation at the same place, and the old task is gone.
        old = tree["root/workers/renewal"]
        rec.command("renewal", "crash")
        await rec.wait_until(lambda: rec.count("start", "renewal") == 2)
        await trio.testing.wait_all_tasks_blocked()
        _, tree = supervision_tasks("root")
        assert tree["root/workers/renewal"] is not old
        assert [t.name for t in tree.values()].count("root/workers/renewal") == 1
        assert parent_task(tree["root/workers/renewal"]) is tree["root/workers"]
        stop.set()


async def test_run_root_exit_codes(autojump_clock: trio.testing.MockClock) -> None:
    rec = Recorder()

    async def doomed(ctx: ChildContext, *, task_status: trio.TaskStatus[None]) -> None:
        task_status.started()
        raise RuntimeError("always")

    gives_up = rec.supervisor("root", Strategy.ONE_FOR_ONE, [ChildSpec("d", doomed)], max_restarts=0)
    assert await run_root(gives_up) == EXIT_GAVE_UP
    final = rec.reports[-1]
    assert (final.kind, final.path, final.decision) == ("gave_up", "root", f"exit with code {EXIT_GAVE_UP}")

    async def broken(ctx: ChildContext, *, task_status: trio.TaskStatus[None]) -> None:
        raise RuntimeError("cannot start")

    cannot_start = rec.supervisor("root", Strategy.ONE_FOR_ONE, [ChildSpec("b", broken)])
    async with trio.open_nursery() as nursery:
        failed: list[int] = []

        async def main_that_fails(*, task_status: trio.TaskStatus[None]) -> None:
            failed.append(await run_root(cannot_start, task_status=task_status))

        await nursery.start(main_that_fails)  # started() even though the tree never came up
    assert failed == [EXIT_GAVE_UP]

    stop = trio.Event()
    healthy = rec.supervisor("root", Strategy.ONE_FOR_ONE, [rec.spec("a"), rec.spec("b")])
    async with trio.open_nursery() as nursery:
        codes: list[int] = []

        async def main(*, task_status: trio.TaskStatus[None]) -> None:
            codes.append(await run_root(healthy, stop=stop, task_status=task_status))

        await nursery.start(main)
        assert rec.count("start", "b") == 1  # started() came once every child was up
        stop.set()
    assert codes == [EXIT_OK]
    assert _tail(rec.events, len(rec.events) - 2) == [("stop", "b"), ("stop", "a")]


async def test_run_root_bounds_a_stop_held_by_a_child_that_ignores_cancellation_while_starting(
    autojump_clock: trio.testing.MockClock,
) -> None:
    rec = Recorder()
    release = trio.Event()

    async def slow_start(ctx: ChildContext, *, task_status: trio.TaskStatus[None]) -> None:
        with trio.CancelScope(shield=True):
            await release.wait()  # ignores the stop while it starts
        task_status.started()

    root = rec.supervisor(
        "root", Strategy.ONE_FOR_ONE, [rec.spec("a"), ChildSpec("slow", slow_start, shutdown_timeout=2.0)]
    )
    stop = trio.Event()
    exits: list[tuple[int, float]] = []
    codes: list[int] = []

    def hard_exit(code: int) -> None:
        exits.append((code, trio.current_time()))

    async def main() -> None:
        codes.append(await run_root(root, stop=stop, hard_exit=hard_exit))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(main)
        await trio.sleep(1)
        t0 = trio.current_time()
        stop.set()
        try:
            with trio.fail_after(100):
                while not exits:  # noqa: ASYNC110 - the hard exit is a plain call, no event to wait on
                    await trio.sleep(1)
        finally:
            release.set()
    # The bound is every root child's shutdown timeout (5 + 2) plus 5 s.
    assert exits == [(EXIT_GAVE_UP, pytest.approx(t0 + 12))]
    assert codes == [EXIT_GAVE_UP]
    assert rec.count("stop", "a") == 1
