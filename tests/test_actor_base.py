"""The Actor base on trio's MockClock: mailbox, call/cast, ticks, heartbeat, crashes and restarts."""

from __future__ import annotations

import dataclasses
import datetime as dt
import random

import pytest
import trio
import trio.testing

from atlas.actors import Actor, ActorCrashed, CallTimeout, MailboxFull
from atlas.actors.base import InvalidActorSpec
from atlas.storage import DatabaseUnavailable
from atlas.supervision import (
    Backoff,
    ChildSpec,
    CrashReport,
    CrashReporter,
    RingSink,
    Strategy,
    Supervisor,
)

NOW = dt.datetime(2025, 1, 1, tzinfo=dt.UTC)


class Echo(Actor):
    """Replies with what it got; "boom" crashes it; ("slow", s) takes s seconds."""

    def __init__(self, name: str = "echo", **kw: object) -> None:
        super().__init__(name, **kw)  # type: ignore[arg-type]
        self.seen: list[object] = []

    async def handle(self, message: object) -> object:
        self.seen.append(message)
        if message == "boom":
            raise ValueError("poison")
        if isinstance(message, tuple) and message[0] == "slow":
            await trio.sleep(message[1])
        return ("echo", message)


class Ticker(Actor):
    def __init__(self, name: str = "ticker", tick_cost: float = 0.0, **kw: object) -> None:
        super().__init__(name, **kw)  # type: ignore[arg-type]
        self.tick_times: list[float] = []
        self.handled_times: list[float] = []
        self.tick_cost = tick_cost

    async def tick(self) -> None:
        self.tick_times.append(trio.current_time())
        await trio.sleep(self.tick_cost)

    async def handle(self, message: object) -> object:
        self.handled_times.append(trio.current_time())
        await trio.sleep(1)
        return None


class Sink:
    def __init__(self) -> None:
        self.reports: list[CrashReport] = []
        self._changed = trio.Event()

    async def __call__(self, report: CrashReport) -> None:
        self.reports.append(report)
        self._changed.set()
        self._changed = trio.Event()

    async def wait_for(self, count: int) -> None:
        with trio.fail_after(10_000):
            while len(self.reports) < count:
                await self._changed.wait()


def _tree(*specs: ChildSpec, sink: Sink | None = None, budget: bool = False) -> Supervisor:
    sinks = [sink] if sink is not None else [RingSink()]
    reporter = CrashReporter(sinks, now=lambda: NOW, budget_probe=(lambda: (2, 10, 0)) if budget else None)
    return Supervisor(
        "root",
        Strategy.ONE_FOR_ONE,
        list(specs),
        max_restarts=10,
        backoff=Backoff(initial=0.5, jitter=0.0),
        reporter=reporter,
        rng=random.Random(0),
    )


async def test_cast_call_and_statistics(autojump_clock: trio.testing.MockClock) -> None:
    echo = Echo(mailbox_size=5)
    async with trio.open_nursery() as nursery:
        await nursery.start(_tree(echo.child_spec()).run)
        assert await echo.call("hello", timeout=1) == ("echo", "hello")
        await echo.cast("a")
        echo.cast_nowait("b")
        assert await echo.call("c", timeout=1) == ("echo", "c")  # one at a time, in order
        assert echo.seen == ["hello", "a", "b", "c"]
        stats = echo.statistics()
        assert (stats.name, stats.depth, stats.capacity, stats.handled, stats.running) == (
            "echo",
            0,
            5,
            4,
            True,
        )
        assert stats.last_heartbeat == trio.current_time()
        nursery.cancel_scope.cancel()
    assert echo.statistics().running is False


async def test_cast_nowait_on_a_full_mailbox_raises_mailbox_full() -> None:
    echo = Echo(mailbox_size=2)  # not running: nothing drains the mailbox
    echo.cast_nowait(1)
    echo.cast_nowait(2)
    with pytest.raises(MailboxFull) as info:
        echo.cast_nowait(3)
    assert isinstance(info.value, trio.WouldBlock)
    assert (info.value.actor, info.value.capacity) == ("echo", 2)
    assert echo.statistics().depth == 2
    with trio.move_on_after(0.01) as scope:
        await echo.cast(3)  # waits for room
    assert scope.cancelled_caught
    assert echo.statistics().depth == 2  # a cancelled cast sent nothing


