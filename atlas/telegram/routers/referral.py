"""The referral page: the user's invite link, how many came through it, and what they earned."""

from __future__ import annotations

from aiogram import F, Router
from aiogram.filters import Command
from aiogram.types import CallbackQuery, Message

from atlas.storage.units import ReferralStats, referral_stats
from atlas.telegram import keyboards
from atlas.telegram.callbacks import MenuAction, MenuCb
from atlas.telegram.routers._screen import Screen, ScreenMiddleware, code


async def show_referral(ui: Screen) -> None:
    """Send the referral page."""
    stats: ReferralStats = await ui.run(referral_stats, user_id=ui.user.id)
    await ui.say(
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

    @router.callback_query(MenuCb.filter(F.action == MenuAction.REFERRAL))
    async def on_referral(callback: CallbackQuery, ui: Screen) -> None:
        await ui.ack()
        await show_referral(ui)

    @router.message(Command("ref"))
    async def on_referral_command(message: Message, ui: Screen) -> None:
        await show_referral(ui)

    return router
