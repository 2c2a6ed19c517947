"""The web chat: a page on the emulator's own server where a person is a Telegram user of the bot.

Routes (next to ``/bot<token>/<method>``, on the same server)::

    GET  /webchat?user=<id>&lang=ru|en   the page (default user: "You", added on first visit)
    GET  /webchat/webchat.js | .css | favicon.svg   its files (the script apart: CSP script-src 'self')
    GET  /webchat/api/history?user=&since=<cursor>&wait=<s>   what changed since the cursor (long poll)
    POST /webchat/api/send   {"user", "text"}                     a ``message`` update
    POST /webchat/api/press  {"user", "message_id", "row", "column"}  a ``callback_query`` update
    POST /webchat/api/pay    {"user", "message_id"}               the Stars flow for an invoice
    GET  /webchat/file/<file_id>         a photo or document the bot uploaded

Every action goes through :class:`EmulatedUser`, so an update from the page is exactly the update a
scripted test user makes. Every answer is JSON ``{"ok": true, ...}`` or, for a bad user, a bad
cursor or a bad body, a 4xx ``{"ok": false, "error": "..."}`` naming what was wrong. Bodies are
bounded and must be ``application/json`` (which a cross-site form cannot send without the browser
asking first); a history answer carries at most ``HISTORY_LIMIT`` messages (``_webchat_view``).
"""

from __future__ import annotations

import functools
import importlib.resources
import json
import re
import string
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from html import escape
from typing import Any, Final
from urllib.parse import quote

import trio
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import BaseRoute, Route

from atlas.testing.botapi._core import EmulatorCore
from atlas.testing.botapi._payments import STARS
from atlas.testing.botapi._webchat_view import Cursor, history, labels, page_language
from atlas.testing.botapi.errors import NothingInTime, ScriptError
from atlas.testing.botapi.users import EmulatedUser

WEBCHAT_USER_ID: Final = 4_000_000_001
"""The id of the page's default user, "You": far above the ids tests and the demo's crowd use."""
MAX_BODY_BYTES: Final = 16 * 1024
"""A message of 4096 characters, in any script, as JSON."""
MAX_TEXT: Final = 4096
MAX_WAIT: Final = 25.0
"""The longest a history request parks waiting for a change (a browser waits minutes)."""
PRESS_ANSWER_WAIT: Final = 10.0
"""How long a press waits for ``answerCallbackQuery`` to show its text; after that it answers without."""
_LANGUAGES: Final = frozenset({"en", "ru"})
_COMMAND = re.compile(r"^(/[A-Za-z0-9_]{1,32})(?:\s+(.+))?$", re.DOTALL)

PAGE_HEADERS: Final = {
    "content-security-policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; "
        "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    ),
    "referrer-policy": "no-referrer",
    "x-content-type-options": "nosniff",
    "cache-control": "no-store",
}
_FILE_HEADERS: Final = {
    # A bot may upload anything, HTML included: it must not run as a page of this origin.
    "content-security-policy": "default-src 'none'; sandbox",
    "x-content-type-options": "nosniff",
    "cache-control": "private, max-age=3600",
}
_INLINE_TYPES: Final = frozenset({"image/png", "image/jpeg", "image/gif", "image/webp"})
"""Shown in the page; anything else (an SVG can hold a script) is served as a download."""
_ASSET_TYPES: Final = {
    "webchat.js": "text/javascript; charset=utf-8",
    "webchat.css": "text/css; charset=utf-8",
    "favicon.svg": "image/svg+xml",
}


_Handler = Callable[[Request], Awaitable[Response]]


@dataclass(frozen=True, slots=True)
class WebChatUsers:
    """Who the page may be: the emulator's users (a live mapping) and how to make the default one."""

    known: Mapping[int, EmulatedUser]
    default: Callable[[], EmulatedUser]


