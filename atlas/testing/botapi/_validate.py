"""Telegram's input checks that catch real bot bugs: HTML entities, keyboards, commands.

Only what the emulator can check cheaply and what a bot actually gets wrong: an unescaped ``<`` in a
user's name, an unbalanced tag, callback data over 64 bytes, a button without an action, a command
with capitals. The descriptions follow Telegram's wording so that log lines and tests read the same
as in production. MarkdownV2 is not parsed (its escaping rules are long); its text is taken as is.
"""

from __future__ import annotations

import html
import re
from typing import Any

from atlas.testing.botapi.errors import ApiError, bad_request

_SUPPORTED_TAGS = frozenset(
    {"b", "strong", "i", "em", "u", "ins", "s", "strike", "del", "span", "tg-spoiler", "a", "tg-emoji",
     "code", "pre", "blockquote"}
)
_TAG = re.compile(r"<(/?)([A-Za-z][A-Za-z0-9-]*)(\s[^<>]*)?>")
_ENTITY = re.compile(r"&(?:lt|gt|amp|quot|#[0-9]{1,7}|#x[0-9a-fA-F]{1,6});")
_PARSE_MODES = {"html": "HTML", "markdown": "Markdown", "markdownv2": "MarkdownV2"}

_BUTTON_ACTIONS = (
    "url", "callback_data", "web_app", "login_url", "switch_inline_query",
    "switch_inline_query_current_chat", "switch_inline_query_chosen_chat", "copy_text",
    "callback_game", "pay",
)
_COMMAND = re.compile(r"^[a-z0-9_]{1,32}$")
_MAX_CALLBACK_DATA_BYTES = 64


def _entities_error(what: str) -> ApiError:
    return bad_request(f"can't parse entities: {what}")


def _byte_offset(text: str, index: int) -> int:
    return len(text[:index].encode("utf-8"))


def normalise_parse_mode(parse_mode: str | None) -> str | None:
    """Telegram's canonical spelling of ``parse_mode`` (it accepts any case); 400 if unknown."""
    if parse_mode is None or parse_mode == "":
        return None
    canonical = _PARSE_MODES.get(parse_mode.lower())
    if canonical is None:
        raise bad_request(f"unsupported parse_mode {parse_mode!r}")
    return canonical


def plain_text(text: str, parse_mode: str | None) -> str:
    """What the user sees for ``text`` under ``parse_mode``; 400 for HTML Telegram cannot parse."""
    if parse_mode != "HTML":
        return text
    out: list[str] = []
    open_tags: list[str] = []
    i = 0
    while i < len(text):
        char = text[i]
        if char == "<":
            match = _TAG.match(text, i)
            if match is None:
                following = re.match(r"/?([^\s<>]*)", text[i + 1 :])
                name = following.group(1) if following else ""
                offset = _byte_offset(text, i)
                raise _entities_error(f'Unsupported start tag "{name}" at byte offset {offset}')
            closing, name, attrs = match.group(1) == "/", match.group(2).lower(), match.group(3) or ""
            if name not in _SUPPORTED_TAGS:
                kind, offset = ("end" if closing else "start"), _byte_offset(text, i)
                raise _entities_error(f'Unsupported {kind} tag "{name}" at byte offset {offset}')
            if closing:
                if not open_tags:
                    raise _entities_error(f'Unexpected end tag at byte offset {_byte_offset(text, i)}')
                if open_tags[-1] != name:
                    raise _entities_error(
                        f'Unmatched end tag at byte offset {_byte_offset(text, i)}, '
                        f'expected "</{open_tags[-1]}>", found "</{name}>"'
                    )
                open_tags.pop()
            else:
                if name == "span" and "tg-spoiler" not in attrs:
                    raise _entities_error('Tag "span" must have class "tg-spoiler"')
                open_tags.append(name)
            i = match.end()
            continue
        if char == "&":
            entity = _ENTITY.match(text, i)
            if entity is not None:
                out.append(html.unescape(entity.group(0)))
                i = entity.end()
                continue
            # Telegram keeps an ampersand that starts no known entity as a literal character.
        out.append(char)
        i += 1
    if open_tags:
        raise _entities_error(f'Can\'t find end tag corresponding to start tag "{open_tags[-1]}"')
    return "".join(out)


def _markup_error() -> ApiError:
    return bad_request("can't parse reply keyboard markup JSON object")


def validate_reply_markup(markup: Any) -> dict[str, Any] | None:
    """Check a decoded ``reply_markup``; return it, or None when absent; 400 when Telegram would refuse."""
    if markup is None:
        return None
    if not isinstance(markup, dict):
        raise _markup_error()
    if "inline_keyboard" in markup:
        _validate_inline_keyboard(markup["inline_keyboard"])
    elif "keyboard" in markup:
        rows = markup["keyboard"]
        if not isinstance(rows, list) or not all(isinstance(row, list) for row in rows):
            raise _markup_error()
        for row in rows:
            for button in row:
                if not (isinstance(button, str) or (isinstance(button, dict) and button.get("text"))):
                    raise bad_request("can't parse keyboard button: Text must be non-empty")
    elif "remove_keyboard" not in markup and "force_reply" not in markup:
        raise _markup_error()
    return markup


def validate_inline_markup(markup: Any) -> dict[str, Any] | None:
    """Like :func:`validate_reply_markup` but only an inline keyboard is allowed (edits, invoices)."""
    checked = validate_reply_markup(markup)
    if checked is not None and "inline_keyboard" not in checked:
        raise bad_request("inline keyboard expected")
    return checked


def _validate_inline_keyboard(rows: Any) -> None:
    if not isinstance(rows, list) or not all(isinstance(row, list) for row in rows):
        raise _markup_error()
    for row in rows:
        for button in row:
            if not isinstance(button, dict):
                raise bad_request("can't parse inline keyboard button: it must be an Object")
            text = button.get("text")
            if not isinstance(text, str) or not text:
                raise bad_request("can't parse inline keyboard button: Text must be non-empty")
            actions = [name for name in _BUTTON_ACTIONS if name in button]
            if not actions:
                raise bad_request("text buttons are unallowed in the inline keyboard")
            if len(actions) > 1:
                raise bad_request(f"can't parse inline keyboard button: more than one action: {actions}")
            if "callback_data" in button:
                data = button["callback_data"]
                size = len(data.encode("utf-8")) if isinstance(data, str) else 0
                if not 1 <= size <= _MAX_CALLBACK_DATA_BYTES:
                    raise bad_request("BUTTON_DATA_INVALID")
            if "url" in button:
                url = button["url"]
                if not isinstance(url, str) or not url.startswith(("http://", "https://", "tg://")):
                    raise bad_request("BUTTON_URL_INVALID")


def validate_commands(commands: Any) -> list[dict[str, str]]:
    """Check ``setMyCommands``' list: at most 100, names ``[a-z0-9_]{1,32}``, descriptions 1–256 chars."""
    if not isinstance(commands, list) or len(commands) > 100:
        raise bad_request("can't parse commands JSON object")
    checked: list[dict[str, str]] = []
    for item in commands:
        if not isinstance(item, dict):
            raise bad_request("can't parse BotCommand: BotCommand must be an Object")
        name, description = item.get("command"), item.get("description")
        if not isinstance(name, str) or not _COMMAND.match(name.removeprefix("/")):
            raise bad_request("BOT_COMMAND_INVALID")
        if not isinstance(description, str) or not 1 <= len(description) <= 256:
            raise bad_request("BOT_COMMAND_DESCRIPTION_INVALID")
        checked.append({"command": name.removeprefix("/"), "description": description})
    return checked
