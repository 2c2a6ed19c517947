"""The peer for ``bench_bot_load.py``: a plain aiogram 3 + asyncpg polling bot, no Atlas inside.

What a competent developer would write without Atlas: ``Dispatcher.start_polling`` on a stdlib
``SelectorEventLoop`` (printed at start), an asyncpg pool of the same size as Atlas's (10), and
handlers that run **the same SQL statements per update** as Atlas's user screens, each unit in its
own pooled transaction as ``db.run`` does. It never imports ``atlas`` or ``trio_asyncio``, and it
checks that before it starts polling.

The mapping (Atlas's routers → here), for the update mix the benchmark offers:

===================  =============================================  ==================================
update               Atlas                                          units (each ``BEGIN`` … ``COMMIT``)
===================  =============================================  ==================================
``/start``           ``start`` router, ``ScreenMiddleware(register  ``register_user``: ``SELECT … FOR
                     =True)``; greeting + menu (2 messages)          UPDATE``, then ``UPDATE … RETURNING``
                                                                    (or the ``INSERT`` for a new user)
``/menu``, text      ``menu`` / ``fallback`` routers: the screen    ``get_user``
                     middleware reads the user; one message
press ``m:sub``      middleware + ``get_subscription_view``         ``get_user``; ``SELECT … FROM
                                                                    subscriptions`` (+ the key when
                                                                    there is a subscription)
press ``m:plans``    middleware + ``plans_for_sale``                ``get_user``; ``SELECT … FROM plans``
press ``m:ref``      middleware + ``referral_stats``                ``get_user``; the four counts
press ``m:topup``,   middleware only (Crypto Pay is not set up;     ``get_user``
``m:help``,          help and menu read nothing more)
``m:menu``
===================  =============================================  ==================================

Every press is answered (``answerCallbackQuery``) before the screen is sent, as Atlas's
``ui.ack()`` does; every message is HTML with the same inline keyboards' callback data. The SQL
texts are Atlas's, character for character, so ``pg_stat_statements`` groups both sides alike.

A broadcast drains meanwhile when the outbox has due rows (``--broadcast``): a loop claims up to
100 rows with a lease (Atlas's claim statement), sends them at most 30 in any sliding second, and
marks the batch sent.

    python bench/peer_bot.py --api http://127.0.0.1:PORT --token TOKEN --dsn DSN [--pool 10]
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import datetime as dt
import json
import logging
import secrets
import sys
import time
import uuid
from typing import Any

import asyncpg
from aiogram import Bot, Dispatcher, F, Router
from aiogram.client.session.aiohttp import AiohttpSession
from aiogram.client.telegram import TelegramAPIServer
from aiogram.exceptions import TelegramAPIError, TelegramForbiddenError
from aiogram.filters import Command, CommandStart
from aiogram.fsm.context import FSMContext
from aiogram.types import CallbackQuery, InlineKeyboardButton, InlineKeyboardMarkup, Message

# Atlas's MenuCb(action=...).pack() values; bench_bot_load.py checks they still match.
MENU_DATA = {
    "menu": "m:menu", "trial": "m:trial", "sub": "m:sub", "plans": "m:plans", "topup": "m:topup",
    "promo": "m:promo", "ref": "m:ref", "lang": "m:lang", "help": "m:help",
}
USER_COLUMNS = (
    "id, username, first_name, language, referral_code, referrer_id, balance_minor, trial_used_at, "
    "first_paid_at, banned_at, bot_blocked_at, created_at"
)
SUBSCRIPTION_COLUMNS = (
    "id, user_id, kind, status, plan_code, starts_at, expires_at, auto_renew, last_auto_renewal_at, "
    "renew_next_try_at, token, created_at, updated_at"
)
SELECT_USER = f"SELECT {USER_COLUMNS} FROM users WHERE id = $1"
LOCK_USER = f"SELECT {USER_COLUMNS} FROM users WHERE id = $1 FOR UPDATE"
REFRESH_NAMES = f"""
        UPDATE users SET username = $2, first_name = $3 WHERE id = $1
        RETURNING {USER_COLUMNS}
        """
INSERT_USER = f"""
            INSERT INTO users (id, username, first_name, language, referral_code, referrer_id, created_at)
            VALUES ($1, $2, $3, $4, $5, $6, $7)
            ON CONFLICT DO NOTHING
            RETURNING {USER_COLUMNS}
            """
SELECT_SUBSCRIPTION = f"SELECT {SUBSCRIPTION_COLUMNS} FROM subscriptions WHERE user_id = $1"
PRESENT_KEY = "SELECT uuid FROM vpn_keys WHERE subscription_id = $1 AND desired = 'present'"
PLANS_FOR_SALE = (
    "SELECT code, duration_days, for_sale, prices, stars_price, titles FROM plans WHERE for_sale "
    "ORDER BY duration_days, code LIMIT 1000"
)
REFERRAL_STATS = """
        SELECT
            (SELECT count(*) FROM users WHERE referrer_id = $1) AS invited,
            (SELECT count(*) FROM users WHERE referrer_id = $1 AND first_paid_at IS NOT NULL) AS paid,
            (SELECT count(*) FROM referral_rewards WHERE referrer_id = $1 AND reversed_at IS NULL)
                AS rewards,
            (SELECT coalesce(sum(amount_minor), 0) FROM referral_rewards
             WHERE referrer_id = $1 AND reversed_at IS NULL) AS earned
        """
CLAIM = """
        WITH due AS (
            SELECT id FROM outbox
            WHERE state = 'pending' AND next_attempt_at <= $1
              AND (leased_until IS NULL OR leased_until <= $1)
            ORDER BY priority, next_attempt_at, id
            LIMIT $4
            FOR UPDATE SKIP LOCKED
        )
        UPDATE outbox AS o SET lease_owner = $2, leased_until = $3
        FROM due WHERE o.id = due.id
        RETURNING o.id, o.chat_id, o.kind, o.payload, o.priority, o.broadcast_id, o.attempts,
                  o.next_attempt_at, (SELECT u.language FROM users AS u WHERE u.id = o.chat_id) AS language
        """
MARK = """
        UPDATE outbox SET state = $3, sent_at = $2, lease_owner = NULL, leased_until = NULL
        WHERE id = ANY($1::bigint[])
        """
CODE_ALPHABET = "ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz23456789"
SEND_RATE = 30.0
BATCH = 100

_log = logging.getLogger("peer_bot")


def _button(text: str, action: str) -> InlineKeyboardButton:
    return InlineKeyboardButton(text=text, callback_data=MENU_DATA[action])


def main_menu(trial_available: bool) -> InlineKeyboardMarkup:
    """Atlas's main menu: the same buttons and callback data."""
    rows = [[_button("🎁 Free trial", "trial")]] if trial_available else []
    rows += [
        [_button("🔑 My subscription", "sub")],
        [_button("💳 Plans", "plans"), _button("💰 Top up", "topup")],
        [_button("🏷 Promo code", "promo"), _button("👥 Invite friends", "ref")],
        [_button("🌐 Language", "lang"), _button("❓ Help", "help")],
    ]
    return InlineKeyboardMarkup(inline_keyboard=rows)


