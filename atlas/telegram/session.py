"""The aiogram session Atlas uses: the Bot API over HTTP/1.1 on trio, guarded, bounded, pooled.

aiogram sends every call through ``BaseSession.make_request``; :class:`GuardedHttpxSession`
implements it on :class:`atlas.net.http11.Http11Pool` (h11 over trio sockets, keep-alive), so a
Bot API call is plain trio code: no asyncio loop, no bridge crossing, no aiohttp callbacks.
(The name is historical: it ran on ``httpx.AsyncClient`` until httpx turned out to be the largest
single CPU cost of the bot; downloads, which are rare, still use httpx.)

It is the narrowest place where *every* call passes (handlers, the outbox sender, intake's
``getUpdates``), so it is also where contract 1 is enforced: a call made inside a unit of work
raises :class:`atlas.net.ConnectionHeldAcrossIO` before anything else happens (no connection is
taken, no byte is sent).

What it keeps from aiogram, so callers see no difference from ``AiohttpSession``:

- the parameters are prepared by ``BaseSession.prepare_value`` (defaults, enums, dates, nested
  objects); a call without files goes as one JSON body (Telegram accepts it; one ``json.dumps``
  instead of a form of JSON fragments), a call with ``InputFile`` parts as ``multipart/form-data``;
- the per-request ``timeout`` (``request_timeout=`` on a Bot method, else the session's) is a
  *total* deadline, as aiohttp's is;
- answers go through ``self.check_response``, so ``TelegramRetryAfter``, ``TelegramForbiddenError``
  and the rest are raised exactly as before.

Errors translated here (explicit map, chained ``from`` the :mod:`atlas.net.http11` error)::

    aiogram.exceptions.TelegramNetworkError   the call had no usable answer
    ├── (plain)                               timeout (the total deadline), connect/read
    │                                         failure, broken HTTP
    └── TelegramResponseTooLarge              the answer exceeded ``max_response_bytes``
    aiogram.exceptions.TelegramEntityTooLarge an upload over ``max_upload_bytes``, refused before
                                              sending (what Telegram itself answers with 413)

Cancellation (``trio.Cancelled``) is never translated; the pool closes the connection of a cancelled
request, so no half-read answer is reused.
"""

from __future__ import annotations

import secrets
import ssl
from collections.abc import AsyncGenerator, Awaitable, Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any, cast
from urllib.parse import urlsplit

import certifi
import httpx
import trio
from aiogram import Bot
from aiogram.__meta__ import __version__ as aiogram_version
from aiogram.client.default import DefaultBotProperties
from aiogram.client.session.base import BaseSession
from aiogram.client.telegram import PRODUCTION, TelegramAPIServer
from aiogram.exceptions import TelegramEntityTooLarge, TelegramNetworkError
from aiogram.methods.base import Response, TelegramMethod, TelegramType
from aiogram.types import FSInputFile, InputFile

from atlas.net import http11
from atlas.net.guard import ensure_no_connection_held
from atlas.telegram.chat_gate import ChatGate
from atlas.telegram.throttling import WaitOutThrottling

DEFAULT_MAX_RESPONSE_BYTES = 16 * 1024 * 1024
"""A full ``getUpdates`` batch (100 updates) is well under a megabyte; 16 MiB leaves room for any
legitimate answer and still stops a broken or hostile server."""

DEFAULT_MAX_UPLOAD_BYTES = 50 * 1024 * 1024
"""Telegram's own limit for files a bot uploads."""

_JSON = [(b"content-type", b"application/json")]

_before_write: ContextVar[Callable[[], Awaitable[None]] | None] = ContextVar("bot_before_write", default=None)


@contextmanager
def writes_paced_by(gate: Callable[[], Awaitable[None]]) -> Iterator[None]:
    """Bot calls made inside this block await ``gate()`` just before their request is written.

    The outbox sender wraps its ``sendMessage`` in it with a
    :meth:`atlas.telegram.pacing.WriteSlot.before_write`, so that its global rate is counted at the
    wire (and up to the answer), not at the start slot (a context variable: it
    reaches through aiogram's ``Bot`` to the session without a parameter aiogram does not have;
    it is the calling task's alone).
    """
    token = _before_write.set(gate)
    try:
        yield
    finally:
        _before_write.reset(token)


class TelegramResponseTooLarge(TelegramNetworkError):
    """The Bot API's answer was larger than the session's ``max_response_bytes``."""


