"""A lean HTTP/1.1 client for one origin: h11 over trio streams, a bounded keep-alive pool.

Why not httpx here: the Bot session makes every call a bot makes (a few hundred a second under
load) to one host, and httpx's general machinery (request and response models, header
normalisation, the httpcore pool's per-request bookkeeping, anyio's stream wrappers) was the
largest single CPU cost of ``atlas run`` in a profile (23 % of its busy CPU). This module does only
what that one use needs: ``POST`` (and ``GET``) a whole body, read a bounded whole answer, keep
the connection for the next call. h11 does the HTTP parsing (it is what httpcore itself uses).

What it guarantees:

* at most ``limit`` requests in flight, waiting in FIFO order (a ``trio.CapacityLimiter``), so
  at most ``limit`` connections exist;
* a connection goes back to the pool only after a complete, keep-alive exchange; a cancelled or
  failed request closes its connection, so a half-read answer is never reused;
* an idle connection the server has closed is noticed before reuse (a zero-timeout ``poll``: an
  idle connection that is readable has been closed, or holds bytes nobody asked for), and is
  closed instead of used. A request is never sent twice: if the server closes a kept-alive
  connection just as a request goes out, that request fails with :class:`ReadError` (aiohttp
  retries only idempotent methods in that case, and a Bot API ``POST`` is not one). To keep that
  race away, a connection idle for ``keepalive_expiry`` seconds (default 4, under the common 5 s
  of servers' keep-alive timeouts, Hypercorn's and httpx's included) is closed instead of reused:
  a server closing it at the moment a request goes out turned an outbox send into ``unknown``;
* answers are bounded: ``max_response_bytes`` is checked against ``Content-Length`` before
  reading and against the bytes read while reading.

Deadlines are the caller's: wrap a call in ``trio.fail_after``. Cancellation propagates as is.

Errors (translated at this boundary, chained ``from`` the OS, TLS or h11 error)::

    HttpError                  the origin gave no usable answer
    ├── ConnectError           could not open a connection (refused, DNS, TLS handshake)
    ├── ReadError              the connection broke while sending or reading
    ├── RemoteProtocolError    the answer was not valid HTTP/1.1
    └── ResponseTooLarge       the answer exceeded ``max_response_bytes``
"""

from __future__ import annotations

import select
import ssl
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit

import h11
import trio

Header = tuple[bytes, bytes]
OpenStream = Callable[[str, int], Awaitable[trio.abc.Stream]]
"""The I/O backend: open a byte stream to ``(host, port)``. Tests may pass their own."""

_READ_CHUNK = 65536


class HttpError(Exception):
    """The origin gave no usable answer."""


class ConnectError(HttpError):
    """Could not open a connection (refused, unresolvable, TLS handshake failed)."""


class ReadError(HttpError):
    """The connection broke while the request was sent or the answer read."""


class RemoteProtocolError(HttpError):
    """The answer was not valid HTTP/1.1."""


class ResponseTooLarge(HttpError):
    """The answer exceeded the pool's ``max_response_bytes``."""


@dataclass(frozen=True, slots=True)
class Answer:
    """A whole HTTP answer: status, headers (lower-case names) and body."""

    status: int
    headers: Sequence[Header]
    body: bytes


class _Connection:
    """One kept-alive connection: a trio stream and its h11 state machine."""

    __slots__ = ("fileno", "h11", "idle_since", "stream")

    def __init__(self, stream: trio.abc.Stream) -> None:
        self.stream = stream
        self.idle_since = 0.0  # trio time the connection went back to the pool
        self.h11 = h11.Connection(h11.CLIENT, max_incomplete_event_size=64 * 1024)
        inner = stream.transport_stream if isinstance(stream, trio.SSLStream) else stream
        self.fileno = inner.socket.fileno() if isinstance(inner, trio.SocketStream) else -1

    def closed_by_peer(self) -> bool:
        """Whether an idle connection is readable: the server closed it (or sent something unasked).

        Either way it cannot carry the next request. A stream without a socket (a test backend)
        is taken as open.
        """
        if self.fileno < 0:
            return False
        poller = select.poll()
        poller.register(self.fileno, select.POLLIN)
        return bool(poller.poll(0))

    async def aclose(self) -> None:
        with trio.CancelScope(shield=True):
            await self.stream.aclose()


