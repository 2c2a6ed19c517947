"""The referral page: the user's invite link, how many came through it, and what they earned."""

from __future__ import annotations

import datetime as dt

from aiogram import F, Router
from aiogram.filters import Command
from aiogram.types import CallbackQuery, Message

from atlas.storage import Tx
from atlas.storage.units import ReferralStats, UserView, referral_stats
from atlas.telegram import keyboards
from atlas.telegram.callbacks import MenuAction, MenuCb
from atlas.telegram.routers._screen import Screen, ScreenMiddleware, code, reads


async def referral_stats_of(tx: Tx, user: UserView, now: dt.datetime) -> ReferralStats:
    """The screen read of this router: the user's referral numbers (see :func:`._screen.reads`)."""
    return await referral_stats(tx, user_id=user.id)


async def show_referral(ui: Screen) -> None:
    """Send the referral page."""
    stats = await ui.read(referral_stats_of)
    await ui.show(
        ui.t(
            "user.referral.page",
            invited=stats.invited,
            paid=stats.invited_paid,
            rewards=ui.money(stats.rewards_minor),
            rewards_count=stats.rewards_count,
        )
        + "\n\n"
        + code(ui.config.referral_link(ui.user.referral_code)),
        keyboards.back_to_menu(ui.lang),
    )


def build_router() -> Router:
    """The referral router."""
    router = Router(name="user.referral")
    router.message.middleware(ScreenMiddleware())
    router.callback_query.middleware(ScreenMiddleware())

    @router.callback_query(MenuCb.filter(F.action == MenuAction.REFERRAL), flags=reads(referral_stats_of))
    async def on_referral(callback: CallbackQuery, ui: Screen) -> None:
        await ui.ack()
        await show_referral(ui)

    @router.message(Command("ref"), flags=reads(referral_stats_of))
    async def on_referral_command(message: Message, ui: Screen) -> None:
        await show_referral(ui)

    return router