class GuardedHttpxSession(BaseSession):
    """An aiogram session on a keep-alive HTTP/1.1 pool (trio): guard first, bounded answers and pool.

    ``limit`` (16) is the pool size and the number of calls in flight: connections are all kept
    alive for reuse (the outbox sender and the handlers talk to one host all the time) and further
    calls wait their turn in FIFO order, within their deadline (16 calls in flight at a 100 ms
    round trip is 160 calls/s). ``timeout`` is the default total deadline of a call;
    ``open_stream`` the I/O backend of the pool (:data:`atlas.net.http11.OpenStream`; default TCP,
    and TLS against certifi's CA bundle for ``https``). The pool is built with the session (the CA
    bundle is loaded then, at start-up, not inside the first handler); a closed session can be
    used again.
    """

    def __init__(
        self,
        api: TelegramAPIServer = PRODUCTION,
        *,
        limit: int = 16,
        timeout: float = 60.0,
        max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES,
        max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES,
        open_stream: http11.OpenStream | None = None,
    ) -> None:
        if limit < 1:
            raise ValueError(f"limit must be >= 1, got {limit!r}")
        if not timeout > 0:
            raise ValueError(f"timeout must be positive, got {timeout!r}")
        if max_response_bytes < 1 or max_upload_bytes < 1:
            raise ValueError("max_response_bytes and max_upload_bytes must be >= 1")
        super().__init__(api=api, timeout=timeout)
        self.limit = limit
        self.max_response_bytes = max_response_bytes
        self.max_upload_bytes = max_upload_bytes
        origin = urlsplit(api.api_url(token="0", method="getMe"))
        self._origin = f"{origin.scheme}://{origin.netloc}"
        tls = ssl.create_default_context(cafile=certifi.where()) if origin.scheme == "https" else None
        self._pool = http11.Http11Pool(
            self._origin,
            limit=limit,
            max_response_bytes=max_response_bytes,
            headers=[(b"user-agent", f"atlas aiogram/{aiogram_version}".encode())],
            open_stream=open_stream,
            ssl_context=tls,
        )
        # The request target of each (token, method): a bot calls a few dozen distinct methods.
        self._targets: dict[tuple[str, str], bytes] = {}
        # aiogram's check_response builds ``Response[method.__returning__]`` on every call; pydantic
        # caches parametrized generics weakly, so once the garbage collector drops one it is built
        # again (milliseconds of schema work each; in a profile of the bot benchmark, building them
        # took more CPU than the whole HTTP client). Held here, pydantic's cache entries stay alive;
        # one per return type.
        self._response_types: dict[Any, type[Response[Any]]] = {}

    async def close(self) -> None:
        """Close every idle pooled connection; the next call opens a new one."""
        await self._pool.aclose()

    async def make_request(
        self,
        bot: Bot,
        method: TelegramMethod[TelegramType],
        timeout: int | None = None,  # noqa: ASYNC109 - aiogram's signature, the per-request deadline
    ) -> TelegramType:
        """Check the guard, send the call, and map the answer the way aiogram does."""
        ensure_no_connection_held(f"Telegram {method.__api_method__}")
        deadline = self.timeout if timeout is None else timeout
        target = self._target(bot.token, method.__api_method__)
        files: dict[str, InputFile] = {}
        fields: dict[str, Any] = {}
        for key, value in method.model_dump(warnings=False).items():
            prepared = self.prepare_value(value, bot=bot, files=files, _dumps_json=False)
            if prepared is not None and prepared != "":
                fields[key] = prepared
        answer: http11.Answer | None = None
        try:
            # A bare cancel scope, not ``trio.fail_after``: that one is a generator context manager
            # around the same scope, and its overhead is measurable at two calls per update.
            with trio.CancelScope(relative_deadline=deadline):
                if files:
                    headers, body = await self._multipart(bot, method, fields, files)
                else:
                    headers, body = _JSON, self.json_dumps(fields).encode()
                answer = await self._pool.request(
                    b"POST", target, headers, body, before_write=_before_write.get()
                )
        except http11.ResponseTooLarge as exc:
            raise TelegramResponseTooLarge(method=method, message=str(exc)) from exc
        except http11.HttpError as exc:
            raise TelegramNetworkError(
                method=method, message=f"network error: {type(exc).__name__}: {exc}"
            ) from exc
        if answer is None:  # the deadline passed: the scope swallowed its Cancelled
            timed_out = trio.TooSlowError()  # the cause fail_after would have given
            raise TelegramNetworkError(method=method, message="Request timeout error") from timed_out
        returning = method.__returning__
        if returning not in self._response_types:
            self._response_types[returning] = Response[returning]  # type: ignore[valid-type]
        content = answer.body.decode("utf-8", errors="replace")
        response = self.check_response(bot=bot, method=method, status_code=answer.status, content=content)
        return cast(TelegramType, response.result)

    async def _multipart(
        self,
        bot: Bot,
        method: TelegramMethod[TelegramType],
        fields: dict[str, Any],
        files: dict[str, InputFile],
    ) -> tuple[list[http11.Header], bytes]:
        """A ``multipart/form-data`` body (headers, bytes); every file read whole, within the bound."""
        boundary = secrets.token_hex(16)
        parts: list[bytes] = []
        for key, value in fields.items():
            text = value if isinstance(value, str) else self.json_dumps(value)
            parts.append(_part_head(boundary, key) + b"\r\n" + text.encode() + b"\r\n")
        total = 0
        for key, file in files.items():
            chunks: list[bytes] = []
            async for chunk in _read_input_file(file, bot):
                total += len(chunk)
                if total > self.max_upload_bytes:
                    raise TelegramEntityTooLarge(
                        method=method, message=f"upload exceeds {self.max_upload_bytes} bytes"
                    )
                chunks.append(chunk)
            head = _part_head(boundary, key, file.filename or key)
            head += b"content-type: application/octet-stream\r\n\r\n"
            parts.append(head + b"".join(chunks) + b"\r\n")
        parts.append(b"--" + boundary.encode() + b"--\r\n")
        content_type = b"multipart/form-data; boundary=" + boundary.encode()
        return [(b"content-type", content_type)], b"".join(parts)

    def _target(self, token: str, api_method: str) -> bytes:
        key = (token, api_method)
        target = self._targets.get(key)
        if target is None:
            if len(self._targets) >= 1024:  # a bound, though a bot has a few dozen methods
                self._targets.clear()
            url = urlsplit(self.api.api_url(token=token, method=api_method))
            if f"{url.scheme}://{url.netloc}" != self._origin:
                raise ValueError(f"{api_method}: the API server moved from {self._origin}")
            path = url.path + (f"?{url.query}" if url.query else "")
            target = self._targets[key] = path.encode()
        return target

    async def stream_content(
        self,
        url: str,
        headers: dict[str, Any] | None = None,
        timeout: int = 30,  # noqa: ASYNC109 - aiogram's signature
        chunk_size: int = 65536,
        raise_for_status: bool = True,
    ) -> AsyncGenerator[bytes, None]:
        """Stream a download (``bot.download``, ``URLInputFile``) in ``chunk_size`` pieces.

        Guarded like every call. ``raise_for_status``: an error status raises
        ``httpx.HTTPStatusError`` (aiohttp's session raises its own ``ClientResponseError``).
        """
        ensure_no_connection_held(f"download {url}")
        # Downloads are rare (none on the hot path): a client of their own, closed with them.
        client = httpx.AsyncClient(follow_redirects=False, timeout=httpx.Timeout(timeout))
        async with client, client.stream("GET", url, headers=headers or {}) as response:
            if raise_for_status:
                response.raise_for_status()
            async for chunk in response.aiter_bytes(chunk_size):
                yield chunk


