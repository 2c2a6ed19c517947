"""Language switch (ru/en): stored in ``users.language``, so every later screen — and every
notification the outbox sender renders — is in the new language."""

from __future__ import annotations

from aiogram import F, Router
from aiogram.filters import Command
from aiogram.types import CallbackQuery, Message

from atlas.storage.units import set_language
from atlas.telegram import keyboards
from atlas.telegram.callbacks import LangCb, MenuAction, MenuCb
from atlas.telegram.routers._screen import Screen, ScreenMiddleware
from atlas.telegram.routers.menu import show_menu


def build_router() -> Router:
    """The language router."""
    router = Router(name="user.language")
    router.message.middleware(ScreenMiddleware())
    router.callback_query.middleware(ScreenMiddleware())

    async def choose(ui: Screen) -> None:
        await ui.show(ui.t("user.language.choose"), keyboards.languages(ui.lang))

    @router.callback_query(MenuCb.filter(F.action == MenuAction.LANGUAGE))
    async def on_language_button(callback: CallbackQuery, ui: Screen) -> None:
        await ui.ack()
        await choose(ui)

    @router.message(Command("language", "lang"))
    async def on_language_command(message: Message, ui: Screen) -> None:
        await choose(ui)

    @router.callback_query(LangCb.filter())
    async def on_switch(callback: CallbackQuery, callback_data: LangCb, ui: Screen) -> None:
        ui.user = await ui.run(set_language, user_id=ui.user.id, language=callback_data.lang.value)
        await ui.ack(ui.t("user.language.switched"))
        await show_menu(ui)

    return router
