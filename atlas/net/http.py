"""The one outbound HTTP helper every Atlas client uses.

Why one helper: it is the single place that enforces the connection guard, a timeout on every
request, and a bound on every response body. A client built on it cannot hold a database connection
across HTTP, cannot wait forever, and cannot be made to read an unbounded answer by a broken or
hostile server.

Error hierarchy (translated at this boundary from httpx, chained ``from`` the original)::

    OutboundError                 the remote side could not give a usable answer
    ├── OutboundTimeout           no answer within the timeout
    ├── OutboundUnavailable       could not connect, connection reset, protocol error
    └── OutboundTooLarge          the answer exceeded max_response_bytes

:class:`atlas.net.guard.ConnectionHeldAcrossIO` is deliberately *not* an ``OutboundError``: it is a
programming error and must never be retried or counted as a remote failure.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import httpx

from atlas.net.guard import ensure_no_connection_held

DEFAULT_MAX_RESPONSE_BYTES = 4 * 1024 * 1024


class OutboundError(Exception):
    """The remote side could not give a usable answer."""


class OutboundTimeout(OutboundError):
    """No answer within the timeout."""


class OutboundUnavailable(OutboundError):
    """Could not connect, the connection broke, or the peer spoke broken HTTP."""


class OutboundTooLarge(OutboundError):
    """The response body was larger than the configured bound."""


@dataclass(frozen=True, slots=True)
class OutboundResponse:
    """A fully read, size-bounded HTTP response."""

    status_code: int
    headers: httpx.Headers
    content: bytes

    def json(self) -> Any:
        """Decode the body as JSON (raises ``ValueError`` on garbage)."""
        import json

        return json.loads(self.content)

    @property
    def text(self) -> str:
        """The body decoded as UTF-8 (invalid bytes replaced)."""
        return self.content.decode("utf-8", errors="replace")


class OutboundHttp:
    """An ``httpx.AsyncClient`` with the guard, a timeout and a response bound on every call.

    ``transport`` is the I/O backend: production passes nothing (real sockets), tests may pass an
    ``httpx.MockTransport`` or an ASGI transport. Use it as an async context manager, or call
    :meth:`aclose` when done.

    Cancellation: a cancelled request raises ``trio.Cancelled`` (never translated) and closes the
    underlying connection, so no half-read response is reused.
    """

    def __init__(
        self,
        *,
        base_url: str = "",
        timeout: float = 10.0,
        max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES,
        headers: Mapping[str, str] | None = None,
        max_connections: int = 20,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        if timeout <= 0:
            raise ValueError(f"timeout must be positive, got {timeout!r}")
        if max_response_bytes <= 0:
            raise ValueError(f"max_response_bytes must be positive, got {max_response_bytes!r}")
        self._max_response_bytes = max_response_bytes
        self._client = httpx.AsyncClient(
            base_url=base_url,
            timeout=httpx.Timeout(timeout),
            headers=dict(headers or {}),
            limits=httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections),
            transport=transport,
            follow_redirects=False,
        )

    async def __aenter__(self) -> OutboundHttp:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close every pooled connection."""
        await self._client.aclose()

    async def request(
        self,
        method: str,
        url: str,
        *,
        params: Mapping[str, Any] | None = None,
        json: Any = None,
        content: bytes | None = None,
        headers: Mapping[str, str] | None = None,
        request_timeout: float | None = None,
    ) -> OutboundResponse:
        """Send one request and read its whole (bounded) answer.

        Raises :class:`ConnectionHeldAcrossIO` before any I/O if called inside a unit of work, and
        an :class:`OutboundError` subclass when the remote side fails. HTTP error statuses are
        returned, not raised: the client of a particular API knows what a 4xx means there.
        ``request_timeout`` overrides the client's timeout for this request (long polls).
        """
        ensure_no_connection_held(f"HTTP {method} {self._client.base_url.join(url)}")
        extra: dict[str, Any] = {}
        if request_timeout is not None:
            extra["timeout"] = httpx.Timeout(request_timeout)
        try:
            async with self._client.stream(
                method, url, params=params, json=json, content=content, headers=headers, **extra
            ) as response:
                declared = response.headers.get("content-length")
                if declared is not None and declared.isdigit() and int(declared) > self._max_response_bytes:
                    raise OutboundTooLarge(
                        f"{method} {url}: content-length {declared} exceeds {self._max_response_bytes} bytes"
                    )
                chunks: list[bytes] = []
                size = 0
                async for chunk in response.aiter_bytes():
                    size += len(chunk)
                    if size > self._max_response_bytes:
                        raise OutboundTooLarge(
                            f"{method} {url}: body exceeds {self._max_response_bytes} bytes"
                        )
                    chunks.append(chunk)
                return OutboundResponse(response.status_code, response.headers, b"".join(chunks))
        except httpx.TimeoutException as exc:
            raise OutboundTimeout(f"{method} {url}: no answer in time ({exc.__class__.__name__})") from exc
        except (httpx.TransportError, httpx.DecodingError) as exc:
            raise OutboundUnavailable(f"{method} {url}: {exc.__class__.__name__}: {exc}") from exc
