"""Shared harness of the admin tests: the real aiogram Bot, the Bot API emulator, polling intake,
per-user dispatch with the admin routers, a stand-in fallback router, and seeding helpers."""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import trio
from aiogram import Bot, Router
from aiogram.types import CallbackQuery, Message

from atlas.clock import Clock
from atlas.storage import Database, Tx
from atlas.supervision import CrashReporter, RingSink
from atlas.telegram import (
    DispatchSettings,
    PollingIntake,
    PollingSettings,
    UpdateDispatcher,
    build_dispatcher,
    make_bot,
)
from atlas.telegram.config import BotConfig
from atlas.telegram.routers.admin import build_admin_router
from atlas.telegram.routers.admin_ops import MaintenanceGate, build_maintenance_router
from atlas.testing.botapi import BotApiEmulator

ADMIN = 7_000_001
NOW = dt.datetime(2026, 3, 1, 12, 0, tzinfo=dt.UTC)
CONFIG = BotConfig(currency="RUB", public_base_url="https://vpn.example", bot_username="atlas_test_bot")
UNKNOWN = "Unknown command. Open the menu: /start"
OUTDATED = "This button is outdated."
FAST = PollingSettings(timeout=1, standby_retry=0.05, lock_check_every=5)


def fallback_router() -> Router:
    """What the user screens' fallback does with anything nobody else took (a stand-in here)."""
    router = Router(name="fallback")

    @router.message()
    async def unknown(message: Message) -> None:
        await message.answer(UNKNOWN)

    @router.callback_query()
    async def outdated(callback: CallbackQuery) -> None:
        await callback.answer(OUTDATED)

    return router


@dataclass
class AdminBot:
    emulator: BotApiEmulator
    bot: Bot
    nursery: trio.Nursery
    dispatch: UpdateDispatcher
    clock: Clock
    gate: MaintenanceGate
    reports: RingSink = field(default_factory=RingSink)


@asynccontextmanager
async def admin_bot(db: Database, **dependencies: Any) -> AsyncIterator[AdminBot]:
    """Everything running; ``dependencies`` are added to (or override) the handlers' dependencies."""
    emulator = BotApiEmulator()
    clock = Clock(NOW)
    gate = MaintenanceGate(db, ttl=0.2)
    reports = RingSink()
    async with trio.open_nursery() as nursery:
        base = await nursery.start(emulator.serve)
        bot = make_bot(emulator.token, base)
        deps: dict[str, Any] = {
            "db": db,
            "clock": clock,
            "admin_ids": frozenset({ADMIN}),
            "config": CONFIG,
            "maintenance": gate,
        }
        deps.update(dependencies)
        root = build_dispatcher([build_maintenance_router(), build_admin_router(), fallback_router()], **deps)
        dispatch = UpdateDispatcher(
            dispatcher=root,
            bot=bot,
            reporter=CrashReporter([reports], now=lambda: dt.datetime.now(dt.UTC)),
            settings=DispatchSettings(handler_timeout=30),
        )
        await nursery.start(dispatch.run)
        intake = PollingIntake(bot=bot, dispatcher=dispatch, settings=FAST)
        await nursery.start(intake.run)
        try:
            yield AdminBot(emulator, bot, nursery, dispatch, clock, gate, reports)
        finally:
            nursery.cancel_scope.cancel()
            with trio.CancelScope(shield=True):
                await bot.session.close()


async def settle(h: AdminBot) -> None:
    """Wait until every queued update was polled and handled."""
    await h.emulator.wait_until_delivered(within=10)
    with trio.fail_after(10):
        await h.dispatch.join()


# ---------------------------------------------------------------------------------------------
# Seeding


async def add_users(
    tx: Tx,
    *,
    ids: list[int],
    now: dt.datetime,
    usernames: list[str | None] | None = None,
    banned: bool = False,
    bot_blocked: bool = False,
    paid: bool = False,
    balance_minor: int = 0,
) -> None:
    """Insert users straight into the table (fast: one statement for thousands)."""
    await tx.execute(
        """
        INSERT INTO users (id, username, first_name, language, referral_code, created_at, banned_at,
                           bot_blocked_at, first_paid_at)
        SELECT id, name, 'U', 'en', 'ref' || id, $3, $4, $5, $6
        FROM unnest($1::bigint[], $2::text[]) AS u(id, name)
        """,
        ids,
        usernames or [None] * len(ids),
        now,
        now if banned else None,
        now if bot_blocked else None,
        now if paid else None,
    )
    if balance_minor:
        await tx.execute(
            """
            INSERT INTO ledger (user_id, amount_minor, kind, reference, idempotency_key, created_at)
            SELECT id, $2, 'topup', 'seed', 'seed:' || id, $3 FROM unnest($1::bigint[]) AS u(id)
            """,
            ids,
            balance_minor,
            now,
        )
        await tx.execute(
            "UPDATE users SET balance_minor = $2 WHERE id = ANY($1::bigint[])", ids, balance_minor
        )


async def add_subscriptions(
    tx: Tx, *, ids: list[int], kind: str, status: str, expires_at: dt.datetime, now: dt.datetime
) -> None:
    """Give each user a subscription (no key: the admin tests do not need one)."""
    await tx.execute(
        """
        INSERT INTO subscriptions
            (user_id, kind, status, starts_at, expires_at, token, created_at, updated_at)
        SELECT id, $2, $3, $5::timestamptz - interval '30 days', $4,
               'token-' || id || '-padding-padding', $5, $5
        FROM unnest($1::bigint[]) AS u(id)
        """,
        ids,
        kind,
        status,
        expires_at,
        now,
    )
