"""Bot API methods about messages: getMe, send, edit, delete, files, callback answers, commands."""

from __future__ import annotations

import json
from typing import Any, Literal
from urllib.parse import urlsplit

from atlas.testing.botapi._core import ChatState, EmulatorCore
from atlas.testing.botapi._files import content_type_of
from atlas.testing.botapi._params import Params, UploadedFile
from atlas.testing.botapi._registry import api_method
from atlas.testing.botapi._validate import (
    normalise_parse_mode,
    plain_text,
    validate_commands,
    validate_inline_markup,
    validate_reply_markup,
)
from atlas.testing.botapi.errors import ApiError, bad_request, query_too_old
from atlas.testing.botapi.records import CallbackAnswer, ChatRecord, FileMeta

MAX_TEXT = 4096
MAX_CAPTION = 1024
MAX_PHOTO_BYTES = 10 * 1024 * 1024
MAX_DOCUMENT_BYTES = 50 * 1024 * 1024
_NOT_MODIFIED = (
    "message is not modified: specified new message content and reply markup are exactly the same "
    "as a current content and reply markup of the message"
)
_CHAT_ACTIONS = frozenset(
    {"typing", "upload_photo", "record_video", "upload_video", "record_voice", "upload_voice",
     "upload_document", "choose_sticker", "find_location", "record_video_note", "upload_video_note"}
)


@api_method("getMe")
async def get_me(core: EmulatorCore, p: Params) -> dict[str, Any]:
    """The bot's own User object."""
    return {
        **core.bot_user,
        "can_join_groups": True,
        "can_read_all_group_messages": False,
        "supports_inline_queries": False,
        "can_connect_to_business": False,
        "has_main_web_app": False,
    }


def _text_and_mode(
    p: Params, field: str, *, limit: int, required: bool
) -> tuple[str | None, str | None, str | None]:
    """(raw text, plain text, canonical parse mode) of a text or caption field, validated."""
    mode = normalise_parse_mode(p.get_str("parse_mode"))
    raw = p.get_str(field)
    if raw is None or raw == "":
        if required:
            raise bad_request("message text is empty")
        return None, None, mode
    plain = plain_text(raw, mode)
    if required and not plain.strip():
        raise bad_request("message text is empty")
    if len(plain) > limit:
        raise bad_request("message is too long" if field == "text" else "message caption is too long")
    return raw, plain, mode


@api_method("sendMessage", sends=True)
async def send_message(core: EmulatorCore, p: Params) -> dict[str, Any]:
    """Send a text message; the answer carries the plain text and the inline keyboard, if any."""
    chat = core.writable_chat(p.chat_id())
    raw, plain, mode = _text_and_mode(p, "text", limit=MAX_TEXT, required=True)
    markup = validate_reply_markup(p.get_json("reply_markup"))
    message = core.new_bot_message(chat, markup)
    message["text"] = plain
    core.record(chat, ChatRecord(
        kind="message", chat_id=chat.chat_id, message_id=message["message_id"], time=core.now(),
        date=message["date"], text=raw, plain_text=plain, parse_mode=mode, reply_markup=markup,
    ))
    return message


# -- files ------------------------------------------------------------------------------------------


def _png_size(data: bytes) -> tuple[int, int]:
    # Enough for the QR codes Atlas sends (segno writes PNG); other formats report 0 x 0.
    if data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR" and len(data) >= 24:
        return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    return 0, 0