def back_to_menu() -> InlineKeyboardMarkup:
    """One button back to the menu."""
    return InlineKeyboardMarkup(inline_keyboard=[[_button("⬅️ Menu", "menu")]])


def money(minor: int) -> str:
    """``100.00 RUB``."""
    return f"{minor // 100}.{minor % 100:02d} RUB"


class Peer:
    """The handlers' dependencies: the pool, and a transaction helper like ``db.run``."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool

    async def get_user(self, user_id: int) -> asyncpg.Record | None:
        """``get_user``: one read in its own transaction."""
        async with self.pool.acquire() as conn, conn.transaction():
            row: asyncpg.Record | None = await conn.fetchrow(SELECT_USER, user_id)
            return row

    async def register(self, message: Message) -> asyncpg.Record:
        """``register_user``: lock the user; refresh their names, or create them."""
        sender = message.from_user
        assert sender is not None
        async with self.pool.acquire() as conn, conn.transaction():
            existing = await conn.fetchrow(LOCK_USER, sender.id)
            if existing is not None:
                row: asyncpg.Record = await conn.fetchrow(
                    REFRESH_NAMES, sender.id, sender.username, sender.first_name
                )
                return row
            language = "ru" if (sender.language_code or "").lower().startswith("ru") else "en"
            code = "".join(secrets.choice(CODE_ALPHABET) for _ in range(8))
            created = await conn.fetchrow(
                INSERT_USER, sender.id, sender.username, sender.first_name, language, code, None,
                dt.datetime.now(dt.UTC),
            )
            return created if created is not None else await conn.fetchrow(LOCK_USER, sender.id)

    async def user_for(self, event: Message | CallbackQuery) -> asyncpg.Record:
        """The screen middleware's read (registering a stranger, as Atlas does)."""
        assert event.from_user is not None
        found = await self.get_user(event.from_user.id)
        if found is not None:
            return found
        message = event if isinstance(event, Message) else event.message
        assert isinstance(message, Message)
        return await self.register(message)

    async def one(self, sql: str, *args: Any) -> asyncpg.Record | None:
        """A one-statement unit."""
        async with self.pool.acquire() as conn, conn.transaction():
            row: asyncpg.Record | None = await conn.fetchrow(sql, *args)
            return row


