"""The main menu: ``/menu`` and the "menu" button, in the user's language."""

from __future__ import annotations

from aiogram import F, Router
from aiogram.filters import Command
from aiogram.types import CallbackQuery, Message

from atlas.telegram import keyboards
from atlas.telegram.callbacks import MenuAction, MenuCb
from atlas.telegram.routers._screen import Screen, ScreenMiddleware


async def show_menu(ui: Screen) -> None:
    """Send the main menu: the user's balance and every screen as a button."""
    await ui.show(
        ui.t("user.menu.text", name=ui.user.first_name or "", balance=ui.money(ui.user.balance_minor)),
        keyboards.main_menu(
            ui.lang,
            trial_available=ui.user.trial_used_at is None,
            support=ui.config.support_chat_id is not None,
        ),
    )


def build_router() -> Router:
    """The menu router (a fresh one per call: aiogram attaches a router to one parent only)."""
    router = Router(name="user.menu")
    router.message.middleware(ScreenMiddleware())
    router.callback_query.middleware(ScreenMiddleware())

    @router.message(Command("menu"))
    async def on_menu_command(message: Message, ui: Screen) -> None:
        await show_menu(ui)

    @router.callback_query(MenuCb.filter(F.action == MenuAction.MENU))
    async def on_menu_button(callback: CallbackQuery, ui: Screen) -> None:
        await ui.ack()
        await show_menu(ui)

    return router
