"""Replies that wait out Telegram's flood control instead of being lost.

Telegram answers 429 with ``retry_after`` when a bot goes over about 30 messages/s in all or
1 message/s in one chat; the request was refused, not carried out, so sending it again after the
wait is safe. The outbox sender has its own answer to 429 (its pacer pauses and the row is
requeued), but a handler's reply had none: aiogram raised ``TelegramRetryAfter``, the update failed
with a crash report, and the user got no answer — most often the second of two replies in a row,
or a reply right after a notice to the same chat, or any reply while the elected sender spends the
bot's whole rate.

:class:`WaitOutThrottling` is a request middleware of the Bot's session: inside
:func:`replies_wait_out_throttling` (the dispatcher wraps each update's handling in it) a refused
call waits ``retry_after`` and is sent again, up to ``attempts`` tries and ``max_wait`` seconds in
all; past that, or outside the block, the error propagates as before. Waiting is what the user's
own update task does; other users' updates go on meanwhile, and no database connection can be
held across the wait (contract 1).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import TYPE_CHECKING

import trio
from aiogram.client.session.middlewares.base import BaseRequestMiddleware, NextRequestMiddlewareType
from aiogram.exceptions import TelegramRetryAfter
from aiogram.methods.base import TelegramType

if TYPE_CHECKING:
    from aiogram import Bot
    from aiogram.methods import Response, TelegramMethod

_waiting: ContextVar[bool] = ContextVar("replies_wait_out_throttling", default=False)


@contextmanager
def replies_wait_out_throttling() -> Iterator[None]:
    """Bot calls made inside this block wait out a 429 instead of raising it (see the module)."""
    token = _waiting.set(True)
    try:
        yield
    finally:
        _waiting.reset(token)


class WaitOutThrottling(BaseRequestMiddleware):
    """On 429 inside :func:`replies_wait_out_throttling`: wait ``retry_after``, then send again."""

    def __init__(self, *, attempts: int = 4, max_wait: float = 15.0) -> None:
        if attempts < 1:
            raise ValueError(f"attempts must be >= 1, got {attempts!r}")
        if not max_wait >= 0:
            raise ValueError(f"max_wait must be >= 0, got {max_wait!r}")
        self.attempts = attempts
        self.max_wait = max_wait
        self.waits = 0
        """How many refused calls were sent again (for tests and metrics)."""

    async def __call__(
        self,
        make_request: NextRequestMiddlewareType[TelegramType],
        bot: Bot,
        method: TelegramMethod[TelegramType],
    ) -> Response[TelegramType]:
        """Send ``method``; while allowed, wait out each 429 and send it again."""
        waited = 0.0
        attempt = 1
        while True:
            try:
                return await make_request(bot, method)
            except TelegramRetryAfter as refused:
                pause = float(refused.retry_after)
                if not _waiting.get() or attempt >= self.attempts or waited + pause > self.max_wait:
                    raise
                attempt += 1
                waited += pause
                self.waits += 1
                await trio.sleep(pause)
