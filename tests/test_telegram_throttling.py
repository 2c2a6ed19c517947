"""A handler's reply refused by Telegram's flood control (429) waits out ``retry_after`` and goes
again, instead of failing the update: the whole tree against a Bot API emulator that enforces 1
message/s per chat, as Telegram does, and a /start that answers with two messages in a row."""

from __future__ import annotations

import trio
import trio.testing
from aiogram.exceptions import TelegramRetryAfter
from aiogram.methods import SendMessage

from atlas.telegram.throttling import WaitOutThrottling, replies_wait_out_throttling
from atlas.testing.botapi import BotApiEmulator
from tests._running_tree import running_tree


async def test_two_replies_in_a_row_both_arrive_under_the_per_chat_limit(fresh_database: str) -> None:
    emulator = BotApiEmulator(enforce_limits=True)
    async with running_tree(fresh_database, emulator=emulator) as tree:
        user = emulator.add_user(601, "Ann", language_code="en")
        user.send_command("/start")
        greeting = await user.next_message(within=20)
        menu = await user.next_message(within=20)  # the second reply: refused once, then sent
        assert not greeting.inline_buttons() and menu.inline_buttons()
        assert emulator.served_429 >= 1  # the limit was really hit
        dispatch_crashes = [r for r in tree.services.ring.latest() if "dispatch" in r.path]
        assert dispatch_crashes == []
        assert emulator.max_per_chat_rate(accepted_only=True) == 1


class _Refusing:
    """A make_request that refuses the first ``times`` calls with 429, then answers."""

    def __init__(self, times: int, retry_after: int = 1) -> None:
        self.times, self.retry_after, self.calls = times, retry_after, 0

    async def __call__(self, bot: object, method: SendMessage) -> str:
        self.calls += 1
        if self.calls <= self.times:
            raise TelegramRetryAfter(method=method, message="Too Many Requests", retry_after=self.retry_after)
        return "sent"


async def test_only_calls_inside_the_block_wait_and_only_within_the_bounds(
    autojump_clock: trio.testing.MockClock,
) -> None:
    method = SendMessage(chat_id=1, text="hi")
    middleware = WaitOutThrottling(attempts=3, max_wait=5)
    outside = _Refusing(1)
    try:
        await middleware(outside, None, method)  # type: ignore[arg-type]
        raise AssertionError("a 429 outside the block must propagate (the outbox sender's own)")
    except TelegramRetryAfter:
        assert outside.calls == 1
    with replies_wait_out_throttling():
        twice = _Refusing(2)
        began = trio.current_time()
        assert await middleware(twice, None, method) == "sent"  # type: ignore[arg-type]
        assert twice.calls == 3 and trio.current_time() - began == 2
        too_many = _Refusing(3)
        try:
            await middleware(too_many, None, method)  # type: ignore[arg-type]
            raise AssertionError("past `attempts`, the 429 must propagate")
        except TelegramRetryAfter:
            assert too_many.calls == 3
        too_long = _Refusing(1, retry_after=6)
        try:
            await middleware(too_long, None, method)  # type: ignore[arg-type]
            raise AssertionError("a wait past `max_wait` must not be taken")
        except TelegramRetryAfter:
            assert too_long.calls == 1
