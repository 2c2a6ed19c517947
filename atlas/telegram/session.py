"""The aiogram session Atlas uses: the Bot API over httpx on trio, guarded, bounded, pooled.

aiogram sends every call through ``BaseSession.make_request``; :class:`GuardedHttpxSession`
implements it on an ``httpx.AsyncClient`` (anyio picks trio), so a Bot API call is plain trio code:
no asyncio loop, no bridge crossing, no aiohttp callbacks. It is the narrowest place where *every*
call passes (handlers, the outbox sender, intake's ``getUpdates``), so it is also where contract 1
is enforced: a call made inside a unit of work raises :class:`atlas.net.ConnectionHeldAcrossIO`
before anything else happens (no client is created, no byte is sent).

What it keeps from aiogram, so callers see no difference from ``AiohttpSession``:

- the parameters are prepared by ``BaseSession.prepare_value`` (defaults, enums, dates, nested
  objects); a call without files goes as one JSON body (Telegram accepts it; one ``json.dumps``
  instead of a form of JSON fragments), a call with ``InputFile`` parts as ``multipart/form-data``;
- the per-request ``timeout`` (``request_timeout=`` on a Bot method, else the session's) is a
  *total* deadline, as aiohttp's is;
- answers go through ``self.check_response``, so ``TelegramRetryAfter``, ``TelegramForbiddenError``
  and the rest are raised exactly as before.

Errors translated here (explicit map, chained ``from`` the httpx error)::

    aiogram.exceptions.TelegramNetworkError   the call had no usable answer
    ├── (plain)                               timeout (total deadline or httpx's), connect/read
    │                                         failure, broken HTTP
    └── TelegramResponseTooLarge              the answer exceeded ``max_response_bytes``
    aiogram.exceptions.TelegramEntityTooLarge an upload over ``max_upload_bytes``, refused before
                                              sending (what Telegram itself answers with 413)

Cancellation (``trio.Cancelled``) is never translated; httpx closes the connection of a cancelled
request, so no half-read answer is reused.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator
from typing import Any, cast

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

from atlas.net.guard import ensure_no_connection_held

DEFAULT_MAX_RESPONSE_BYTES = 16 * 1024 * 1024
"""A full ``getUpdates`` batch (100 updates) is well under a megabyte; 16 MiB leaves room for any
legitimate answer and still stops a broken or hostile server."""

DEFAULT_MAX_UPLOAD_BYTES = 50 * 1024 * 1024
"""Telegram's own limit for files a bot uploads."""

# The explicit map of httpx failures (most specific first); everything else propagates.
_NETWORK_ERRORS: tuple[tuple[type[Exception], str], ...] = (
    (httpx.TimeoutException, "Request timeout error"),
    (httpx.TransportError, "network error"),
    (httpx.DecodingError, "undecodable answer"),
)


_JSON = {"Content-Type": "application/json"}


class TelegramResponseTooLarge(TelegramNetworkError):
    """The Bot API's answer was larger than the session's ``max_response_bytes``."""


