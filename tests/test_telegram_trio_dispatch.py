"""aiogram's dispatcher driven from trio tasks: sync callbacks inline, per-user order under load.

Everything goes through the real path: the Bot API emulator over HTTP, the polling intake, the
:class:`UpdateDispatcher`, aiogram's ``Dispatcher.feed_update`` and the httpx Bot session.
"""

from __future__ import annotations

import datetime as dt
import random
import threading
from collections import defaultdict
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
import trio
from aiogram import Bot, F, Router
from aiogram.filters import and_f, invert_f, or_f
from aiogram.methods import SendMessage
from aiogram.types import Message

from atlas.supervision import CrashReporter, RingSink
from atlas.telegram import (
    DispatchSettings,
    PollingIntake,
    PollingSettings,
    UpdateDispatcher,
    build_dispatcher,
    make_bot,
)
from atlas.telegram.inline_callbacks import call_sync_callbacks_inline, sync_callbacks
from atlas.testing.botapi import BotApiEmulator

FAST = PollingSettings(timeout=1)


def _reporter() -> CrashReporter:
    return CrashReporter([RingSink()], now=lambda: dt.datetime.now(dt.UTC))


@asynccontextmanager
async def running(
    router: Router, **settings: Any
) -> AsyncIterator[tuple[BotApiEmulator, Bot, UpdateDispatcher]]:
    emulator = BotApiEmulator()
    async with trio.open_nursery() as nursery:
        base = await nursery.start(emulator.serve)
        bot = make_bot(emulator.token, base)
        dispatch = UpdateDispatcher(
            dispatcher=build_dispatcher([router]),
            bot=bot,
            reporter=_reporter(),
            settings=DispatchSettings(**settings),
        )
        await nursery.start(dispatch.run)
        await nursery.start(PollingIntake(bot=bot, dispatcher=dispatch, settings=FAST).run)
        try:
            yield emulator, bot, dispatch
        finally:
            nursery.cancel_scope.cancel()
            with trio.CancelScope(shield=True):
                await bot.session.close()


async def test_sync_magic_filters_and_sync_handlers_run_inline_in_the_trio_task(bridge: None) -> None:
    router = Router()
    threads: list[tuple[str, int]] = []
    main = threading.get_ident()

    def on_main_thread(message: Message) -> bool:
        threads.append(("filter", threading.get_ident()))
        return True

    @router.message(F.text == "ping", on_main_thread)
    def ping(message: Message) -> SendMessage:  # a sync handler returning the call to make
        threads.append(("handler", threading.get_ident()))
        trio.lowlevel.current_task()  # raises RuntimeError outside a trio task
        return message.answer("pong")

    @router.message(or_f(F.text == "a", F.text == "b"), invert_f(F.text == "b"), and_f(F.text, F.from_user))
    def letters(message: Message) -> None:
        threads.append(("letters", threading.get_ident()))

    @router.message()
    async def other(message: Message) -> None:
        await message.answer(f"other: {message.text}")

    async with running(router) as (emulator, _bot, dispatch):
        alice = emulator.add_user(1001, "Alice")
        alice.send_text("ping")
        assert (await alice.next_message()).text == "pong"
        alice.send_text("a")
        alice.send_text("b")  # or_f passes, invert_f refuses: the next handler takes it
        assert (await alice.next_message()).text == "other: b"
        with trio.fail_after(5):
            await dispatch.join()
        assert dispatch.statistics().failed == 0
    assert [kind for kind, _ in threads] == ["filter", "handler", "letters"]
    assert {ident for _, ident in threads} == {main}  # no worker thread anywhere


def test_every_sync_callback_of_the_real_routers_is_adapted() -> None:
    from atlas.runtime.telegram_tree import build_routers

    router = Router()

    @router.callback_query(F.data == "x")
    def sync_handler(callback: object) -> None:
        """Never called."""

    root = build_dispatcher([*build_routers(), router])
    assert sync_callbacks(root) == []
    assert call_sync_callbacks_inline(root) == 0  # idempotent: nothing left to adapt

    late = Router()
    late.message(F.text == "late")(sync_handler)
    assert len(sync_callbacks(late)) == 2  # registered outside build_dispatcher: found, not adapted


async def test_a_thousand_interleaved_updates_from_fifty_users_keep_each_users_order(bridge: None) -> None:
    rng = random.Random(9)
    router = Router()
    seen: dict[int, list[int]] = defaultdict(list)
    running_now = 0
    most_at_once = 0

    @router.message()
    async def on_message(message: Message) -> None:
        nonlocal running_now, most_at_once
        assert message.from_user is not None and message.text is not None
        running_now += 1
        most_at_once = max(most_at_once, running_now)
        try:
            for _ in range(rng.randrange(4)):
                await trio.sleep(rng.choice((0, 0, 0.001)))
            seen[message.from_user.id].append(int(message.text))
        finally:
            running_now -= 1

    async with running(router, max_concurrency=16, per_user_queue=50) as (emulator, _bot, dispatch):
        users = [emulator.add_user(5000 + i, f"U{i}") for i in range(50)]
        sent = dict.fromkeys((u.id for u in users), 0)
        order = [u for u in users for _ in range(20)]
        rng.shuffle(order)  # interleaved; each user's own messages still numbered in sending order
        for user in order:
            user.send_text(str(sent[user.id]))
            sent[user.id] += 1
        await emulator.wait_until_delivered(within=60)
        with trio.fail_after(60):
            await dispatch.join()
        stats = dispatch.statistics()
    assert (stats.handled, stats.failed) == (1000, 0)
    assert {user: numbers for user, numbers in seen.items()} == {u.id: list(range(20)) for u in users}
    assert 1 < most_at_once <= 16  # users ran in parallel, within the bound


async def test_the_dispatcher_refuses_to_start_without_the_bridge() -> None:
    dispatch = UpdateDispatcher(
        dispatcher=build_dispatcher([Router()]), bot=make_bot("123:abc"), reporter=_reporter()
    )
    with pytest.raises(RuntimeError, match="needs the trio-asyncio bridge"):
        await dispatch.run()
    assert not dispatch.running