def _store_file(
    core: EmulatorCore, value: UploadedFile | str, kind: Literal["photo", "document"]
) -> FileMeta:
    if isinstance(value, UploadedFile):
        limit = MAX_PHOTO_BYTES if kind == "photo" else MAX_DOCUMENT_BYTES
        if len(value.data) > limit:
            raise ApiError(413, "Request Entity Too Large")
        if not value.data:
            raise bad_request("file must be non-empty")
        width, height = _png_size(value.data) if kind == "photo" else (0, 0)
        meta = FileMeta(
            file_id=core.new_id(f"EMU{kind[0].upper()}"), file_unique_id=core.new_id("U"), source="upload",
            filename=value.filename, size=len(value.data), content_type=value.content_type,
            width=width, height=height,
        )
        core.files[meta.file_id] = meta
        kind_of_bytes = content_type_of(value.data, value.content_type, value.filename)
        core.file_data.put(meta.file_id, value.data, kind_of_bytes)
        return meta
    if value.startswith(("http://", "https://")):
        name = urlsplit(value).path.rsplit("/", 1)[-1] or None
        meta = FileMeta(
            file_id=core.new_id(f"EMU{kind[0].upper()}"), file_unique_id=core.new_id("U"), source="url",
            filename=name, size=None, content_type=None,
        )
        core.files[meta.file_id] = meta
        return meta
    known = core.files.get(value)
    if known is None:
        raise bad_request("wrong file identifier/HTTP URL specified")
    return FileMeta(
        file_id=known.file_id, file_unique_id=known.file_unique_id, source="file_id", filename=known.filename,
        size=known.size, content_type=known.content_type, width=known.width, height=known.height,
    )


async def _send_file(core: EmulatorCore, p: Params, kind: Literal["photo", "document"]) -> dict[str, Any]:
    chat = core.writable_chat(p.chat_id())
    value = p.file(kind)
    if value is None:
        raise bad_request(f"there is no {kind} in the request")
    raw, plain, mode = _text_and_mode(p, "caption", limit=MAX_CAPTION, required=False)
    markup = validate_reply_markup(p.get_json("reply_markup"))
    meta = _store_file(core, value, kind)
    message = core.new_bot_message(chat, markup)
    size = {"file_size": meta.size} if meta.size is not None else {}
    if kind == "photo":
        message["photo"] = [{
            "file_id": meta.file_id, "file_unique_id": meta.file_unique_id,
            "width": meta.width, "height": meta.height, **size,
        }]
    else:
        document: dict[str, Any] = {"file_id": meta.file_id, "file_unique_id": meta.file_unique_id, **size}
        if meta.filename:
            document["file_name"] = meta.filename
        if meta.content_type:
            document["mime_type"] = meta.content_type
        message["document"] = document
    if plain is not None:
        message["caption"] = plain
    core.record(chat, ChatRecord(
        kind=kind, chat_id=chat.chat_id, message_id=message["message_id"], time=core.now(),
        date=message["date"], text=raw, plain_text=plain, parse_mode=mode, reply_markup=markup, file=meta,
    ))
    return message


@api_method("sendPhoto", sends=True)
async def send_photo(core: EmulatorCore, p: Params) -> dict[str, Any]:
    """Send a photo (uploaded part, known file_id or URL), with an optional caption."""
    return await _send_file(core, p, "photo")


@api_method("sendDocument", sends=True)
async def send_document(core: EmulatorCore, p: Params) -> dict[str, Any]:
    """Send a document (uploaded part, known file_id or URL), with an optional caption."""
    return await _send_file(core, p, "document")


# -- edits and deletion -----------------------------------------------------------------------------


def _bot_message_to_edit(core: EmulatorCore, p: Params) -> tuple[ChatState, dict[str, Any]]:
    if p.has("inline_message_id"):
        raise bad_request("inline messages are not supported by the emulator")
    chat = core.writable_chat(p.chat_id())
    message_id = p.get_int("message_id")
    if message_id is None:
        raise bad_request("message identifier is not specified")
    message = chat.messages.get(message_id)
    if message is None:
        raise bad_request("message to edit not found")
    if message["from"]["id"] != core.bot_id:
        raise bad_request("message can't be edited")
    return chat, message


@api_method("editMessageText")
async def edit_message_text(core: EmulatorCore, p: Params) -> dict[str, Any]:
    """Replace a bot message's text; like Telegram, an edit without reply_markup drops the keyboard."""
    chat, message = _bot_message_to_edit(core, p)
    if "text" not in message:
        raise bad_request("there is no text in the message to edit")
    raw, plain, mode = _text_and_mode(p, "text", limit=MAX_TEXT, required=True)
    markup = validate_inline_markup(p.get_json("reply_markup"))
    if plain == message["text"] and markup == message.get("reply_markup"):
        raise bad_request(_NOT_MODIFIED)
    message["text"] = plain
    _set_markup(message, markup)
    message["edit_date"] = core.unix_now()
    core.record(chat, ChatRecord(
        kind="edit_text", chat_id=chat.chat_id, message_id=message["message_id"], time=core.now(),
        date=message["edit_date"], text=raw, plain_text=plain, parse_mode=mode, reply_markup=markup,
    ))
    return message