class Http11Pool:
    """Keep-alive HTTP/1.1 connections to one origin (``http://host:port`` or ``https://...``).

    ``limit`` is both the number of requests in flight and of connections; more callers wait
    their turn in FIFO order. ``open_stream`` is the I/O backend (default: TCP, plus TLS with
    ``ssl_context`` for ``https``). Build it at start-up: the default TLS context loads the CA
    bundle, which blocks for tens of milliseconds. :meth:`aclose` closes the idle connections;
    the pool can be used again afterwards.
    """

    def __init__(
        self,
        origin: str,
        *,
        limit: int,
        max_response_bytes: int,
        headers: Sequence[Header] = (),
        open_stream: OpenStream | None = None,
        ssl_context: ssl.SSLContext | None = None,
        keepalive_expiry: float = 4.0,
    ) -> None:
        parts = urlsplit(origin)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"origin must be http(s)://host[:port], got {origin!r}")
        if limit < 1 or max_response_bytes < 1:
            raise ValueError("limit and max_response_bytes must be >= 1")
        if not keepalive_expiry > 0:
            raise ValueError(f"keepalive_expiry must be > 0 seconds, got {keepalive_expiry!r}")
        self.keepalive_expiry = keepalive_expiry
        self.host = parts.hostname
        self.port = parts.port or (443 if parts.scheme == "https" else 80)
        self.tls = parts.scheme == "https"
        default_port = self.port == (443 if self.tls else 80)
        host_header = self.host if default_port else f"{self.host}:{self.port}"
        self._base_headers: list[Header] = [(b"host", host_header.encode("ascii")), *headers]
        self.limit = limit
        self.max_response_bytes = max_response_bytes
        self._slots = trio.CapacityLimiter(limit)
        self._idle: deque[_Connection] = deque()
        if open_stream is None:
            if self.tls and ssl_context is None:
                ssl_context = ssl.create_default_context()
            open_stream = self._open_tcp
        self._ssl = ssl_context
        self._open_stream = open_stream
        self.connections_opened = 0

    async def _open_tcp(self, host: str, port: int) -> trio.abc.Stream:
        stream: trio.abc.Stream = await trio.open_tcp_stream(host, port)
        if self.tls:
            assert self._ssl is not None
            tls = trio.SSLStream(stream, self._ssl, server_hostname=host, https_compatible=True)
            await tls.do_handshake()
            stream = tls
        return stream

    async def request(
        self,
        method: bytes,
        target: bytes,
        headers: Sequence[Header] = (),
        body: bytes = b"",
        *,
        before_write: Callable[[], Awaitable[None]] | None = None,
    ) -> Answer:
        """Send one request and return the whole answer (see the module docstring for errors).

        ``before_write`` is awaited with the connection ready and the request encoded, just before
        its bytes are written: a rate limiter that must count actual writes, not intentions.
        """
        async with self._slots:
            connection = await self._checkout()
            try:
                answer = await self._exchange(connection, method, target, headers, body, before_write)
            except BaseException:
                await connection.aclose()
                raise
            if connection.h11.our_state is h11.DONE and connection.h11.their_state is h11.DONE:
                connection.h11.start_next_cycle()
                connection.idle_since = trio.current_time()
                self._idle.append(connection)
            else:  # the server asked to close (``Connection: close``, HTTP/1.0)
                await connection.aclose()
            return answer

    @property
    def idle_connections(self) -> int:
        """Connections kept alive for the next call."""
        return len(self._idle)

    async def aclose(self) -> None:
        """Close every idle connection (calls in flight close theirs when they end)."""
        idle, self._idle = self._idle, deque()
        for connection in idle:
            await connection.aclose()

    async def _checkout(self) -> _Connection:
        expired_before = trio.current_time() - self.keepalive_expiry
        while self._idle:
            connection = self._idle.pop()  # the most recently used is the likeliest still open
            if connection.idle_since > expired_before and not connection.closed_by_peer():
                return connection
            await connection.aclose()
        return await self._connect()

    async def _connect(self) -> _Connection:
        try:
            stream = await self._open_stream(self.host, self.port)
        except (OSError, ssl.SSLError, trio.BrokenResourceError) as exc:
            # trio wraps TLS failures in BrokenResourceError: the reason is its cause.
            reason = exc.__cause__ if isinstance(exc, trio.BrokenResourceError) and exc.__cause__ else exc
            raise ConnectError(f"{self.host}:{self.port}: {type(reason).__name__}: {reason}") from exc
        self.connections_opened += 1
        return _Connection(stream)

    async def _exchange(
        self,
        connection: _Connection,
        method: bytes,
        target: bytes,
        headers: Sequence[Header],
        body: bytes,
        before_write: Callable[[], Awaitable[None]] | None,
    ) -> Answer:
        state = connection.h11
        all_headers = [*self._base_headers, *headers, (b"content-length", b"%d" % len(body))]
        try:
            data = state.send(h11.Request(method=method, target=target, headers=all_headers))
            if body:
                data += state.send(h11.Data(data=body))
            data += state.send(h11.EndOfMessage())
        except h11.LocalProtocolError as exc:
            raise ValueError(f"cannot send this request: {exc}") from exc
        if before_write is not None:
            await before_write()
        try:
            await connection.stream.send_all(data)
            return await self._read_answer(connection)
        except (OSError, ssl.SSLError, trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            raise ReadError(f"{type(exc).__name__}: {exc}") from exc
        except h11.RemoteProtocolError as exc:
            raise RemoteProtocolError(str(exc)) from exc

    async def _read_answer(self, connection: _Connection) -> Answer:
        state = connection.h11
        status = 0
        headers: list[Header] = []
        chunks: list[bytes] = []
        size = 0
        while True:
            event = state.next_event()
            if event is h11.NEED_DATA:
                state.receive_data(bytes(await connection.stream.receive_some(_READ_CHUNK)))
            elif isinstance(event, h11.Response):
                status, headers = event.status_code, list(event.headers)
                for name, value in headers:
                    if name == b"content-length" and value.isdigit() and int(value) > self.max_response_bytes:
                        raise ResponseTooLarge(
                            f"content-length {value.decode()} exceeds {self.max_response_bytes} bytes"
                        )
            elif isinstance(event, h11.Data):
                size += len(event.data)
                if size > self.max_response_bytes:
                    raise ResponseTooLarge(f"answer exceeds {self.max_response_bytes} bytes")
                chunks.append(bytes(event.data))
            elif isinstance(event, h11.EndOfMessage):
                return Answer(status, headers, b"".join(chunks))
            elif isinstance(event, h11.ConnectionClosed):
                raise ReadError("the server closed the connection mid-answer")
            # h11.InformationalResponse (100 Continue) and PAUSED cannot carry the answer: go on
