"""An outbox row's payload → the text, parse mode and keyboard of one ``sendMessage``. Pure.

``outbox.payload`` is a JSON object in one of two forms:

* literal: ``{"text": str, "parse_mode": "HTML" | null, "buttons": [[button, ...], ...]}`` where a
  button is ``{"text": ..., "callback_data": ...}`` or ``{"text": ..., "url": ...}``;
  ``parse_mode`` and ``buttons`` are optional (no parse mode, no keyboard).
* template (what :func:`atlas.storage.units.outbox.enqueue_message` writes): no ``"text"`` key;
  ``kind`` is the locale key and the payload's other fields are its placeholders, rendered in the
  recipient's ``users.language`` at send time, as HTML; an optional ``"buttons"`` as above.
  Times (``*_at``, ISO 8601) and amounts (``*_minor``) are formatted then, for that language
  (:func:`atlas.telegram.formatting.notice_values`): a notice never shows a raw value.

A payload that cannot become a message raises :class:`PayloadError` naming the field; the sender
fails the row with that reason and sends nothing (checked before any I/O).
"""

from __future__ import annotations

from typing import Any

from aiogram.types import InlineKeyboardButton, InlineKeyboardMarkup

from atlas.storage.units.delivery import ClaimedMessage
from atlas.telegram.formatting import notice_values
from atlas.telegram.i18n import TranslationError, Translator

MAX_TEXT = 4096
PARSE_MODES = frozenset({"HTML", "MarkdownV2", "Markdown"})

Rendered = tuple[str, str | None, InlineKeyboardMarkup | None]
"""What :func:`render` returns: text, parse mode, keyboard."""


class SenderError(Exception):
    """Base of the sender's own errors."""


class PayloadError(SenderError):
    """An outbox row's payload cannot become a message (the row fails with this reason)."""


def render(message: ClaimedMessage, translator: Translator) -> Rendered:
    """The text, parse mode and keyboard of ``message`` (see the payload format above).

    Raises :class:`PayloadError` naming the field when the payload cannot be sent.
    """
    payload = message.payload
    if "__invalid__" in payload:
        raise PayloadError(f"payload must be a JSON object, got {payload['__invalid__']!r:.80}")
    markup = _keyboard(payload.get("buttons"))
    if "text" in payload:
        text = payload["text"]
        parse_mode = payload.get("parse_mode")
        if parse_mode is not None and parse_mode not in PARSE_MODES:
            raise PayloadError(
                f"payload.parse_mode must be one of {sorted(PARSE_MODES)} or null, got {parse_mode!r}"
            )
    else:
        # Times and amounts are raw in the payload; typed here, they are formatted for the
        # recipient's language by the translator (atlas.telegram.formatting).
        params = notice_values(
            {k: v for k, v in payload.items() if k != "buttons"}, translator.formats.currency
        )
        try:
            text = translator.t(message.language, message.kind, **params)
        except TranslationError as exc:
            raise PayloadError(f"kind {message.kind!r}: {exc}") from exc
        parse_mode = "HTML"
    if not isinstance(text, str) or not text.strip():
        raise PayloadError(f"payload.text must be a non-empty string, got {text!r:.80}")
    if len(text) > MAX_TEXT:
        raise PayloadError(f"payload.text is {len(text)} characters, Telegram allows {MAX_TEXT}")
    return text, parse_mode, markup


def _keyboard(buttons: Any) -> InlineKeyboardMarkup | None:
    if buttons is None:
        return None
    if not isinstance(buttons, list) or not all(isinstance(row, list) and row for row in buttons):
        raise PayloadError("payload.buttons must be a list of non-empty lists of buttons")
    rows: list[list[InlineKeyboardButton]] = []
    for r, row in enumerate(buttons):
        out: list[InlineKeyboardButton] = []
        for c, button in enumerate(row):
            where = f"payload.buttons[{r}][{c}]"
            if not isinstance(button, dict) or not isinstance(button.get("text"), str) or not button["text"]:
                raise PayloadError(f"{where} must be an object with a non-empty text")
            actions = [k for k in ("callback_data", "url") if k in button]
            if len(actions) != 1 or not isinstance(button[actions[0]], str):
                raise PayloadError(f"{where} needs exactly one of callback_data or url (a string)")
            out.append(InlineKeyboardButton(text=button["text"], **{actions[0]: button[actions[0]]}))
        rows.append(out)
    return InlineKeyboardMarkup(inline_keyboard=rows) if rows else None
