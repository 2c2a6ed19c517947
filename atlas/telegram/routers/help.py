"""Help: what the bot does, the commands, and how to reach support."""

from __future__ import annotations

from aiogram import F, Router
from aiogram.filters import Command
from aiogram.types import CallbackQuery, Message

from atlas.telegram import keyboards
from atlas.telegram.callbacks import MenuAction, MenuCb
from atlas.telegram.routers._screen import Screen, ScreenMiddleware


async def show_help(ui: Screen) -> None:
    """Send the help screen with the support contact."""
    await ui.show(
        ui.t("user.help.text", support=ui.config.support or ui.t("user.help.no_support")),
        keyboards.back_to_menu(ui.lang),
    )


def build_router() -> Router:
    """The help router."""
    router = Router(name="user.help")
    router.message.middleware(ScreenMiddleware())
    router.callback_query.middleware(ScreenMiddleware())

    @router.message(Command("help", "support"))
    async def on_help_command(message: Message, ui: Screen) -> None:
        await show_help(ui)

    @router.callback_query(MenuCb.filter(F.action == MenuAction.HELP))
    async def on_help_button(callback: CallbackQuery, ui: Screen) -> None:
        await ui.ack()
        await show_help(ui)

    return router
