"""The support chat, the agents' side: a reply to a ticket's message reaches its user; ``/close``.

Who is an agent: whoever writes in the configured support chat (``config.support_chat_id``). That
chat's id on the update is the whole authority — Telegram sets ``message.chat`` — so
:class:`SupportChatFilter` sits on the router and a message from any other chat (a forged "reply"
in a private chat or another group) is not handled here at all: it goes on to the user screens
like any other text and changes no ticket. Without a support chat nothing here matches.

In the support chat every message is taken by this router, so no other screen ever answers the
group:

* a reply to a ticket's message (the bot's notice, or an earlier reply of that ticket) is stored
  and queued for the user through the outbox (:func:`~atlas.storage.units.support.add_agent_reply`);
  the agent gets a short confirmation;
* ``/close`` as a reply to a ticket's message, or the "🔒 Close ticket" button under a notice,
  closes the ticket and tells the user;
* anything else (agents talking among themselves, service messages) is ignored.

Acks in the group are in the agent's own Telegram language. Telegram delivers group messages to a
bot only as its privacy mode allows: with privacy on, replies to the bot's messages and commands —
exactly what is needed here (docs/operations.md, "Support tickets").
"""

from __future__ import annotations

from aiogram import F, Router
from aiogram.filters import Command, Filter
from aiogram.types import CallbackQuery, Message, TelegramObject

from atlas.clock import Clock
from atlas.storage import Database
from atlas.storage.units.support import (
    MAX_TEXT,
    Refusal,
    SupportRefused,
    add_agent_reply,
    close_ticket,
    close_ticket_by_id,
)
from atlas.telegram.callbacks import SupportTicketCb
from atlas.telegram.config import BotConfig
from atlas.telegram.i18n import Translator, bundled


class SupportChatFilter(Filter):
    """Passes only messages in the chat ``config.support_chat_id``, and presses of buttons on
    messages of that chat (none when it is unset)."""

    async def __call__(self, event: TelegramObject, config: BotConfig | None = None) -> bool:
        """True for a message, or a press on a message, in the support chat."""
        if config is None or config.support_chat_id is None:
            return False
        if isinstance(event, CallbackQuery):
            # An inline message (no ``message``) or an inaccessible one is never the support chat's.
            message = event.message
            return isinstance(message, Message) and message.chat.id == config.support_chat_id
        return isinstance(event, Message) and event.chat.id == config.support_chat_id


def _agent_language(message: Message, translator: Translator) -> str:
    return translator.language_for(message.from_user.language_code if message.from_user else None)


def _agent_name(message: Message) -> str:
    user = message.from_user
    if user is None:
        return ""
    return " ".join(part for part in (user.first_name, user.last_name) if part)


def build_support_chat_router() -> Router:
    """The support chat's router (first after payments, see ``atlas.runtime.telegram_tree``)."""
    router = Router(name="support_chat")
    router.message.filter(SupportChatFilter())
    router.callback_query.filter(SupportChatFilter())

    @router.message(Command("close"), F.reply_to_message)
    async def on_close(message: Message, db: Database, clock: Clock) -> None:
        assert message.reply_to_message is not None
        tr = bundled()
        closed = await db.run(
            close_ticket,
            support_chat_id=message.chat.id,
            reply_to_message_id=message.reply_to_message.message_id,
            agent_id=message.from_user.id if message.from_user else 0,
            now=clock.now(),
        )
        if closed is None:
            return  # not a ticket's message
        key = "support.chat.already_closed" if closed.already_closed else "support.chat.closed"
        await message.reply(
            tr.t(_agent_language(message, tr), key, ticket=closed.ticket_id), parse_mode="HTML"
        )

    @router.message(F.reply_to_message)
    async def on_reply(message: Message, db: Database, clock: Clock) -> None:
        assert message.reply_to_message is not None
        tr = bundled()
        lang = _agent_language(message, tr)
        text = message.text
        if text is not None and text.startswith("/"):
            return  # a command meant for another bot, or a typo: never sent to a user
        if text is None:
            # A photo, a sticker: tell the agent it does not reach the user, if it was a ticket's.
            text = ""
        try:
            reply = await db.run(
                add_agent_reply,
                support_chat_id=message.chat.id,
                reply_to_message_id=message.reply_to_message.message_id,
                agent_message_id=message.message_id,
                agent_id=message.from_user.id if message.from_user else 0,
                agent_name=_agent_name(message),
                text=text,
                now=clock.now(),
            )
        except SupportRefused as refused:
            answer = {
                Refusal.EMPTY: tr.t(lang, "support.chat.text_only"),
                Refusal.TOO_LONG: tr.t(lang, "support.chat.too_long", limit=MAX_TEXT),
                Refusal.UNSTORABLE: tr.t(lang, "support.chat.unstorable"),
                Refusal.CLOSED: tr.t(
                    lang, "support.chat.closed_ticket", ticket=refused.params.get("ticket", "?")
                ),
            }.get(refused.reason, tr.t(lang, "errors.generic"))
            await message.reply(answer, parse_mode="HTML")
            return
        if reply is None or not reply.stored:
            return  # agents talking among themselves, or a redelivered update (already confirmed)
        await message.reply(tr.t(lang, "support.chat.delivered", ticket=reply.ticket_id), parse_mode="HTML")

    @router.callback_query(SupportTicketCb.filter())
    async def on_close_button(
        callback: CallbackQuery, callback_data: SupportTicketCb, db: Database, clock: Clock
    ) -> None:
        tr = bundled()
        lang = tr.language_for(callback.from_user.language_code)
        closed = await db.run(
            close_ticket_by_id,
            ticket_id=callback_data.ticket_id,
            agent_id=callback.from_user.id,
            now=clock.now(),
        )
        if closed is None:
            await callback.answer(tr.t(lang, "errors.button_expired"), show_alert=True)
            return
        key = "support.chat.already_closed" if closed.already_closed else "support.chat.closed"
        text = tr.t(lang, key, ticket=closed.ticket_id)
        if closed.already_closed:
            await callback.answer(text)
            return
        await callback.answer()
        if isinstance(callback.message, Message):
            await callback.message.reply(text, parse_mode="HTML")

    @router.callback_query()
    async def on_other_button(callback: CallbackQuery) -> None:
        """No other button belongs in the support chat: answered (the spinner stops), nothing done."""
        await callback.answer()

    @router.message()
    async def on_other(message: Message) -> None:
        """Everything else in the support chat is the agents' own talk: taken, and left alone."""

    return router
