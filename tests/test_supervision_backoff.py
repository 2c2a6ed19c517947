"""Backoff and intensity: the delay sequence, its jitter, its reset, and the sliding window."""

from __future__ import annotations

import datetime as dt
import itertools
import random

import pytest
import trio
import trio.testing

from atlas.supervision import (
    Backoff,
    ChildContext,
    ChildSpec,
    CrashReporter,
    RingSink,
    Strategy,
    Supervisor,
)
from atlas.supervision._intensity import RestartIntensity

NOW = dt.datetime(2025, 1, 1, tzinfo=dt.UTC)


def test_delay_sequence_without_jitter_is_exact() -> None:
    backoff = Backoff(initial=0.1, factor=2.0, maximum=1.0, jitter=0.0)
    rng = random.Random(0)
    assert [backoff.delay(n, rng) for n in range(1, 7)] == [0.1, 0.2, 0.4, 0.8, 1.0, 1.0]
    assert backoff.delay(10_000, rng) == 1.0  # no overflow on absurd counts


def test_jitter_stays_in_bounds_and_follows_the_seed() -> None:
    backoff = Backoff(initial=1.0, factor=3.0, maximum=100.0, jitter=0.25)
    first = [backoff.delay(n, random.Random(42)) for n in range(1, 6)]
    again = [backoff.delay(n, random.Random(42)) for n in range(1, 6)]
    other = [backoff.delay(n, random.Random(43)) for n in range(1, 6)]
    assert first == again
    assert first != other
    for n, delay in enumerate(first, start=1):
        base = backoff.base_delay(n)
        assert base * 0.75 <= delay <= base * 1.25
    draws = [backoff.delay(1, random.Random(seed)) for seed in range(200)]
    assert min(draws) < 0.8 and max(draws) > 1.2  # the whole band is used, not one point


async def _start_times(backoff: Backoff, seed: int, crashes: int) -> list[float]:
    """Run a child that crashes at once, ``crashes`` times; return the times it was started."""
    starts: list[float] = []
    done = trio.Event()

    async def crasher(ctx: ChildContext, *, task_status: trio.TaskStatus[None]) -> None:
        starts.append(trio.current_time())
        task_status.started()
        if len(starts) > crashes:
            done.set()
            await trio.sleep_forever()
        raise RuntimeError("crash")

    sup = Supervisor(
        "root",
        Strategy.ONE_FOR_ONE,
        [ChildSpec("c", crasher)],
        max_restarts=100,
        period=1000,
        backoff=backoff,
        reporter=CrashReporter([RingSink()], now=lambda: NOW),
        rng=random.Random(seed),
    )
    async with trio.open_nursery() as nursery:
        await nursery.start(sup.run)
        await done.wait()
        nursery.cancel_scope.cancel()
    return starts


def _gaps(times: list[float]) -> list[float]:
    return [b - a for a, b in itertools.pairwise(times)]


async def test_restarts_wait_the_configured_delays(autojump_clock: trio.testing.MockClock) -> None:
    backoff = Backoff(initial=0.5, factor=3.0, maximum=10.0, jitter=0.0)
    starts = await _start_times(backoff, seed=1, crashes=5)
    assert _gaps(starts) == pytest.approx([0.5, 1.5, 4.5, 10.0, 10.0])


async def test_jittered_restarts_are_bounded_and_reproducible(autojump_clock: trio.testing.MockClock) -> None:
    backoff = Backoff(initial=1.0, factor=2.0, maximum=8.0, jitter=0.2)
    gaps = _gaps(await _start_times(backoff, seed=7, crashes=5))
    again = _gaps(await _start_times(backoff, seed=7, crashes=5))
    assert gaps == pytest.approx(again)
    for n, gap in enumerate(gaps, start=1):
        base = backoff.base_delay(n)
        assert base * 0.8 - 1e-9 <= gap <= base * 1.2 + 1e-9
    assert gaps != pytest.approx([backoff.base_delay(n) for n in range(1, 6)])


async def test_consecutive_count_resets_after_a_period_up(autojump_clock: trio.testing.MockClock) -> None:
    """Three quick crashes grow the delay; a crash after > period up starts again from initial."""
    lifetimes = [0.0, 0.0, 0.0, 11.0, 0.0]
    starts: list[float] = []
    done = trio.Event()

    async def child(ctx: ChildContext, *, task_status: trio.TaskStatus[None]) -> None:
        starts.append(trio.current_time())
        task_status.started()
        if len(starts) > len(lifetimes):
            done.set()
            await trio.sleep_forever()
        await trio.sleep(lifetimes[len(starts) - 1])
        raise RuntimeError("crash")

    ring = RingSink()
    sup = Supervisor(
        "root",
        Strategy.ONE_FOR_ONE,
        [ChildSpec("c", child)],
        max_restarts=10,
        period=10,
        backoff=Backoff(initial=1.0, factor=2.0, maximum=60.0, jitter=0.0),
        reporter=CrashReporter([ring], now=lambda: NOW),
    )
    async with trio.open_nursery() as nursery:
        await nursery.start(sup.run)
        await done.wait()
        nursery.cancel_scope.cancel()
    decisions = [r.decision for r in reversed(ring.latest())]
    assert decisions == [
        "restart in 1.00s",
        "restart in 2.00s",
        "restart in 4.00s",
        "restart in 1.00s",  # it had been up 11 s > period 10 s
        "restart in 2.00s",
    ]


def test_intensity_is_a_sliding_window() -> None:
    window = RestartIntensity(max_restarts=2, period=10.0)
    assert window.record(0.0)
    assert window.record(5.0)
    assert not window.record(9.0)  # three within 10 s
    fresh = RestartIntensity(max_restarts=2, period=10.0)
    assert fresh.record(0.0) and fresh.record(5.0)
    assert fresh.record(10.0)  # the one at 0 has left the window
    assert fresh.count(10.0) == 2
    assert fresh.count(100.0) == 0
    zero = RestartIntensity(max_restarts=0, period=5.0)
    assert not zero.record(0.0)
