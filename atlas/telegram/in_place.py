"""Showing a screen where the user pressed: edit the message the button was on, or send anew.

A Telegram-native bot answers a button press by changing the message that carried the button
(``editMessageText``), so the chat holds one live menu instead of a pile of them. A new message is
right only when there is nothing to edit (a typed command, a notice) or the old message cannot
become the new screen:

==============================  =====================================================
the pressed message             what :func:`show_text` does
==============================  =====================================================
none (a typed message)          ``sendMessage``
a text message                  ``editMessageText`` (text and keyboard)
a photo, document, invoice      ``deleteMessage`` then ``sendMessage`` (a text cannot
                                replace a photo in place)
==============================  =====================================================

and :func:`show_photo` the same way round (a text message is deleted, a photo sent). Telegram's
answers to an edit, as a table too (:data:`_EDIT_REFUSALS`): "message is not modified" means the
user already sees this screen — success, nothing to send; "message can't be edited" (and its
relatives: the message is gone, or has no text) means the old message stays and a new one is
sent. Any other error is a real failure and propagates. A delete that fails is harmless (the old
screen stays above the new one) and is not retried.
"""

from __future__ import annotations

import enum
import logging

from aiogram import Bot
from aiogram.exceptions import TelegramBadRequest
from aiogram.types import BufferedInputFile, InlineKeyboardMarkup, Message

_log = logging.getLogger("atlas.telegram.in_place")


class EditRefusal(enum.Enum):
    """What an edit's "Bad Request" means for the screen."""

    ALREADY_SHOWN = "already_shown"
    SEND_NEW = "send_new"


_EDIT_REFUSALS: tuple[tuple[str, EditRefusal], ...] = (
    ("message is not modified", EditRefusal.ALREADY_SHOWN),
    ("message can't be edited", EditRefusal.SEND_NEW),
    ("message to edit not found", EditRefusal.SEND_NEW),
    ("there is no text in the message to edit", EditRefusal.SEND_NEW),
    ("message_id_invalid", EditRefusal.SEND_NEW),
)


def edit_refusal(error: TelegramBadRequest) -> EditRefusal | None:
    """What Telegram's refusal of an edit means (None: an error this module does not handle)."""
    text = error.message.lower()
    for fragment, meaning in _EDIT_REFUSALS:
        if fragment in text:
            return meaning
    return None


def _is_text(message: Message) -> bool:
    return message.text is not None


async def _drop(bot: Bot, message: Message) -> None:
    try:
        await bot.delete_message(message.chat.id, message.message_id)
    except TelegramBadRequest as exc:
        # Too old to delete (48 h) or already gone: the old screen simply stays above the new one.
        _log.debug("could not delete message %d: %s", message.message_id, exc.message)


async def show_text(
    bot: Bot,
    chat_id: int,
    text: str,
    keyboard: InlineKeyboardMarkup | None,
    *,
    replace: Message | None,
) -> Message | None:
    """Show ``text`` (HTML) with ``keyboard``, in place of ``replace`` when it can be (see above).

    Returns the message now showing the screen; None when ``replace`` already showed exactly this.
    """
    if replace is not None and _is_text(replace):
        try:
            edited = await bot.edit_message_text(
                text=text,
                chat_id=replace.chat.id,
                message_id=replace.message_id,
                parse_mode="HTML",
                reply_markup=keyboard,
                disable_web_page_preview=True,
            )
        except TelegramBadRequest as exc:
            meaning = edit_refusal(exc)
            if meaning is None:
                raise
            if meaning is EditRefusal.ALREADY_SHOWN:
                return None
        else:
            return edited if isinstance(edited, Message) else None
    elif replace is not None:
        await _drop(bot, replace)
    return await bot.send_message(
        chat_id, text, parse_mode="HTML", reply_markup=keyboard, disable_web_page_preview=True
    )


async def show_photo(
    bot: Bot,
    chat_id: int,
    photo: BufferedInputFile,
    caption: str,
    keyboard: InlineKeyboardMarkup | None,
    *,
    replace: Message | None,
) -> Message:
    """Show a photo screen in place of ``replace``: a photo cannot be edited into a text message,
    so the pressed message is deleted and the photo sent."""
    if replace is not None:
        await _drop(bot, replace)
    return await bot.send_photo(chat_id, photo, caption=caption, parse_mode="HTML", reply_markup=keyboard)
