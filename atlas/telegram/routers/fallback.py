"""What nothing else handled: an unknown button (old, or forged) and unknown text.

An unknown button gets the polite "this button is outdated" answer and changes nothing; unknown
text (or an unknown command) gets a hint and the menu. It must be the last router: it matches
every message and every button press.
"""

from __future__ import annotations

from aiogram import Router
from aiogram.types import CallbackQuery, Message

from atlas.telegram import keyboards
from atlas.telegram.routers._screen import Screen, ScreenMiddleware


def build_router() -> Router:
    """The fallback router (last in the list)."""
    router = Router(name="user.fallback")
    router.message.middleware(ScreenMiddleware())
    router.callback_query.middleware(ScreenMiddleware())

    @router.callback_query()
    async def on_unknown_button(callback: CallbackQuery, ui: Screen) -> None:
        await ui.ack(ui.t("errors.button_expired"), alert=True)

    @router.message()
    async def on_unknown_message(message: Message, ui: Screen) -> None:
        await ui.show(
            ui.t("user.fallback.unknown"),
            keyboards.main_menu(ui.lang, trial_available=ui.user.trial_used_at is None),
        )

    return router
