"""The emulator's load driver (``python -m atlas.testing.botapi``): what it offers and what it measures.

The bot here is a few lines of real HTTP (httpx against the emulator's Bot API: ``getUpdates``,
``sendMessage``, ``answerCallbackQuery``), so the driver's clocks see real requests arrive.
"""

from __future__ import annotations

import argparse
from typing import Any

import httpx
import pytest
import trio

from atlas.testing.botapi import DEFAULT_TOKEN, BotApiEmulator
from atlas.testing.botapi.__main__ import LoadDriver, _Step, build_parser

RECIPIENT_BASE = 5_000_000
BUTTON = {"inline_keyboard": [[{"text": "Open", "callback_data": "m:x"}]]}


def _args(**overrides: Any) -> argparse.Namespace:
    argv = ["--users", "20", "--press", "m:x", "--cool-down", "0.2", "--settle", "20"]
    argv += ["--warm-up-rate", "200"]
    args = build_parser().parse_args(argv)
    for name, value in overrides.items():
        setattr(args, name, value)
    return args


async def _bot(url: str, *, delay: float, answering: dict[str, bool]) -> None:
    """Answer every message and press with one message (after ``delay``) while ``answering["on"]``."""
    base = f"{url}/bot{DEFAULT_TOKEN}"
    offset = 0
    async with httpx.AsyncClient(timeout=30) as client:

        async def answer(update: dict[str, Any]) -> None:
            await trio.sleep(delay)
            if "callback_query" in update:
                query = update["callback_query"]
                await client.post(f"{base}/answerCallbackQuery", data={"callback_query_id": query["id"]})
                chat = query["from"]["id"]
            else:
                chat = update["message"]["chat"]["id"]
            await client.post(
                f"{base}/sendMessage", json={"chat_id": chat, "text": "menu", "reply_markup": BUTTON}
            )

        async with trio.open_nursery() as nursery:
            while True:
                reply = await client.post(f"{base}/getUpdates", data={"offset": offset, "timeout": 1})
                for update in reply.json()["result"]:
                    offset = update["update_id"] + 1
                    if answering["on"]:
                        nursery.start_soon(answer, update)


async def _setup(args: argparse.Namespace, nursery: trio.Nursery, recipients: int = 0) -> LoadDriver:
    emulator = BotApiEmulator()
    users = [emulator.add_user(1_000_000 + n, f"U{n}") for n in range(1, args.users + 1)]
    for n in range(1, recipients + 1):
        emulator.add_user(RECIPIENT_BASE + n, "B")
    await nursery.start(emulator.serve)
    return LoadDriver(emulator, users, args)


async def test_first_replies_are_clocked_per_update_and_a_keeping_up_bot_is_sustained() -> None:
    args = _args()
    async with trio.open_nursery() as nursery:
        driver = await _setup(args, nursery)
        nursery.start_soon(lambda: _bot(driver.emulator.url, delay=0.05, answering={"on": True}))
        warm = await driver.warm_up()
        assert warm["settled"] is True and warm["users"] == 20
        step = _Step(0, rate=10.0)
        await driver.run_step(step, 1.0)
        await trio.sleep(1.0)  # the grace period
        result = driver.result(step, set())
        nursery.cancel_scope.cancel()
    assert result["offered"] == 10
    assert set(result["offered_by_kind"]) <= {"/start", "press", "text", "/menu"}
    assert result["handled"] == 10
    # Every update waited at least the bot's 50 ms before its first reply.
    assert min(step.latencies) >= 0.05
    assert result["p50"] is not None and result["p50"] >= 0.05
    assert result["sustained"] is True
    assert result["broadcast_sent"] == 0


async def test_unanswered_updates_count_as_infinitely_late() -> None:
    args = _args()
    answering = {"on": True}
    async with trio.open_nursery() as nursery:
        driver = await _setup(args, nursery)
        nursery.start_soon(lambda: _bot(driver.emulator.url, delay=0.0, answering=answering))
        assert (await driver.warm_up())["settled"] is True
        answering["on"] = False  # the bot goes on polling but answers nothing from now on
        step = _Step(0, rate=10.0)
        await driver.run_step(step, 1.0)
        result = driver.result(step, set())
        assert driver.unanswered() == 10
        nursery.cancel_scope.cancel()
    assert result["offered"] == 10
    assert result["handled"] == 0
    assert result["p50"] is None and result["p99_all_offered"] is None
    assert result["sustained"] is False


@pytest.mark.alone  # 40 real sends inside one second of a 2-second window
async def test_broadcast_sends_are_counted_per_second_and_over_rate_seconds_found() -> None:
    args = _args(users=2)
    async with trio.open_nursery() as nursery:
        driver = await _setup(args, nursery, recipients=40)
        base = f"{driver.emulator.url}/bot{DEFAULT_TOKEN}"
        step = _Step(0, rate=1.0)

        async def burst() -> None:
            await trio.sleep(0.1)
            async with httpx.AsyncClient() as client:
                for n in range(1, 41):  # 40 in well under a second: over a limit of 30
                    chat = RECIPIENT_BASE + n
                    await client.post(f"{base}/sendMessage", data={"chat_id": chat, "text": "news"})

        nursery.start_soon(burst)
        await driver.run_step(step, 2.0)
        result = driver.result(step, {RECIPIENT_BASE + n for n in range(1, 41)})
        nursery.cancel_scope.cancel()
    assert result["broadcast_sent"] == 40
    assert result["broadcast_max_1s"] == 40
    assert result["broadcast_over_rate_seconds"] >= 1
    assert sum(result["broadcast_per_second"]) == 40
