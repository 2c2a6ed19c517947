"""Writing to support, the user's side: "Write to support", and unknown text after a yes/no prompt.

Only where a support chat is configured (``config.support_chat_id``); without one nothing here
offers anything, and Help does not promise an answer (:mod:`.help`).

Two ways in, one way out (:func:`submit`):

* "✉️ Write to support" (Help, the main menu) enters :attr:`SupportInput.message`; the next text is
  the message. A command instead leaves the prompt (the command's router clears the state).
* Text the bot does not understand (the fallback) is kept in :attr:`SupportInput.confirm` with a
  "Send this to support?" prompt; "yes" sends the kept text, "no" shows the menu.

:func:`submit` stores the message in the user's open ticket (one unit: the rate limit and the
ticket are decided there, see :mod:`atlas.storage.units.support`), posts the notice to the support
chat (the user's name, @username, id, language and the ticket number, then the text), and records
the notice's message id, which is what an agent replies to (:mod:`.support_chat`). The notice is
sent here, not through the outbox, because the mapping needs its message id; if the support chat
cannot be reached the message stays stored (admins see it in the ticket list) and the user is told
it was saved, never that someone has read it.

The kept text lives in the conversation state (``state.data``), so behind a webhook it is in
PostgreSQL (:mod:`atlas.telegram.fsm_storage`) and the "yes" may reach another process.
"""

from __future__ import annotations

import logging

from aiogram import F, Router
from aiogram.exceptions import TelegramAPIError
from aiogram.filters import StateFilter
from aiogram.fsm.context import FSMContext
from aiogram.fsm.state import State, StatesGroup
from aiogram.types import CallbackQuery, InlineKeyboardButton, InlineKeyboardMarkup, Message

from atlas.storage.units.support import SupportRefused, UserMessage, add_user_message, record_support_copy
from atlas.telegram import keyboards
from atlas.telegram.callbacks import SupportAction, SupportCb, SupportTicketCb
from atlas.telegram.i18n import bundled
from atlas.telegram.routers._screen import Screen, ScreenMiddleware

_log = logging.getLogger("atlas.telegram.support")

PENDING_TEXT = "support_text"
"""The key of the kept text in the conversation state's data."""


class SupportInput(StatesGroup):
    """What the user's next step means."""

    message = State()
    """"Write to support" was pressed: the next text is the message."""
    confirm = State()
    """A text the bot did not understand waits (in the state's data) for yes or no."""


def _button(lang: str, name: str, action: SupportAction) -> InlineKeyboardButton:
    return InlineKeyboardButton(
        text=bundled().t(lang, f"support.button.{name}"), callback_data=SupportCb(action=action).pack()
    )


def is_command(text: str) -> bool:
    """A ``/command`` (never taken for a message to support)."""
    return text.startswith("/")


async def offer_to_support(ui: Screen, state: FSMContext, text: str) -> None:
    """The fallback's answer to unknown text where support exists: keep it, ask "send it?"."""
    await state.set_state(SupportInput.confirm)
    await state.update_data({PENDING_TEXT: text})
    await ui.show(
        ui.t("support.user.confirm"),
        InlineKeyboardMarkup(
            inline_keyboard=[
                [
                    _button(ui.lang, "send", SupportAction.SEND),
                    _button(ui.lang, "discard", SupportAction.DISCARD),
                ]
            ]
        ),
    )


def notice_text(config_language: str, stored: UserMessage, text: str) -> str:
    """The notice in the support chat: who wrote (name, @username, id, language), the ticket, the text."""
    translator = bundled()
    state = "state_new" if stored.opened else "state_more"
    return translator.t(
        config_language,
        "support.chat.ticket",
        ticket=stored.ticket_id,
        state=translator.t(config_language, f"support.chat.{state}"),
        name=stored.first_name or "—",
        username=f"@{stored.username}" if stored.username else "",
        user_id=stored.user_id,
        language=stored.language,
        text=text,
    )


def close_keyboard(language: str, ticket_id: int) -> InlineKeyboardMarkup:
    """The "🔒 Close ticket" button under a notice (honoured in the support chat only)."""
    button = InlineKeyboardButton(
        text=bundled().t(language, "support.chat.close_button"),
        callback_data=SupportTicketCb(ticket_id=ticket_id).pack(),
    )
    return InlineKeyboardMarkup(inline_keyboard=[[button]])


