"""Help: what the bot does, the commands, and how to reach support — only a way that exists.

With a support chat (``config.support_chat_id``): a line saying a person answers here, and the
"Write to support" button (:mod:`.support`). Else with a support link (``ATLAS_SUPPORT_URL``): the
link. Else nothing about support: the bot never promises an answer nobody will give.
"""

from __future__ import annotations

from aiogram import F, Router
from aiogram.filters import Command
from aiogram.types import CallbackQuery, InlineKeyboardMarkup, Message

from atlas.telegram import keyboards
from atlas.telegram.callbacks import MenuAction, MenuCb
from atlas.telegram.routers._screen import Screen, ScreenMiddleware


def support_line(ui: Screen) -> str | None:
    """How this deployment can be reached, in the user's language; None: it cannot."""
    if ui.config.support_chat_id is not None:
        return ui.t("support.help.chat")
    if ui.config.support:
        return ui.t("support.help.url", url=ui.config.support)
    return None


def help_keyboard(ui: Screen) -> InlineKeyboardMarkup:
    """"Write to support" (where it exists), then back to the menu."""
    menu = keyboards.back_to_menu(ui.lang)
    if ui.config.support_chat_id is None:
        return menu
    return InlineKeyboardMarkup(inline_keyboard=[[keyboards.support_button(ui.lang)], *menu.inline_keyboard])


async def show_help(ui: Screen) -> None:
    """Send the help screen, with the support contact when there is one."""
    line = support_line(ui)
    text = ui.t("user.help.text") + (f"\n\n{line}" if line else "")
    await ui.show(text, help_keyboard(ui))


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