def build_router(peer: Peer) -> Router:
    """The handlers for the benchmark's update mix (see the module docstring)."""
    router = Router(name="peer")

    async def say_menu(message: Message, user: asyncpg.Record) -> None:
        await message.answer(
            f"<b>Menu</b>\nBalance: {money(user['balance_minor'])}", parse_mode="HTML",
            reply_markup=main_menu(user["trial_used_at"] is None), disable_web_page_preview=True,
        )

    @router.message(CommandStart())
    async def on_start(message: Message, state: FSMContext) -> None:
        user = await peer.register(message)
        await state.clear()
        await message.answer(
            f"Hi, {user['first_name'] or ''}! I sell fast and private VPN access. Take a free trial or "
            "choose a plan below.", parse_mode="HTML", disable_web_page_preview=True,
        )
        await say_menu(message, user)

    @router.message(Command("menu"))
    async def on_menu_command(message: Message, state: FSMContext) -> None:
        user = await peer.user_for(message)
        await state.clear()
        await say_menu(message, user)

    @router.callback_query(F.data == MENU_DATA["menu"])
    async def on_menu(callback: CallbackQuery, state: FSMContext) -> None:
        user = await peer.user_for(callback)
        await state.clear()
        await callback.answer()
        assert isinstance(callback.message, Message)
        await say_menu(callback.message, user)

    @router.callback_query(F.data == MENU_DATA["sub"])
    async def on_subscription(callback: CallbackQuery, state: FSMContext) -> None:
        user = await peer.user_for(callback)
        await state.clear()
        await callback.answer()
        async with peer.pool.acquire() as conn, conn.transaction():
            sub = await conn.fetchrow(SELECT_SUBSCRIPTION, user["id"])
            key = None if sub is None else await conn.fetchval(PRESENT_KEY, sub["id"])
        assert isinstance(callback.message, Message)
        text = "You have no subscription yet. Take the free trial or choose a plan." if sub is None else (
            f"<b>My subscription</b>\nStatus: {sub['status']}\nValid until: {sub['expires_at']}\nKey: {key}"
        )
        rows = [[_button("🎁 Free trial", "trial")]] if user["trial_used_at"] is None else []
        rows += [[_button("💳 Plans", "plans")], [_button("⬅️ Menu", "menu")]]
        await callback.message.answer(
            text, parse_mode="HTML", reply_markup=InlineKeyboardMarkup(inline_keyboard=rows),
            disable_web_page_preview=True,
        )

    @router.callback_query(F.data == MENU_DATA["plans"])
    async def on_plans(callback: CallbackQuery, state: FSMContext) -> None:
        user = await peer.user_for(callback)
        await state.clear()
        await callback.answer()
        async with peer.pool.acquire() as conn, conn.transaction():
            plans = await conn.fetch(PLANS_FOR_SALE)
        rows = []
        for plan in plans:
            titles = json.loads(plan["titles"]) if isinstance(plan["titles"], str) else plan["titles"]
            prices = json.loads(plan["prices"]) if isinstance(plan["prices"], str) else plan["prices"]
            price = money(int(prices["RUB"])) if "RUB" in prices else f"{plan['stars_price']} ⭐"
            label = f"{titles.get('en', plan['code'])} · {plan['duration_days']} d · {price}"
            rows.append([InlineKeyboardButton(text=label, callback_data=f"p:{plan['code']}")])
        rows.append([_button("⬅️ Menu", "menu")])
        assert isinstance(callback.message, Message)
        await callback.message.answer(
            f"<b>Plans</b>\nYour balance: {money(user['balance_minor'])}", parse_mode="HTML",
            reply_markup=InlineKeyboardMarkup(inline_keyboard=rows), disable_web_page_preview=True,
        )

    @router.callback_query(F.data == MENU_DATA["ref"])
    async def on_referral(callback: CallbackQuery, state: FSMContext) -> None:
        user = await peer.user_for(callback)
        await state.clear()
        await callback.answer()
        stats = await peer.one(REFERRAL_STATS, user["id"])
        assert stats is not None and isinstance(callback.message, Message)
        await callback.message.answer(
            f"<b>Invite friends</b>\nInvited: {stats['invited']}, of them paid: {stats['paid']}\n"
            f"Rewards: {money(int(stats['earned']))} ({stats['rewards']})\n\nYour invite link:\n\n"
            f"<code>https://t.me/atlas_emulated_bot?start=ref_{user['referral_code']}</code>",
            parse_mode="HTML", reply_markup=back_to_menu(), disable_web_page_preview=True,
        )

    @router.callback_query(F.data.in_({MENU_DATA["topup"], MENU_DATA["help"]}))
    async def on_static(callback: CallbackQuery, state: FSMContext) -> None:
        await peer.user_for(callback)
        await state.clear()
        await callback.answer()
        assert isinstance(callback.message, Message)
        text = "Crypto payments are not available right now." if callback.data == MENU_DATA["topup"] else (
            "<b>Help</b>\n/start — the menu\n/promo CODE — apply a promo code\n/language — change the "
            "language\n\nSupport: @atlas_support"
        )
        await callback.message.answer(
            text, parse_mode="HTML", reply_markup=back_to_menu(), disable_web_page_preview=True
        )

    @router.callback_query()
    async def on_unknown_button(callback: CallbackQuery, state: FSMContext) -> None:
        await peer.user_for(callback)
        await state.clear()
        await callback.answer("This button is outdated. Open the menu again.", show_alert=True)

    @router.message()
    async def on_text(message: Message, state: FSMContext) -> None:
        user = await peer.user_for(message)
        await state.clear()
        await message.answer(
            "I did not understand that. Here is the menu:", parse_mode="HTML",
            reply_markup=main_menu(user["trial_used_at"] is None), disable_web_page_preview=True,
        )

    return router