async def test_call_timeout_leaves_the_actor_working(autojump_clock: trio.testing.MockClock) -> None:
    echo = Echo()
    async with trio.open_nursery() as nursery:
        await nursery.start(_tree(echo.child_spec()).run)
        with pytest.raises(CallTimeout) as info:
            await echo.call(("slow", 10), timeout=1)
        assert isinstance(info.value, trio.TooSlowError)
        assert (info.value.actor, info.value.timeout) == ("echo", 1)
        assert await echo.call("next", timeout=20) == ("echo", "next")  # late reply was dropped
        nursery.cancel_scope.cancel()


async def test_a_cancelled_caller_does_not_break_the_actor(autojump_clock: trio.testing.MockClock) -> None:
    echo = Echo()
    async with trio.open_nursery() as nursery:
        await nursery.start(_tree(echo.child_spec()).run)
        with trio.move_on_after(2):
            await echo.call(("slow", 5), timeout=100)
        assert await echo.call("after", timeout=10) == ("echo", "after")
        assert echo.statistics().crashes == 0
        nursery.cancel_scope.cancel()


async def test_a_crash_during_a_call_raises_actor_crashed(autojump_clock: trio.testing.MockClock) -> None:
    echo = Echo()
    async with trio.open_nursery() as nursery:
        await nursery.start(_tree(echo.child_spec()).run)
        with pytest.raises(ActorCrashed) as info:
            await echo.call("boom", timeout=5)
        assert isinstance(info.value.__cause__, ValueError)
        assert (info.value.actor, info.value.message) == ("echo", "'boom'")
        assert await echo.call("after", timeout=5) == ("echo", "after")  # restarted
        assert echo.seen == ["boom", "after"]  # the poison message was dropped, not retried
        assert echo.statistics().crashes == 1
        nursery.cancel_scope.cancel()


async def test_the_mailbox_survives_a_crash_and_the_report_names_the_message(
    autojump_clock: trio.testing.MockClock,
) -> None:
    sink = Sink()
    echo = Echo()
    for message in ("boom", "a", "b"):
        echo.cast_nowait(message)  # queued before the actor even runs
    async with trio.open_nursery() as nursery:
        await nursery.start(_tree(echo.child_spec(), sink=sink, budget=True).run)
        await sink.wait_for(1)
        assert await echo.call("c", timeout=5) == ("echo", "c")
        assert echo.seen == ["boom", "a", "b", "c"]
        nursery.cancel_scope.cancel()
    [report] = sink.reports
    assert (report.kind, report.path, report.exc_type, report.message) == (
        "crash",
        "root/echo",
        "ValueError",
        "poison",
    )
    assert report.handling == "'boom'"
    assert report.mailbox_depth == 2  # "a" and "b" waited for the next incarnation
    assert report.decision == "restart in 0.50s"
    assert report.budget == (2, 10, 0)
    assert any("in handle" in frame for frame in report.frames)
    assert all(getattr(report, f.name) is not None for f in dataclasses.fields(report))


async def test_first_tick_jitter_is_bounded_and_seeded(autojump_clock: trio.testing.MockClock) -> None:
    async def first_tick_delay(seed: int) -> float:
        ticked = trio.Event()

        class Once(Ticker):
            async def tick(self) -> None:
                await super().tick()
                ticked.set()

        ticker = Once(period=60, first_tick=(5.0, 15.0), rng=random.Random(seed))
        async with trio.open_nursery() as nursery:
            t0 = trio.current_time()
            await nursery.start(_tree(ticker.child_spec()).run)
            await ticked.wait()
            nursery.cancel_scope.cancel()
        return ticker.tick_times[0] - t0

    delays = [await first_tick_delay(seed) for seed in (1, 1, 2, 3, 4)]
    assert all(5.0 <= d <= 15.0 for d in delays)
    assert delays[0] == pytest.approx(delays[1], abs=1e-9)  # same seed, same delay
    assert len(set(delays[1:])) > 1
    expected = random.Random(1).uniform(5.0, 15.0)
    assert delays[0] == pytest.approx(expected)


