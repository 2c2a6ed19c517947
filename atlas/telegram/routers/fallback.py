"""What nothing else handled: an unknown button (old, or forged) and unknown text.

An unknown button gets the polite "this button is outdated" answer and changes nothing. Unknown
text gets a hint and the menu — or, where a support chat is configured, "Send this to support?"
(:func:`~atlas.telegram.routers.support.offer_to_support`): a user who writes "hello, I need help"
is heard, and nothing reaches the support chat without their yes. It must be the last router: it
matches every message and every button press.
"""

from __future__ import annotations

from aiogram import Router
from aiogram.fsm.context import FSMContext
from aiogram.types import CallbackQuery, Message

from atlas.telegram import keyboards
from atlas.telegram.routers._screen import Screen, ScreenMiddleware
from atlas.telegram.routers.support import is_command, offer_to_support


def build_router() -> Router:
    """The fallback router (last in the list)."""
    router = Router(name="user.fallback")
    router.message.middleware(ScreenMiddleware())
    router.callback_query.middleware(ScreenMiddleware())

    @router.callback_query()
    async def on_unknown_button(callback: CallbackQuery, ui: Screen) -> None:
        await ui.ack(ui.t("errors.button_expired"), alert=True)

    @router.message()
    async def on_unknown_message(message: Message, ui: Screen, state: FSMContext) -> None:
        text = message.text
        if ui.config.support_chat_id is not None and text and not is_command(text):
            await offer_to_support(ui, state, text)
            return
        await ui.show(
            ui.t("user.fallback.unknown"),
            keyboards.main_menu(
                ui.lang,
                trial_available=ui.user.trial_used_at is None,
                support=ui.config.support_chat_id is not None,
            ),
        )

    return router