async def submit(ui: Screen, text: str) -> None:
    """Store ``text`` in the user's ticket, post it to the support chat, tell the user."""
    chat_id = ui.config.support_chat_id
    if chat_id is None:  # configuration changed under an old prompt
        await ui.show(ui.t("user.fallback.unknown"), keyboards.back_to_menu(ui.lang))
        return
    try:
        stored = await ui.run(
            add_user_message,
            user_id=ui.user.id,
            text=text,
            now=ui.clock.now(),
            per_hour=ui.config.support_per_hour,
        )
    except SupportRefused as refused:
        params = {k: v for k, v in refused.params.items() if k != "reason"}
        await ui.show(
            ui.t(f"support.refused.{refused.reason.value}", **params), keyboards.back_to_menu(ui.lang)
        )
        return
    try:
        notice = await ui.bot.send_message(
            chat_id,
            notice_text(ui.config.support_language, stored, text),
            parse_mode="HTML",
            reply_markup=close_keyboard(ui.config.support_language, stored.ticket_id),
        )
    except TelegramAPIError as exc:
        # Stored, not forwarded: admins still see it in the ticket list. The text is not logged.
        _log.error(
            "support chat %s refused the notice of ticket %s: %s", chat_id, stored.ticket_id, exc.message
        )
        key = "support.user.saved"
    else:
        await ui.run(
            record_support_copy,
            message_id=stored.message_id,
            support_chat_id=chat_id,
            support_message_id=notice.message_id,
        )
        key = "support.user.sent_new" if stored.opened else "support.user.sent"
    await ui.show(ui.t(key, ticket=stored.ticket_id), keyboards.back_to_menu(ui.lang))


def build_router() -> Router:
    """The user's support router (before the fallback: it takes text in its own states only)."""
    router = Router(name="user.support")
    # keep_state: the prompts *are* states; each handler clears them itself.
    router.message.middleware(ScreenMiddleware(keep_state=True))
    router.callback_query.middleware(ScreenMiddleware(keep_state=True))

    @router.callback_query(SupportCb.filter(F.action == SupportAction.WRITE))
    async def on_write(callback: CallbackQuery, ui: Screen, state: FSMContext) -> None:
        if ui.config.support_chat_id is None:
            await ui.ack(ui.t("errors.button_expired"), alert=True)
            return
        await ui.ack()
        await state.set_state(SupportInput.message)
        await ui.show(
            ui.t("support.user.ask"),
            InlineKeyboardMarkup(inline_keyboard=[[_button(ui.lang, "cancel", SupportAction.CANCEL)]]),
        )

    @router.callback_query(SupportCb.filter(F.action == SupportAction.CANCEL))
    async def on_cancel(callback: CallbackQuery, ui: Screen, state: FSMContext) -> None:
        await ui.ack()
        await state.clear()
        await ui.show(ui.t("support.user.cancelled"), keyboards.back_to_menu(ui.lang))

    @router.message(StateFilter(SupportInput.message), F.text.func(lambda text: not is_command(text)))
    async def on_message(message: Message, ui: Screen, state: FSMContext) -> None:
        await state.clear()
        await submit(ui, message.text or "")

    @router.message(StateFilter(SupportInput.message), ~F.text)
    async def on_not_text(message: Message, ui: Screen) -> None:
        # A photo or a sticker: the prompt stays, so the next text still goes to support.
        await ui.show(
            ui.t("support.user.text_only"),
            InlineKeyboardMarkup(inline_keyboard=[[_button(ui.lang, "cancel", SupportAction.CANCEL)]]),
        )

    @router.callback_query(SupportCb.filter(F.action == SupportAction.SEND))
    async def on_send(callback: CallbackQuery, ui: Screen, state: FSMContext) -> None:
        await ui.ack()
        kept = (await state.get_data()).get(PENDING_TEXT)
        in_confirm = await state.get_state() == SupportInput.confirm.state
        await state.clear()
        if not in_confirm or not isinstance(kept, str):
            # An old prompt: the text it asked about was already sent, discarded or replaced.
            await ui.show(ui.t("support.user.expired"), keyboards.back_to_menu(ui.lang))
            return
        await submit(ui, kept)

    @router.callback_query(SupportCb.filter(F.action == SupportAction.DISCARD))
    async def on_discard(callback: CallbackQuery, ui: Screen, state: FSMContext) -> None:
        await ui.ack()
        await state.clear()
        await ui.show(
            ui.t("support.user.cancelled"),
            keyboards.main_menu(ui.lang, trial_available=ui.user.trial_used_at is None, support=True),
        )

    return router
