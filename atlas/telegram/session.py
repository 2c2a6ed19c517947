"""The aiogram session Atlas uses: every Bot API call first checks the connection guard.

aiogram sends each call through ``BaseSession.make_request``; overriding it is the narrowest place
where *every* call (handlers, the outbox sender, intake's getUpdates) passes, so a Telegram call made
inside a unit of work fails with :class:`atlas.net.ConnectionHeldAcrossIO` before any byte is sent
(contract 1 in DESIGN.md). The guard reads a context variable, which follows the asyncio task that
makes the call, i.e. the unit of work's own task when the mistake is made.
"""

from __future__ import annotations

from aiogram import Bot
from aiogram.client.default import DefaultBotProperties
from aiogram.client.session.aiohttp import AiohttpSession
from aiogram.client.telegram import TelegramAPIServer
from aiogram.methods.base import TelegramMethod, TelegramType

from atlas.net.guard import ensure_no_connection_held


class GuardedAiohttpSession(AiohttpSession):
    """``AiohttpSession`` that raises ``ConnectionHeldAcrossIO`` instead of calling Telegram inside a unit.

    Everything else (timeouts, error mapping to ``TelegramRetryAfter`` and friends) is aiogram's.
    """

    async def make_request(
        self,
        bot: Bot,
        method: TelegramMethod[TelegramType],
        timeout: int | None = None,  # noqa: ASYNC109 - aiogram's signature, a per-request HTTP timeout
    ) -> TelegramType:
        """Check the guard, then send the call with aiohttp."""
        ensure_no_connection_held(f"Telegram {method.__api_method__}")
        return await super().make_request(bot, method, timeout)


def make_bot(token: str, api_base: str | None = None, *, default: DefaultBotProperties | None = None) -> Bot:
    """Build the aiogram ``Bot`` with a :class:`GuardedAiohttpSession`.

    ``api_base`` points it at another Bot API server (the emulator, a local ``telegram-bot-api``):
    calls then go to ``{api_base}/bot{token}/{method}``. aiogram checks the token's shape
    (``<digits>:<text>``) and raises ``TokenValidationError`` for a malformed one.
    Must be called where an asyncio loop can later run the session (aiohttp is asyncio-only); the
    session opens lazily on the first call.
    """
    if api_base is None:
        session = GuardedAiohttpSession()
    else:
        session = GuardedAiohttpSession(api=TelegramAPIServer.from_base(api_base.rstrip("/")))
    return Bot(token, session=session, default=default)