def _part_head(boundary: str, name: str, filename: str | None = None) -> bytes:
    """The opening lines of one form part (names are aiogram's field names and our file names)."""
    disposition = f'form-data; name="{_quoted(name)}"'
    if filename is not None:
        disposition += f'; filename="{_quoted(filename)}"'
    return f"--{boundary}\r\ncontent-disposition: {disposition}\r\n".encode()


def _quoted(value: str) -> str:
    # What browsers (and httpx) do: quotes and line breaks percent-escaped.
    return value.replace("\\", "\\\\").replace('"', "%22").replace("\r", "%0D").replace("\n", "%0A")


async def _read_input_file(file: InputFile, bot: Bot) -> AsyncGenerator[bytes, None]:
    """The bytes of an aiogram ``InputFile``, read on trio.

    ``FSInputFile.read`` uses aiofiles (asyncio's executor), so a file on disk is read with
    ``trio.Path`` instead; every other kind (``BufferedInputFile``, ``URLInputFile`` through
    :meth:`GuardedHttpxSession.stream_content`) is read by its own ``read``.
    """
    if isinstance(file, FSInputFile):
        async with await trio.open_file(file.path, "rb") as handle:
            while chunk := await handle.read(file.chunk_size):
                yield chunk
        return
    async for chunk in file.read(bot):
        yield chunk


def make_bot(token: str, api_base: str | None = None, *, default: DefaultBotProperties | None = None) -> Bot:
    """Build the aiogram ``Bot`` with a :class:`GuardedHttpxSession`.

    ``api_base`` points it at another Bot API server (the emulator, a local ``telegram-bot-api``):
    calls then go to ``{api_base}/bot{token}/{method}``. aiogram checks the token's shape
    (``<digits>:<text>``) and raises ``TokenValidationError`` for a malformed one. Its calls are
    trio code: make them from trio tasks. The session opens lazily on the first call.
    """
    if api_base is None:
        session = GuardedHttpxSession()
    else:
        session = GuardedHttpxSession(api=TelegramAPIServer.from_base(api_base.rstrip("/")))
    # Outermost first. A handler's reply refused with 429 waits and goes again
    # (atlas.telegram.throttling); every attempt then takes its chat's turn (atlas.telegram.chat_gate),
    # which replies and the outbox sender share, so that they do not earn that 429 in one process.
    session.middleware(WaitOutThrottling())
    session.middleware(ChatGate())
    return Bot(token, session=session, default=default)