async def broadcast_loop(bot: Bot, pool: asyncpg.Pool) -> None:
    """Drain due outbox rows at 30/s: claim a leased batch, send it paced, mark it."""
    owner = uuid.uuid4()
    recent: collections.deque[float] = collections.deque()  # send times within the last second
    while True:
        now = dt.datetime.now(dt.UTC)
        async with pool.acquire() as conn, conn.transaction():
            rows = await conn.fetch(CLAIM, now, owner, now + dt.timedelta(minutes=5), BATCH)
        if not rows:
            await asyncio.sleep(1.0)
            continue
        sent: list[int] = []
        blocked: list[int] = []
        for row in sorted(rows, key=lambda r: (r["priority"], r["next_attempt_at"], r["id"])):
            # At most SEND_RATE sends in any sliding second, as Telegram counts.
            while len(recent) >= SEND_RATE:
                wait = recent[0] + 1.0 - time.monotonic()
                if wait <= 0:
                    recent.popleft()
                else:
                    await asyncio.sleep(wait)
            recent.append(time.monotonic())
            payload = json.loads(row["payload"]) if isinstance(row["payload"], str) else row["payload"]
            try:
                await bot.send_message(row["chat_id"], payload["text"], parse_mode=payload.get("parse_mode"))
                sent.append(row["id"])
            except TelegramForbiddenError:
                blocked.append(row["id"])
            except TelegramAPIError as exc:
                _log.warning("broadcast send failed: %s", exc)
        stamp = dt.datetime.now(dt.UTC)
        async with pool.acquire() as conn, conn.transaction():
            if sent:
                await conn.execute(MARK, sent, stamp, "sent")
            if blocked:
                await conn.execute(MARK, blocked, stamp, "blocked")


def _loop_type() -> str:
    loop = asyncio.get_running_loop()
    return type(loop).__module__ + "." + type(loop).__name__


async def _no_reset(conn: asyncpg.Connection) -> None:
    return None


async def _main(args: argparse.Namespace) -> None:
    tainted = sorted(m for m in sys.modules if m.split(".")[0] in {"atlas", "trio_asyncio", "trio"})
    if tainted:
        raise SystemExit(f"the peer imported {tainted}; it must run on plain asyncio")
    print(f"peer loop: {_loop_type()}", file=sys.stderr, flush=True)
    pool = await asyncpg.create_pool(
        args.dsn, min_size=1, max_size=args.pool, command_timeout=30.0,
        server_settings={"application_name": "peer"},
        # --no-reset: the equal-SQL comparison. Atlas skips asyncpg's reset query on release (its
        # units leave no session state); a peer that does the same sends the same statements.
        **({"reset": _no_reset} if args.no_reset else {}),
    )
    session = AiohttpSession(api=TelegramAPIServer.from_base(args.api.rstrip("/")))
    bot = Bot(args.token, session=session)
    dispatcher = Dispatcher()
    dispatcher.include_router(build_router(Peer(pool)))
    sender = asyncio.create_task(broadcast_loop(bot, pool)) if args.broadcast else None
    try:
        await dispatcher.start_polling(bot, polling_timeout=25, handle_signals=True, close_bot_session=True)
    finally:
        if sender is not None:
            sender.cancel()
        await pool.close()


def main() -> None:
    """Run the peer until SIGTERM or SIGINT."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--api", required=True, help="Bot API base URL (the emulator)")
    parser.add_argument("--token", required=True)
    parser.add_argument("--dsn", required=True)
    parser.add_argument("--pool", type=int, default=10)
    parser.add_argument("--broadcast", action="store_true", help="drain due outbox rows at 30/s")
    parser.add_argument("--no-reset", action="store_true", help="skip asyncpg's reset on release (equal SQL)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    with asyncio.Runner(loop_factory=asyncio.SelectorEventLoop) as runner:
        runner.run(_main(args))


if __name__ == "__main__":
    main()