class _Refused(Exception):
    """A request the web chat answers with ``status`` and a message saying what was wrong."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def _refusal(error: _Refused) -> JSONResponse:
    return JSONResponse({"ok": False, "error": error.message}, status_code=error.status)


def _ok(**fields: Any) -> JSONResponse:
    return JSONResponse({"ok": True, **fields}, headers={"cache-control": "no-store"})


@functools.cache
def _asset(name: str) -> str:
    return (importlib.resources.files("atlas.testing.botapi") / "webchat" / name).read_text("utf-8")


def _int_value(raw: object, name: str) -> int:
    if isinstance(raw, bool) or not isinstance(raw, int | str):
        raise _Refused(400, f"{name} must be an integer")
    try:
        value = int(raw)
    except ValueError:
        raise _Refused(400, f"{name} must be an integer, got {str(raw)[:40]!r}") from None
    if not 0 <= value < 2**52:
        raise _Refused(400, f"{name} is out of range: {value}")
    return value


def _user(users: WebChatUsers, raw: object) -> EmulatedUser:
    if raw is None or raw == "":
        raise _Refused(400, "user is required")
    user_id = _int_value(raw, "user")
    user = users.known.get(user_id)
    if user is None:
        raise _Refused(404, f"no emulated user {user_id}")
    return user


async def _json_body(request: Request) -> dict[str, Any]:
    if not request.headers.get("content-type", "").lower().startswith("application/json"):
        raise _Refused(415, "the body must be application/json")
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > MAX_BODY_BYTES:
        raise _Refused(413, f"the body is larger than {MAX_BODY_BYTES} bytes")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            raise _Refused(413, f"the body is larger than {MAX_BODY_BYTES} bytes")
        chunks.append(chunk)
    try:
        body = json.loads(b"".join(chunks))
    except ValueError:
        raise _Refused(400, "the body is not valid JSON") from None
    if not isinstance(body, dict):
        raise _Refused(400, "the body must be a JSON object")
    return body


def _wait(raw: str | None) -> float:
    if raw is None or raw == "":
        return 0.0
    try:
        seconds = float(raw)
    except ValueError:
        raise _Refused(400, f"wait must be a number of seconds, got {raw[:40]!r}") from None
    if not 0 <= seconds <= MAX_WAIT:
        raise _Refused(400, f"wait must be between 0 and {MAX_WAIT:g} seconds")
    return seconds


def webchat_routes(core: EmulatorCore, users: WebChatUsers) -> list[BaseRoute]:
    """The web chat's routes for the emulator of ``core``."""
    paying: set[tuple[int, int]] = set()
    """(user, invoice message) pairs whose payment is under way: a second tab must not pay twice."""

    def refusing(handler: _Handler) -> _Handler:
        @functools.wraps(handler)
        async def answer(request: Request) -> Response:
            try:
                response: Response = await handler(request)
            except _Refused as error:
                return _refusal(error)
            return response

        return answer

    @refusing
    async def page(request: Request) -> Response:
        raw = request.query_params.get("user")
        user = users.default() if raw is None else _user(users, raw)
        lang = request.query_params.get("lang")
        if lang is not None:
            if lang not in _LANGUAGES:
                raise _Refused(400, f"lang must be one of {sorted(_LANGUAGES)}, got {lang[:20]!r}")
            user.set_language(lang)
        words = labels(user.language_code)
        html = string.Template(_asset("webchat.html")).substitute(
            user=user.id,
            lang=page_language(user.language_code),
            bot=escape(str(core.bot_user["first_name"])),
            username=escape(str(core.bot_user.get("username", ""))),
            name=escape(user.first_name),
            you_are=escape(words["you_are"]),
            placeholder=escape(words["message"]),
            send=escape(words["send"]),
        )
        return HTMLResponse(html, headers=PAGE_HEADERS)

    async def asset(request: Request) -> Response:
        name = str(request.path_params["name"])
        if name not in _ASSET_TYPES:
            return _refusal(_Refused(404, f"no such file: {name[:40]!r}"))
        return Response(_asset(name), media_type=_ASSET_TYPES[name], headers={"cache-control": "no-cache"})

    @refusing
    async def history_route(request: Request) -> Response:
        user = _user(users, request.query_params.get("user"))
        chat = core.chats[user.id]
        raw = request.query_params.get("since")
        try:
            since = Cursor.parse(raw) if raw else None
        except ValueError as exc:
            raise _Refused(400, str(exc)) from None
        wait = _wait(request.query_params.get("wait"))
        if since is not None and wait > 0:
            with trio.move_on_after(wait):
                while Cursor.of(chat) == since:
                    await core.changed.wait()
        return _ok(**history(core, chat, since))

    @refusing
    async def send(request: Request) -> Response:
        body = await _json_body(request)
        user = _user(users, body.get("user"))
        text = body.get("text")
        if not isinstance(text, str) or not text.strip():
            raise _Refused(400, "text must be a non-empty string")
        if len(text) > MAX_TEXT:
            raise _Refused(400, f"text is longer than {MAX_TEXT} characters")
        command = _COMMAND.match(text.strip())
        if command is not None:
            update_id = user.send_command(command.group(1), command.group(2))
        else:
            update_id = user.send_text(text)
        return _ok(update_id=update_id)

    @refusing
    async def press(request: Request) -> Response:
        body = await _json_body(request)
        user = _user(users, body.get("user"))
        message_id, row, column = (_int_value(body.get(key), key) for key in ("message_id", "row", "column"))
        try:
            query_id = user.press_at(message_id, row, column)
        except ScriptError as exc:
            raise _Refused(400, str(exc)) from None
        try:
            answer = await user.callback_answer(query_id, within=PRESS_ANSWER_WAIT)
        except NothingInTime:
            return _ok(answer=None)
        return _ok(answer={"text": answer.text, "show_alert": answer.show_alert})

    @refusing
    async def pay(request: Request) -> Response:
        body = await _json_body(request)
        user = _user(users, body.get("user"))
        message_id = _int_value(body.get("message_id"), "message_id")
        invoice = next(
            (i for i in reversed(core.invoices) if i.chat_id == user.id and i.message_id == message_id), None
        )
        if invoice is None or message_id not in core.chats[user.id].messages:
            raise _Refused(400, f"message {message_id} is not an invoice in the chat of user {user.id}")
        if invoice.currency != STARS:
            raise _Refused(400, f"only Stars invoices can be paid here, this one is in {invoice.currency}")
        if (user.id, message_id) in paying:
            raise _Refused(409, "this invoice is being paid")
        if any(c.user_id == user.id and c.invoice_payload == invoice.payload for c in core.charges.values()):
            raise _Refused(409, "this invoice is already paid")
        paying.add((user.id, message_id))
        try:
            outcome = await user.pay_stars(invoice)
        finally:
            paying.discard((user.id, message_id))
        return _ok(paid=outcome.ok, reason=outcome.reason)

    async def file(request: Request) -> Response:
        file_id = str(request.path_params["file_id"])
        stored = core.file_data.get(file_id)
        if stored is None:
            return _refusal(_Refused(404, "no such file (never uploaded, sent by URL, or no longer kept)"))
        headers = dict(_FILE_HEADERS)
        if stored.content_type not in _INLINE_TYPES:
            meta = core.files.get(file_id)
            name = meta.filename if meta is not None and meta.filename else "file"
            headers["content-disposition"] = f"attachment; filename*=UTF-8''{quote(name, safe='')}"
        return Response(stored.data, media_type=stored.content_type, headers=headers)

    return [
        Route("/webchat", page, methods=["GET"]),
        Route("/webchat/api/history", history_route, methods=["GET"]),
        Route("/webchat/api/send", send, methods=["POST"]),
        Route("/webchat/api/press", press, methods=["POST"]),
        Route("/webchat/api/pay", pay, methods=["POST"]),
        Route("/webchat/file/{file_id}", file, methods=["GET"]),
        Route("/webchat/{name}", asset, methods=["GET"]),
    ]
