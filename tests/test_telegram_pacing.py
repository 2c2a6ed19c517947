"""Pacing on the trio clock (MockClock): the global rate is over starts and ignores answer latency.

The global pacer used to wait for answers, which capped it at ``30 / (1 + latency)``; these tests
pin the replacement: starts ``1/rate`` apart, never more than ``floor(rate)`` in any second, the
same rate with slow answers as with fast ones, and pauses that hold every start.
"""

from __future__ import annotations

import inspect
import itertools
import math
import random

import pytest
import trio
import trio.testing

from atlas.telegram import pacing
from atlas.telegram.pacing import ChatPacer, Pacer
from atlas.testing.botapi import max_in_window


async def _simulate(pacer: Pacer, sends: int, rng: random.Random, max_latency: float) -> list[float]:
    """Run ``sends`` sends with random (heavy-tailed) latency, each in its own task; return the starts."""
    starts: list[float] = []

    async def one(latency: float) -> None:
        await pacer.acquire()
        starts.append(trio.current_time())
        await trio.sleep(latency)  # the answer: the global pacer does not wait for it

    async with trio.open_nursery() as nursery:
        for _ in range(sends):
            nursery.start_soon(one, max_latency * rng.random() ** 4)
    return starts


@pytest.mark.parametrize("rate", [1.0, 2.5, 30.0, 200.0])
async def test_starts_never_exceed_the_limit_and_are_evenly_spaced(
    rate: float, autojump_clock: trio.testing.MockClock
) -> None:
    pacer = Pacer(rate)
    starts = await _simulate(pacer, sends=int(rate * 6) + 5, rng=random.Random(int(rate)), max_latency=2.0)
    assert max_in_window(starts, 1.0) == pacer.limit == math.floor(rate)
    assert all(b - a >= pacer.interval - 1e-9 for a, b in itertools.pairwise(sorted(starts)))  # no bursts


@pytest.mark.parametrize("latency", [0.001, 0.3, 2.0])
async def test_the_rate_does_not_depend_on_answer_latency(
    latency: float, autojump_clock: trio.testing.MockClock
) -> None:
    pacer = Pacer(30.0)
    began = trio.current_time()
    starts = await _simulate(pacer, sends=1800, rng=random.Random(7), max_latency=latency)
    per_second = [sum(1 for t in starts if began + k <= t < began + k + 1) for k in range(60)]
    assert per_second == [30] * 60  # 30 in every one of 60 seconds, never 31
    assert max_in_window(starts, 1.0) == 30


async def test_a_pause_holds_every_send_even_one_already_waiting(
    autojump_clock: trio.testing.MockClock,
) -> None:
    pacer = Pacer(10.0)
    pacer.pause_until(trio.current_time() + 5)
    began = trio.current_time()
    await pacer.acquire()
    assert trio.current_time() - began == pytest.approx(5.0)

    async def pause_later() -> None:
        await trio.sleep(0.05)
        pacer.pause_until(trio.current_time() + 3)  # a 429 while the next send waits its slot

    async with trio.open_nursery() as nursery:
        nursery.start_soon(pause_later)
        waited_from = trio.current_time()
        await pacer.acquire()
    assert trio.current_time() - waited_from == pytest.approx(3.05)


async def test_a_cancelled_acquire_takes_no_slot(autojump_clock: trio.testing.MockClock) -> None:
    pacer = Pacer(2.0)  # limit 2: the third start waits for the first to leave the window
    await pacer.acquire()
    await pacer.acquire()
    with trio.move_on_after(0.1):
        await pacer.acquire()
    assert pacer.granted == 2
    with trio.fail_after(5):
        await pacer.acquire()
    assert pacer.granted == 3


