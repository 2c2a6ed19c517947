"""The HTTP face of the emulator: ``{base}/bot<token>/<method>`` as a Starlette app (trio via anyio).

Order of checks for one call, as on Telegram: the path (404), the token (401), the method name
(404 ``Not Found``), the body (400/413), then an injected fault, then the flood limits (429) for
``send*`` methods (the per-chat one for every send, the global one for bulk sends only:
:mod:`.rates`), then the method itself. Every error answer is Telegram's envelope
``{"ok": false, "error_code": N, "description": ..., "parameters": {"retry_after": s}}`` with N as
the HTTP status, which is what aiogram maps to its exception classes.
"""

from __future__ import annotations

import hmac
import json
from collections.abc import Sequence
from typing import Any

import trio
from starlette.applications import Starlette
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from atlas.testing.botapi import _messages, _payments, _updates
from atlas.testing.botapi._core import EmulatorCore
from atlas.testing.botapi._params import Params, UploadedFile
from atlas.testing.botapi._registry import METHODS, SEND_METHODS, Described
from atlas.testing.botapi.errors import ApiError, bad_request
from atlas.testing.botapi.records import SendStamp

# The method modules register themselves in METHODS when imported; name them so that the import
# is not mistaken for an unused one.
_METHOD_MODULES = (_messages, _payments, _updates)

MAX_REQUEST_BYTES = 60 * 1024 * 1024
"""Above Telegram's 50 MB upload limit plus form overhead; larger bodies get 413 unread."""


def _too_large() -> ApiError:
    return ApiError(413, "Request Entity Too Large")


def _error_response(error: ApiError) -> JSONResponse:
    return JSONResponse(error.envelope(), status_code=error.code)


async def _read_bounded(request: Request) -> bytes:
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_REQUEST_BYTES:
            raise _too_large()
        chunks.append(chunk)
    return b"".join(chunks)


async def _read_params(request: Request) -> Params:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > MAX_REQUEST_BYTES:
        raise _too_large()
    fields: dict[str, str] = dict(request.query_params)
    files: dict[str, UploadedFile] = {}
    if request.method != "POST":
        return Params(fields)
    content_type = request.headers.get("content-type", "").lower()
    if content_type.startswith("application/json"):
        try:
            body = json.loads(await _read_bounded(request) or b"{}")
        except ValueError:
            raise bad_request("can't parse JSON body") from None
        if not isinstance(body, dict):
            raise bad_request("JSON body must be an object")
        return Params({**fields, **Params.from_json(body).fields()})
    if content_type.startswith(("multipart/form-data", "application/x-www-form-urlencoded")):
        try:
            async with request.form() as form:
                for key, value in form.multi_items():
                    if isinstance(value, UploadFile):
                        if value.size is not None and value.size > MAX_REQUEST_BYTES:
                            raise _too_large()
                        data = await value.read()
                        files[key] = UploadedFile(value.filename, value.content_type, data)
                    else:
                        fields[key] = value
        except HTTPException as exc:
            raise bad_request(f"can't parse request body: {exc.detail}") from exc
    return Params(fields, files)


def _chat_key(core: EmulatorCore, params: Params) -> int | str | None:
    """The call's chat as the rate meter and the faults see it: the numeric id when known."""
    raw = params.raw("chat_id")
    if raw is None or raw == "":
        return None
    if raw.startswith("@"):
        try:
            return core.chat(raw).chat_id
        except ApiError:
            return raw
    try:
        return int(raw)
    except ValueError:
        return raw


async def _answer_latency(core: EmulatorCore, method: str) -> None:
    # The call counts (rates, state) as of its arrival; only its answer is late, like a far server.
    delay = core.answer_latency.get(method.lower(), 0.0)
    if delay > 0:
        await trio.sleep(delay)


def build_app(core: EmulatorCore, extra_routes: Sequence[BaseRoute] = ()) -> Starlette:
    """The ASGI app answering Bot API calls for ``core``'s bot, plus ``extra_routes`` (the web chat)."""

    async def call(request: Request) -> Response:
        token = str(request.path_params["token"])
        method = str(request.path_params["method"])
        if not hmac.compare_digest(token.encode(), core.token.encode()):
            return _error_response(ApiError(401, "Unauthorized"))
        handler = METHODS.get(method.lower())
        if handler is None:
            return _error_response(ApiError(404, "Not Found"))
        core.calls[method] += 1
        try:
            params = await _read_params(request)
        except ApiError as error:
            core.served(method, None, error)
            return _error_response(error)
        # Stamped once the whole request is here, and the limit checked and the slot taken with no
        # await in between: calls in flight together cannot all pass a check none has recorded yet.
        arrived = core.now()
        chat_id = _chat_key(core, params)
        sends = method.lower() in SEND_METHODS
        kind = core.rates.kind(arrived, chat_id)  # bulk, or a reply to a chat talking to the bot
        stamp: SendStamp | None = None
        try:
            fault = core.faults.answer(method, chat_id)
            if fault is not None:
                raise fault
            if sends and core.enforce_limits:
                wait = core.rates.retry_after(arrived, chat_id, kind)
                if wait is not None:
                    raise ApiError(429, f"Too Many Requests: retry after {wait}", retry_after=wait)
            if sends:
                stamp = SendStamp(arrived, method, chat_id, accepted=True, kind=kind)
                core.rates.record(stamp)
            result = await handler(core, params)
        except ApiError as error:
            if stamp is not None:
                core.rates.withdraw(stamp)
            elif sends:
                core.rates.record(SendStamp(arrived, method, chat_id, accepted=False, kind=kind))
            core.served(method, chat_id, error)
            await _answer_latency(core, method)
            return _error_response(error)
        await _answer_latency(core, method)
        body: dict[str, Any] = {"ok": True, "result": result}
        if isinstance(result, Described):
            body = {"ok": True, "result": result.result, "description": result.description}
        return JSONResponse(body)

    async def not_found(request: Request, exc: Exception) -> Response:
        return _error_response(ApiError(404, "Not Found"))

    return Starlette(
        routes=[Route("/bot{token}/{method}", call, methods=["GET", "POST"]), *extra_routes],
        exception_handlers={404: not_found, 405: not_found},
    )