class GuardedHttpxSession(BaseSession):
    """An aiogram session on ``httpx.AsyncClient`` (trio): guard first, bounded answers, a bounded pool.

    ``limit`` (16) is the pool size and the number of calls in flight: connections are all kept
    alive for reuse (the outbox sender and the handlers talk to one host all the time) and further
    calls wait their turn in FIFO order, within their deadline. Not larger by default because
    httpcore's pool bookkeeping costs O(idle connections x connections) per request and response
    (measured: 16 → 32 connections costs ~10 % more CPU per update against the emulator; 16
    calls in flight at a 100 ms round trip is 160 calls/s). ``timeout`` is the default total deadline of a
    call; ``transport`` the I/O backend (tests may pass an ``httpx.MockTransport``). The client is
    created with the session and again on the first call after :meth:`close`, so a closed session
    can be reused.
    """

    def __init__(
        self,
        api: TelegramAPIServer = PRODUCTION,
        *,
        limit: int = 16,
        timeout: float = 60.0,
        max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES,
        max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        if limit < 1:
            raise ValueError(f"limit must be >= 1, got {limit!r}")
        if not timeout > 0:
            raise ValueError(f"timeout must be positive, got {timeout!r}")
        if max_response_bytes < 1 or max_upload_bytes < 1:
            raise ValueError("max_response_bytes and max_upload_bytes must be >= 1")
        super().__init__(api=api, timeout=timeout)
        self.limit = limit
        # Requests wait for a connection here, not in httpcore's pool: httpcore matches every
        # queued request against every connection on each request and each response (O(n*m);
        # with 50 requests in flight it was a third of the session's CPU); trio's limiter is a
        # FIFO queue. So the pool never sees more requests than connections.
        self._slots = trio.CapacityLimiter(limit)
        self.max_response_bytes = max_response_bytes
        self.max_upload_bytes = max_upload_bytes
        self._transport = transport
        # Built now, not on the first call: loading the CA bundle blocks the scheduler for tens of
        # milliseconds, which belongs at start-up (make_bot), not inside the first handler.
        self._client: httpx.AsyncClient | None = self._new_client()
        # Parsing a URL is a noticeable part of an httpx request; a bot calls few distinct methods.
        self._urls: dict[tuple[str, str], httpx.URL] = {}
        # aiogram's check_response builds ``Response[method.__returning__]`` on every call; pydantic
        # caches parametrized generics weakly, so once the garbage collector drops one it is built
        # again (milliseconds of schema work each; in a profile of the bot benchmark, building them
        # took more CPU than the whole HTTP client). Held here, pydantic's cache entries stay alive;
        # one per return type.
        self._response_types: dict[Any, type[Response[Any]]] = {}

    def _new_client(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(
            limits=httpx.Limits(max_connections=self.limit, max_keepalive_connections=self.limit),
            headers={"User-Agent": f"atlas aiogram/{aiogram_version}"},
            transport=self._transport,
            follow_redirects=False,
            timeout=httpx.Timeout(self.timeout),
        )

    def _http(self) -> httpx.AsyncClient:
        if self._client is None or self._client.is_closed:
            self._client = self._new_client()
        return self._client

    async def close(self) -> None:
        """Close every pooled connection; the next call opens a new client."""
        client, self._client = self._client, None
        if client is not None:
            await client.aclose()

    async def make_request(
        self,
        bot: Bot,
        method: TelegramMethod[TelegramType],
        timeout: int | None = None,  # noqa: ASYNC109 - aiogram's signature, the per-request deadline
    ) -> TelegramType:
        """Check the guard, send the call, and map the answer the way aiogram does."""
        ensure_no_connection_held(f"Telegram {method.__api_method__}")
        deadline = self.timeout if timeout is None else timeout
        url = self._url(bot.token, method.__api_method__)
        files: dict[str, InputFile] = {}
        fields: dict[str, Any] = {}
        for key, value in method.model_dump(warnings=False).items():
            prepared = self.prepare_value(value, bot=bot, files=files, _dumps_json=False)
            if prepared is not None and prepared != "":
                fields[key] = prepared
        try:
            with trio.fail_after(deadline):
                if files:
                    body = await self._multipart(bot, method, fields, files)
                    status, content = await self._post(method, url, httpx_timeout=deadline, **body)
                else:
                    status, content = await self._post(
                        method,
                        url,
                        httpx_timeout=deadline,
                        content=self.json_dumps(fields).encode(),
                        headers=_JSON,
                    )
        except trio.TooSlowError as exc:
            raise TelegramNetworkError(method=method, message="Request timeout error") from exc
        returning = method.__returning__
        if returning not in self._response_types:
            self._response_types[returning] = Response[returning]  # type: ignore[valid-type]
        response = self.check_response(bot=bot, method=method, status_code=status, content=content)
        return cast(TelegramType, response.result)

    async def _multipart(
        self,
        bot: Bot,
        method: TelegramMethod[TelegramType],
        fields: dict[str, Any],
        files: dict[str, InputFile],
    ) -> dict[str, Any]:
        """The ``data=``/``files=`` of a multipart call; every file read whole, within the bound."""
        data = {key: v if isinstance(v, str) else self.json_dumps(v) for key, v in fields.items()}
        parts: dict[str, tuple[str, bytes]] = {}
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
            parts[key] = (file.filename or key, b"".join(chunks))
        return {"data": data, "files": parts}

    def _url(self, token: str, api_method: str) -> httpx.URL:
        key = (token, api_method)
        url = self._urls.get(key)
        if url is None:
            if len(self._urls) >= 1024:  # a bound, though a bot has a few dozen methods
                self._urls.clear()
            url = self._urls[key] = httpx.URL(self.api.api_url(token=token, method=api_method))
        return url

    async def _post(
        self, method: TelegramMethod[Any], url: httpx.URL, *, httpx_timeout: float, **body: Any
    ) -> tuple[int, str]:
        """POST and read the whole (bounded) answer; httpx's errors become ``TelegramNetworkError``."""
        extra: dict[str, Any] = {}
        if httpx_timeout != self.timeout:  # else the client's own Timeout: no object per request
            extra["timeout"] = httpx.Timeout(httpx_timeout)
        try:
            async with self._slots, self._http().stream("POST", url, **extra, **body) as response:
                declared = response.headers.get("content-length")
                if declared is not None and declared.isdigit() and int(declared) > self.max_response_bytes:
                    raise TelegramResponseTooLarge(
                        method=method,
                        message=f"content-length {declared} exceeds {self.max_response_bytes} bytes",
                    )
                chunks: list[bytes] = []
                size = 0
                async for chunk in response.aiter_bytes():
                    size += len(chunk)
                    if size > self.max_response_bytes:
                        raise TelegramResponseTooLarge(
                            method=method, message=f"answer exceeds {self.max_response_bytes} bytes"
                        )
                    chunks.append(chunk)
                return response.status_code, b"".join(chunks).decode("utf-8", errors="replace")
        except (httpx.TimeoutException, httpx.TransportError, httpx.DecodingError) as exc:
            raise TelegramNetworkError(method=method, message=_describe(exc)) from exc

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
        async with self._http().stream(
            "GET", url, headers=headers or {}, timeout=httpx.Timeout(timeout)
        ) as response:
            if raise_for_status:
                response.raise_for_status()
            async for chunk in response.aiter_bytes(chunk_size):
                yield chunk


def _describe(exc: Exception) -> str:
    for kind, label in _NETWORK_ERRORS:
        if isinstance(exc, kind):
            return f"{label}: {type(exc).__name__}: {exc}" if str(exc) else f"{label}: {type(exc).__name__}"
    return f"{type(exc).__name__}: {exc}"  # pragma: no cover - _post catches only the mapped kinds


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
    return Bot(token, session=session, default=default)