async def test_ticks_repeat_at_the_period_and_skip_missed_ones(
    autojump_clock: trio.testing.MockClock,
) -> None:
    regular = Ticker("regular", period=10)
    slow = Ticker("slow", tick_cost=25, period=10)  # a tick longer than two periods
    async with trio.open_nursery() as nursery:
        t0 = trio.current_time()
        await nursery.start(_tree(regular.child_spec(), slow.child_spec()).run)
        await trio.sleep(45)
        nursery.cancel_scope.cancel()
    assert [t - t0 for t in regular.tick_times] == pytest.approx([0, 10, 20, 30, 40])
    assert [t - t0 for t in slow.tick_times] == pytest.approx([0, 30])  # 10 and 20 were skipped
    assert regular.statistics().ticks == 5


async def test_ticks_are_not_starved_by_a_busy_mailbox(autojump_clock: trio.testing.MockClock) -> None:
    ticker = Ticker(period=5, mailbox_size=1000)
    for i in range(100):
        ticker.cast_nowait(i)  # 100 s of work queued before it even starts
    async with trio.open_nursery() as nursery:
        t0 = trio.current_time()
        await nursery.start(_tree(ticker.child_spec()).run)
        await trio.sleep(30)
        nursery.cancel_scope.cancel()
    # Each message takes 1 s; a due tick goes before the next message.
    assert [t - t0 for t in ticker.tick_times] == pytest.approx([0, 5, 10, 15, 20, 25, 30])
    assert len(ticker.handled_times) >= 25


async def test_a_stalled_handler_is_restarted_and_reported(autojump_clock: trio.testing.MockClock) -> None:
    sink = Sink()
    echo = Echo()
    async with trio.open_nursery() as nursery:
        await nursery.start(_tree(echo.child_spec(stall_after=3.0), sink=sink).run)
        echo.cast_nowait(("slow", 1000))
        await sink.wait_for(1)
        [report] = sink.reports
        assert (report.kind, report.handling) == ("stall", "('slow', 1000)")
        assert await echo.call("alive", timeout=10) == ("echo", "alive")
        nursery.cancel_scope.cancel()


async def test_heartbeats_keep_a_long_tick_from_stalling(autojump_clock: trio.testing.MockClock) -> None:
    class Batches(Actor):
        batches = 0

        async def tick(self) -> None:
            for _ in range(20):
                await trio.sleep(1)  # one bounded batch
                self.batches += 1
                self.heartbeat()

    sink = Sink()
    actor = Batches("batches", period=100)
    async with trio.open_nursery() as nursery:
        await nursery.start(_tree(actor.child_spec(stall_after=2.0), sink=sink).run)
        await trio.sleep(30)
        nursery.cancel_scope.cancel()
    assert actor.batches == 20
    assert sink.reports == []


async def test_a_crashing_tick_is_not_retried_at_once(autojump_clock: trio.testing.MockClock) -> None:
    class Flaky(Actor):
        times: list[float]

        async def tick(self) -> None:
            self.times.append(trio.current_time())
            if len(self.times) == 1:
                raise RuntimeError("first tick fails")

    actor = Flaky("flaky", period=10)
    actor.times = []
    async with trio.open_nursery() as nursery:
        t0 = trio.current_time()
        await nursery.start(_tree(actor.child_spec()).run)
        await trio.sleep(25)
        nursery.cancel_scope.cancel()
    assert [t - t0 for t in actor.times] == pytest.approx([0, 10, 20])