@api_method("editMessageReplyMarkup")
async def edit_message_reply_markup(core: EmulatorCore, p: Params) -> dict[str, Any]:
    """Replace (or, without reply_markup, remove) a bot message's inline keyboard."""
    chat, message = _bot_message_to_edit(core, p)
    markup = validate_inline_markup(p.get_json("reply_markup"))
    if markup == message.get("reply_markup"):
        raise bad_request(_NOT_MODIFIED)
    _set_markup(message, markup)
    message["edit_date"] = core.unix_now()
    core.record(chat, ChatRecord(
        kind="edit_markup", chat_id=chat.chat_id, message_id=message["message_id"], time=core.now(),
        date=message["edit_date"], reply_markup=markup,
    ))
    return message


def _set_markup(message: dict[str, Any], markup: dict[str, Any] | None) -> None:
    if markup is None:
        message.pop("reply_markup", None)
    else:
        message["reply_markup"] = markup


@api_method("deleteMessage")
async def delete_message(core: EmulatorCore, p: Params) -> bool:
    """Delete a message (the bot's or the user's) from the chat."""
    chat = core.writable_chat(p.chat_id())
    message_id = p.get_int("message_id")
    if message_id is None or message_id not in chat.messages:
        raise bad_request("message to delete not found")
    del chat.messages[message_id]
    core.record(chat, ChatRecord(
        kind="delete", chat_id=chat.chat_id, message_id=message_id, time=core.now(), date=core.unix_now(),
    ))
    return True


# -- the rest ---------------------------------------------------------------------------------------


@api_method("answerCallbackQuery")
async def answer_callback_query(core: EmulatorCore, p: Params) -> bool:
    """Answer a button press once; a second answer or an unknown id gets Telegram's "query is too old"."""
    query_id = p.need_str("callback_query_id")
    pending = core.callbacks.get(query_id)
    if pending is None or pending.answer is not None:
        raise query_too_old()
    text = p.get_str("text")
    if text is not None and len(text) > 200:
        raise bad_request("MESSAGE_TOO_LONG")
    answer = CallbackAnswer(
        query_id=query_id, user_id=pending.user_id, data=pending.data, text=text,
        show_alert=p.get_bool("show_alert"), url=p.get_str("url"), time=core.now(),
    )
    pending.answer = answer
    core.callback_answers.append(answer)
    core.changed.fire()
    return True


@api_method("sendChatAction")
async def send_chat_action(core: EmulatorCore, p: Params) -> bool:
    """"typing..." and friends: checked, not recorded, not rate-limited."""
    core.writable_chat(p.chat_id())
    if p.get_str("action") not in _CHAT_ACTIONS:
        raise bad_request("wrong parameter action in request")
    return True


def _commands_key(p: Params) -> tuple[str, str]:
    scope = p.get_json("scope")
    scope_key = json.dumps(scope, sort_keys=True) if scope else json.dumps({"type": "default"})
    return scope_key, p.get_str("language_code") or ""


@api_method("setMyCommands")
async def set_my_commands(core: EmulatorCore, p: Params) -> bool:
    """Store the command list for (scope, language_code)."""
    commands = validate_commands(p.get_json("commands"))
    core.commands[_commands_key(p)] = commands
    return True


@api_method("getMyCommands")
async def get_my_commands(core: EmulatorCore, p: Params) -> list[dict[str, str]]:
    """The command list for (scope, language_code), [] if none was set."""
    return list(core.commands.get(_commands_key(p), []))


@api_method("deleteMyCommands")
async def delete_my_commands(core: EmulatorCore, p: Params) -> bool:
    """Forget the command list for (scope, language_code)."""
    core.commands.pop(_commands_key(p), None)
    return True
