"""What the web chat page is shown: one JSON view per message, and what changed since a cursor.

Pure reads of the emulator's state (no I/O, nothing changed), so the HTTP layer in
:mod:`._webchat` only decodes, waits and answers.

The cursor is the pair (records in the chat's log, next message id): the log grows with everything
the bot does (send, edit, delete) and the message id with everything either side sends, so any
change to the chat moves one of the two, and the messages touched since a cursor are the ids
allocated since plus the ids in the new log records. A cursor from another run, or one so old that
the change set passes the page size, gets a *reset*: the newest messages, to be drawn afresh.
"""

from __future__ import annotations

import heapq
import re
from dataclasses import dataclass
from typing import Any

from atlas.testing.botapi._core import ChatState, EmulatorCore
from atlas.testing.botapi._payments import STARS
from atlas.testing.botapi._telegram_html import linkify, safe_href, to_nodes

HISTORY_LIMIT = 100
"""The most messages one history answer carries (a reset shows the newest this many)."""

_CURSOR = re.compile(r"^([0-9]{1,12})-([0-9]{1,12})$")

LABELS: dict[str, dict[str, str]] = {
    "en": {"pay": "Pay", "paid": "Paid", "edited": "edited", "message": "Message", "send": "Send",
           "you_are": "Chatting as", "photo": "photo", "file": "file"},
    "ru": {"pay": "Оплатить", "paid": "Оплачено", "edited": "изменено", "message": "Сообщение",
           "send": "Отправить", "you_are": "Вы пишете как", "photo": "фото", "file": "файл"},
}
"""The page's own words, by the user's language (English for any other)."""


def page_language(language_code: str | None) -> str:
    """The page's language for a user whose client says ``language_code``: ru or en."""
    return "ru" if (language_code or "").lower().startswith("ru") else "en"


def labels(language_code: str | None) -> dict[str, str]:
    """The page's words for a user of ``language_code``."""
    return LABELS[page_language(language_code)]


@dataclass(frozen=True, slots=True)
class Cursor:
    """A point in a chat's history: how many log records and message ids there were."""

    log: int
    next_id: int

    @classmethod
    def of(cls, chat: ChatState) -> Cursor:
        """The chat's cursor now."""
        return cls(len(chat.log), chat.next_message_id)

    @classmethod
    def parse(cls, raw: str) -> Cursor:
        """Read ``"<log>-<next id>"``; ``ValueError`` for anything else."""
        match = _CURSOR.match(raw)
        if match is None:
            raise ValueError(f"cursor must look like <digits>-<digits>, got {raw[:40]!r}")
        return cls(int(match.group(1)), int(match.group(2)))

    def __str__(self) -> str:
        return f"{self.log}-{self.next_id}"


def history(core: EmulatorCore, chat: ChatState, since: Cursor | None) -> dict[str, Any]:
    """The messages changed (and the ids deleted) since ``since``, or a reset; with the new cursor."""
    now = Cursor.of(chat)
    stale = (
        since is None
        or since.log > now.log
        or since.next_id > now.next_id
        or now.log - since.log > HISTORY_LIMIT
        or now.next_id - since.next_id > HISTORY_LIMIT
    )
    if since is None or stale:
        newest = sorted(heapq.nlargest(HISTORY_LIMIT, chat.messages))
        return {
            "cursor": str(now), "reset": True, "deleted": [],
            "messages": [message_view(core, chat, chat.messages[mid]) for mid in newest],
        }
    touched = set(range(since.next_id, now.next_id))
    touched.update(record.message_id for record in chat.log[since.log : now.log])
    present = sorted(mid for mid in touched if mid in chat.messages)
    return {
        "cursor": str(now), "reset": False,
        "deleted": sorted(touched.difference(present)),
        "messages": [message_view(core, chat, chat.messages[mid]) for mid in present],
    }


def message_view(core: EmulatorCore, chat: ChatState, message: dict[str, Any]) -> dict[str, Any]:
    """One message as the page draws it: side, text nodes, photo, document, invoice, keyboard."""
    words = labels(chat.user.get("language_code"))
    message_id = int(message["message_id"])
    view: dict[str, Any] = {
        "id": message_id,
        "side": "bot" if message["from"]["id"] == core.bot_id else "user",
        "edited": words["edited"] if "edit_date" in message else None,
    }
    text = message.get("text", message.get("caption"))
    if text is not None:
        record = chat.text_records.get(message_id)
        if record is not None and record.text is not None:
            view["text"] = to_nodes(record.text, record.parse_mode)
        else:
            view["text"] = linkify(str(text))
    if "photo" in message:
        view["photo"] = _file_view(core, message["photo"][-1]["file_id"], words["photo"])
    if "document" in message:
        document = message["document"]
        view["document"] = _file_view(core, document["file_id"], document.get("file_name") or words["file"])
    keyboard = _keyboard(message)
    if "invoice" in message:
        invoice = message["invoice"]
        total, currency = int(invoice["total_amount"]), str(invoice["currency"])
        view["invoice"] = {
            "title": invoice["title"],
            "description": invoice["description"],
            "amount": _amount(total, currency),
        }
        if keyboard is None:
            # Telegram draws the pay button itself when the bot sends none.
            kind = "pay" if currency == STARS else "other"
            keyboard = [[{"text": f"{words['pay']} {_amount(total, currency)}", "kind": kind}]]
    if "successful_payment" in message:
        payment = message["successful_payment"]
        view["payment"] = f"✅ {words['paid']} {_amount(int(payment['total_amount']), payment['currency'])}"
    if keyboard is not None:
        view["keyboard"] = keyboard
    return view


def _amount(total: int, currency: str) -> str:
    return f"⭐ {total}" if currency == STARS else f"{total} {currency}"


def _file_view(core: EmulatorCore, file_id: str, name: str) -> dict[str, Any]:
    kept = core.file_data.get(file_id) is not None
    return {"name": name, "url": f"/webchat/file/{file_id}" if kept else None}


def _keyboard(message: dict[str, Any]) -> list[list[dict[str, Any]]] | None:
    rows = message.get("reply_markup", {}).get("inline_keyboard")
    if not rows:
        return None
    return [[_button(button) for button in row] for row in rows]


def _button(button: dict[str, Any]) -> dict[str, Any]:
    """A button as the page offers it: press (callback), open (url), pay, or shown but inert."""
    view: dict[str, Any] = {"text": str(button.get("text", ""))}
    url = safe_href(str(button["url"])) if "url" in button else None
    if "callback_data" in button:
        view["kind"] = "callback"
    elif url is not None:
        view.update(kind="url", url=url)
    elif button.get("pay"):
        view["kind"] = "pay"
    else:
        view["kind"] = "other"  # web apps, inline queries, tg:// links: nothing a browser page can do
    return view