async def test_chat_pacer_counts_from_the_answer_and_forgets_idle_chats(
    autojump_clock: trio.testing.MockClock,
) -> None:
    chats = ChatPacer(1.0, prune_above=4)
    now = trio.current_time()
    assert chats.ready_at(1) == -math.inf
    chats.note_answered(1, now + 0.3)
    assert chats.ready_at(1) == pytest.approx(now + 1.3)
    chats.pause_until(1, now + 10)
    chats.note_answered(1, now + 0.5)  # a pause is never shortened
    assert chats.ready_at(1) == pytest.approx(now + 10)
    chats.note_answered(2, now)
    chats.note_answered(3, now)
    await trio.sleep(2)
    chats.note_answered(4, trio.current_time())  # the fourth entry prunes the stale ones
    assert len(chats) == 2  # chat 1 (paused) and chat 4
    with pytest.raises(ValueError, match="per_chat_rate"):
        ChatPacer(0)
    with pytest.raises(ValueError, match="rate"):
        Pacer(math.inf)


def test_public_names_of_the_telegram_package_are_reexported() -> None:
    import atlas.telegram as telegram

    # Submodules show up as attributes once anything imported them; they are not re-exports.
    exported = [name for name in dir(telegram) if not name.startswith("_")]
    public = [name for name in exported if not inspect.ismodule(getattr(telegram, name))]
    assert {"UpdateDispatcher", "PollingIntake", "telegram_webhook_route", "Translator", "t"} <= set(public)
    for name in public:
        assert getattr(telegram, name).__module__.startswith("atlas.telegram."), name


async def _bunched_writes(pacer: Pacer, sends: int, *, gate: bool) -> list[float]:
    """Sends whose writes lag their starts by a random, heavy-tailed delay (a busy scheduler).

    The delays are the same with and without the gate (one seeded generator per call), so the two
    runs differ only by :meth:`Pacer.before_write`.
    """
    rng = random.Random(11)
    writes: list[float] = []

    async def one(lag: float) -> None:
        await pacer.acquire()
        await trio.sleep(lag)  # building the request, waiting for a pooled connection, a busy loop
        if gate:
            await pacer.before_write()
        writes.append(trio.current_time())
        await trio.sleep(0.3)  # the answer

    async with trio.open_nursery() as nursery:
        for _ in range(sends):
            nursery.start_soon(one, 0.4 * rng.random() ** 6)
    return writes


async def test_writes_that_lag_their_starts_never_bunch_over_the_limit(
    autojump_clock: trio.testing.MockClock,
) -> None:
    ungated = await _bunched_writes(Pacer(30.0), 1800, gate=False)
    assert max_in_window(ungated, 1.0) > 30  # the bunching the gate is for: starts alone let it through

    pacer = Pacer(30.0)
    began = trio.current_time()
    writes = await _bunched_writes(pacer, 1800, gate=True)
    assert max_in_window(writes, 1.0) == 30 and pacer.writes == 1800
    assert max(writes) - began <= 1800 / 29.5  # the gate costs (almost) nothing of the rate


async def test_a_write_margin_widens_the_window_and_a_cancelled_write_counts_nothing(
    autojump_clock: trio.testing.MockClock,
) -> None:
    pacer = Pacer(2.0, write_margin=0.5)
    began = trio.current_time()
    await pacer.before_write()
    await pacer.before_write()
    with trio.move_on_after(1.2):  # the window of writes is 1.5 s: still full at 1.2 s
        await pacer.before_write()
    assert pacer.writes == 2
    await pacer.before_write()
    assert trio.current_time() - began == pytest.approx(1.5)
    with pytest.raises(ValueError, match="write_margin"):
        Pacer(30.0, write_margin=1.0)


# -- the write gate counts each send up to its estimated arrival (issue 13) -----------------------

STALLS = ((5.0, 6.5), (12.0, 12.8))
"""Receiver stalls (seconds after the start): requests written meanwhile are read when it wakes."""


def _stalled_arrival(written: float, began: float) -> float:
    """When a receiver that stalls during :data:`STALLS` stamps a request written at ``written``."""
    for start, end in STALLS:
        if began + start <= written < began + end:
            return began + end
    return written + 0.002


