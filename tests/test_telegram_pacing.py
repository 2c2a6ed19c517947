"""Pacing on the trio clock (MockClock): no window ever holds more arrivals than the limit.

Arrivals are drawn anywhere between a send's start and its answer, with latencies up to ten times
the spacing — the case where spacing starts alone would let arrivals bunch over the limit.
"""

from __future__ import annotations

import inspect
import itertools
import math
import random

import pytest
import trio
import trio.testing

from atlas.telegram.pacing import ChatPacer, Pacer
from atlas.testing.botapi import max_in_window


async def _simulate(
    pacer: Pacer, sends: int, rng: random.Random, max_latency: float
) -> list[tuple[float, float]]:
    """Run ``sends`` sends with random latency; return their (start, arrival) times."""
    seen: list[tuple[float, float]] = []

    async def one(ticket_start: float, ticket: object, latency: float, arrive_at: float) -> None:
        try:
            await trio.sleep(latency)
        finally:
            ticket.done()  # type: ignore[attr-defined]
        seen.append((ticket_start, ticket_start + arrive_at * latency))

    async with trio.open_nursery() as nursery:
        for _ in range(sends):
            ticket = await pacer.acquire()
            # Heavy-tailed latency: mostly fast, sometimes very slow.
            latency = max_latency * rng.random() ** 4
            nursery.start_soon(one, trio.current_time(), ticket, latency, rng.random())
    return seen


@pytest.mark.parametrize("rate", [1.0, 30.0, 200.0])
async def test_arrivals_never_exceed_the_limit_whatever_the_latency(
    rate: float, autojump_clock: trio.testing.MockClock
) -> None:
    pacer = Pacer(rate)
    rng = random.Random(int(rate))
    seen = await _simulate(pacer, sends=int(rate * 6) + 5, rng=rng, max_latency=10 / rate + 0.05)
    arrivals = [arrival for _, arrival in seen]
    assert max_in_window(arrivals, 1.0) <= pacer.limit == math.floor(rate)
    starts = sorted(start for start, _ in seen)
    assert all(b - a >= pacer.interval - 1e-9 for a, b in itertools.pairwise(starts))  # no bursts


async def test_with_fast_answers_the_pacer_keeps_the_full_rate(
    autojump_clock: trio.testing.MockClock,
) -> None:
    pacer = Pacer(30.0)
    began = trio.current_time()
    seen = await _simulate(pacer, sends=300, rng=random.Random(7), max_latency=0.001)
    elapsed = max(start for start, _ in seen) - began
    assert 299 / elapsed == pytest.approx(30.0, rel=0.02)
    assert max_in_window([a for _, a in seen], 1.0) == 30


async def test_a_pause_holds_every_send(autojump_clock: trio.testing.MockClock) -> None:
    pacer = Pacer(10.0)
    pacer.pause_until(trio.current_time() + 5)
    began = trio.current_time()
    ticket = await pacer.acquire()
    ticket.done()
    assert trio.current_time() - began == pytest.approx(5.0)


async def test_a_cancelled_acquire_does_not_block_later_sends(autojump_clock: trio.testing.MockClock) -> None:
    pacer = Pacer(2.0)  # limit 2: the third send waits for the first answer
    first = await pacer.acquire()
    second = await pacer.acquire()
    with trio.move_on_after(0.1):
        await pacer.acquire()  # waits for `first`; cancelled: its ticket is finished for it
    first.done()
    second.done()
    with trio.fail_after(5):
        (await pacer.acquire()).done()
    assert pacer.in_flight == 0


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