async def test_an_actor_without_handle_crashes_on_a_message(autojump_clock: trio.testing.MockClock) -> None:
    actor = Actor("plain")
    async with trio.open_nursery() as nursery:
        await nursery.start(_tree(actor.child_spec()).run)
        with pytest.raises(ActorCrashed) as info:
            await actor.call("anything", timeout=1)
        assert isinstance(info.value.__cause__, TypeError)
        nursery.cancel_scope.cancel()


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"name": ""}, "name"),
        ({"name": "a/b"}, "name"),
        ({"mailbox_size": 0}, "mailbox_size"),
        ({"mailbox_size": True}, "mailbox_size"),
        ({"period": 0}, "period"),
        ({"period": float("inf")}, "period"),
        ({"first_tick": (5.0, 1.0)}, "first_tick"),
        ({"first_tick": (-1.0, 1.0)}, "first_tick"),
        ({"first_tick": [0.0, 1.0]}, "first_tick"),
        ({"rng": 7}, "rng"),
    ],
)
def test_actor_arguments_are_checked(kwargs: dict[str, object], field: str) -> None:
    args: dict[str, object] = {"name": "a", **kwargs}
    name = args.pop("name")
    with pytest.raises(InvalidActorSpec) as info:
        Actor(name, **args)  # type: ignore[arg-type]
    assert info.value.field == field


class Outage(Actor):
    """Its ticks and messages meet a database that is down for the first ``down_for`` attempts."""

    def __init__(self, down_for: int, in_a_nursery: bool) -> None:
        super().__init__("renewal", period=60.0, first_tick=(1.0, 1.0), rng=random.Random(4))
        self.down_for = down_for
        self.in_a_nursery = in_a_nursery
        self.attempts: list[float] = []

    async def tick(self) -> None:
        self.attempts.append(trio.current_time())
        if self.in_a_nursery:  # the error arrives in an exception group, as from a batch of tasks
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._query)
        else:
            await self._query()

    async def _query(self) -> None:
        if len(self.attempts) <= self.down_for:
            raise DatabaseUnavailable("cannot connect to PostgreSQL: connection refused")

    async def handle(self, message: object) -> object:
        if len(self.attempts) <= self.down_for:
            raise DatabaseUnavailable("the connection pool is closed")
        return "done"


@pytest.mark.parametrize("in_a_nursery", [False, True])
async def test_an_actor_waits_for_the_database_instead_of_crashing(
    autojump_clock: trio.testing.MockClock, in_a_nursery: bool
) -> None:
    ring = RingSink()
    actor = Outage(down_for=4, in_a_nursery=in_a_nursery)
    sup = Supervisor(
        "workers",
        Strategy.ONE_FOR_ONE,
        [actor.child_spec(stall_after=2.0)],
        max_restarts=1,  # a crash per attempt would make it give up at the second
        period=60,
        reporter=CrashReporter([ring], now=lambda: NOW),
        rng=random.Random(1),
    )
    async with trio.open_nursery() as nursery:
        t0 = trio.current_time()
        await nursery.start(sup.run)
        await trio.sleep(1.5)  # the first tick (t0 + 1) met the outage
        [child] = sup.statistics().children
        assert (child.state.value, child.waiting_for) == ("running", "database")
        with pytest.raises(DatabaseUnavailable):
            await actor.call("renew 7", timeout=5)  # a caller is told, the actor lives on
        await trio.sleep(60)
        [child] = sup.statistics().children
        assert child.waiting_for is None
        assert child.restarts == 0
        nursery.cancel_scope.cancel()
    assert ring.latest() == []  # no crash, no stall, no give-up
    gaps = [b - a for a, b in zip(actor.attempts, actor.attempts[1:], strict=False)]
    # Backed off (0.5 s doubling, jittered ±10%), not at the 60 s period: then the fifth try worked.
    assert len(actor.attempts) >= 5 and actor.attempts[0] == pytest.approx(t0 + 1)
    assert all(gap < 20 for gap in gaps[:3]) and gaps[1] > gaps[0]
    assert actor.statistics().ticks >= 1