async def _through_a_stalling_receiver(pacer: Pacer, sends: int, *, report_answers: bool) -> list[float]:
    """Send through the pacer to a receiver that stalls; return the arrival stamps it took."""
    began = trio.current_time()
    arrivals: list[float] = []

    async def one() -> None:
        await pacer.acquire()
        slot = pacer.write_slot()
        try:
            if report_answers:
                await slot.before_write()
            else:
                await pacer.before_write()  # counted at the write, as the previous gate did
            arrival = _stalled_arrival(trio.current_time(), began)
            await trio.sleep_until(arrival)
            arrivals.append(trio.current_time())
            await trio.sleep(0.003)  # the answer
        finally:
            slot.answered()

    async with trio.open_nursery() as nursery:
        for _ in range(sends):
            nursery.start_soon(one)
    return arrivals


async def test_sends_counted_up_to_their_answers_never_bunch_at_a_receiver_that_stalls(
    autojump_clock: trio.testing.MockClock,
) -> None:
    at_writes = await _through_a_stalling_receiver(Pacer(30.0), 600, report_answers=False)
    assert max_in_window(at_writes, 1.0) > 40  # what the 46 of issue 13 were: a stall's backlog at once

    pacer = Pacer(30.0)
    arrivals = await _through_a_stalling_receiver(pacer, 600, report_answers=True)
    assert max_in_window(arrivals, 1.0) == 30 and pacer.in_air == 0
    assert max(arrivals) - min(arrivals) <= 600 / 30 + 3.0  # a stall costs about its own length


async def test_a_steady_answer_latency_costs_no_rate(autojump_clock: trio.testing.MockClock) -> None:
    """300 ms answers (a far server): every round trip is the fastest, so sends count at their
    writes and 30 go in every second — where counting at the answers gave 30 / 1.3 = 23."""
    pacer = Pacer(30.0)
    began = trio.current_time()
    writes: list[float] = []

    async def one() -> None:
        await pacer.acquire()
        slot = pacer.write_slot()
        try:
            await slot.before_write()
            writes.append(trio.current_time())
            await trio.sleep(0.3)
        finally:
            slot.answered()

    async with trio.open_nursery() as nursery:
        for _ in range(1800):
            nursery.start_soon(one)
    per_second = [sum(1 for t in writes if began + k <= t < began + k + 1) for k in range(60)]
    assert per_second == [30] * 60


async def test_a_send_in_the_air_holds_its_place_until_answered(
    autojump_clock: trio.testing.MockClock,
) -> None:
    pacer = Pacer(2.0)
    first, second = pacer.write_slot(), pacer.write_slot()
    await first.before_write()
    await second.before_write()
    with trio.move_on_after(5.0):  # both still in the air: they may arrive at any moment
        await pacer.before_write()
    assert pacer.writes == 2 and pacer.in_air == 2
    first.answered()
    first.answered()  # idempotent
    began = trio.current_time()
    await pacer.before_write()  # the fastest round trip is this one's: it counts at its write, long gone
    assert trio.current_time() == began and pacer.in_air == 1


async def _through_a_slow_spell(pacer: Pacer, sends: int) -> list[float]:
    """A receiver that, from 3 s to 9 s, reads every request 0.3-0.7 s late (seeded), else at once."""
    rng = random.Random(3)
    began = trio.current_time()
    arrivals: list[float] = []

    async def one() -> None:
        await pacer.acquire()
        slot = pacer.write_slot()
        try:
            await slot.before_write()
            written = trio.current_time()
            late = 0.3 + 0.4 * rng.random() if 3.0 <= written - began < 9.0 else 0.002
            await trio.sleep(late)
            arrivals.append(trio.current_time())
            await trio.sleep(0.003)
        finally:
            slot.answered()

    async with trio.open_nursery() as nursery:
        for _ in range(sends):
            nursery.start_soon(one)
    return arrivals


async def test_a_slow_spell_at_the_receiver_does_not_raise_the_fastest_round_trip(
    autojump_clock: trio.testing.MockClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(pacing, "ROUND_TRIP_MEMORY", 2.0)  # a couple of seconds, as first written
    short_memory = await _through_a_slow_spell(Pacer(30.0), 450)
    assert max_in_window(short_memory, 1.0) > 30  # the fastest rose in the spell: estimates too early

    monkeypatch.undo()
    arrivals = await _through_a_slow_spell(Pacer(30.0), 450)
    assert max_in_window(arrivals, 1.0) <= 30
