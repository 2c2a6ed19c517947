"""Unary gRPC calls over HTTP/2 (the ``h2`` state machine) on a trio TCP stream.

Why not ``grpcio``: it runs its own threads and event loop and does not run on trio. A unary gRPC
call is small enough to speak directly: ``POST /<service>/<Method>`` with ``content-type:
application/grpc`` and ``te: trailers``; the body is one length-prefixed message (1 byte
compressed-flag 0, 4-byte big-endian length, protobuf bytes); the answer is headers, one
length-prefixed message and trailers carrying ``grpc-status`` (0 is OK) and a percent-encoded
``grpc-message``. A failed call may answer "trailers-only": the status sits in the headers.

One :class:`GrpcChannel` keeps one HTTP/2 connection and multiplexes concurrent calls on it, the
way httpcore's HTTP/2 connection does, without a background task: whoever waits for a response
takes the *read lock*, reads one chunk, and hands every event to the stream it belongs to, so a
task may read another task's answer. Writes go through a *write lock* so frames leave in the order
the h2 state machine produced them; stream creation (id allocation + HEADERS) is synchronous, so
stream ids are always used in increasing order.

Failure and cancellation:

- Connect errors, EOF, resets and GOAWAY raise :class:`CoreUnavailable`; broken HTTP/2 or gRPC
  framing raises :class:`CoreProtocolError`; a non-zero grpc-status raises :class:`CoreRejected`.
- Every call runs under ``trio.fail_after(timeout)``; the deadline becomes ``CoreUnavailable``.
  Other cancellation is never translated.
- A call cancelled while *reading* leaves the connection usable (trio's ``receive_some`` loses no
  data on cancel) and resets its stream; a call cancelled in the middle of *sending* may have
  written half a frame, so the connection is marked broken and the next call reconnects.
- A call on a kept-alive connection that dies before any response headers (typically: the core
  restarted) is retried once on a fresh connection. The request may have been processed; the
  core's own answers (user exists / not found) make the retry safe for add and remove.
"""

from __future__ import annotations

import contextlib
import struct
import urllib.parse
from typing import Final

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions
import trio

from atlas.net.guard import ensure_no_connection_held
from atlas.vpn.core_errors import CoreError, CoreProtocolError, CoreRejected, CoreUnavailable

MAX_REQUEST_BYTES: Final = 16 * 1024 - 5  # one DATA frame at the smallest legal frame size
DEFAULT_MAX_RESPONSE_BYTES: Final = 1024 * 1024
_READ_CHUNK: Final = 64 * 1024

Headers = list[tuple[bytes, bytes]]


def split_address(address: str) -> tuple[str, int]:
    """Split ``host:port`` (or ``[v6]:port``) into its parts; raises ``ValueError`` naming the value."""
    host, sep, port_text = address.rpartition(":")
    if not sep or not host or not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ValueError(f"core API address must be host:port, got {address!r}")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return host, int(port_text)


def frame_message(payload: bytes) -> bytes:
    """Wrap one protobuf message in gRPC's length-prefixed framing (uncompressed)."""
    return b"\x00" + struct.pack(">I", len(payload)) + payload


def unframe_message(body: bytes) -> bytes:
    """Extract the single message of a unary response body; raises :class:`CoreProtocolError`."""
    if len(body) < 5:
        raise CoreProtocolError(f"gRPC: response body of {len(body)} bytes has no message frame")
    flag = body[0]
    (length,) = struct.unpack(">I", body[1:5])
    if flag != 0:
        raise CoreProtocolError(f"gRPC: compressed-flag {flag} in response (compression not negotiated)")
    if length != len(body) - 5:
        raise CoreProtocolError(f"gRPC: message frame says {length} bytes, body holds {len(body) - 5}")
    return body[5:]


class _StreamState:
    """What has arrived so far for one HTTP/2 stream (one call)."""

    __slots__ = ("data", "ended", "error", "headers", "trailers")

    def __init__(self) -> None:
        self.headers: Headers | None = None
        self.data = bytearray()
        self.trailers: Headers | None = None
        self.ended = False
        self.error: CoreError | None = None


def _raise_copy(error: CoreError) -> None:
    """Raise a fresh exception like ``error`` (one instance must not be raised in several tasks)."""
    raise type(error)(*error.args) from error


class _Connection:
    """One HTTP/2 client connection; several calls may run on it at once (see module docstring)."""

    def __init__(self, sock: trio.SocketStream, authority: str, max_response_bytes: int) -> None:
        self._sock = sock
        self._authority = authority.encode("ascii")
        self._max_response_bytes = max_response_bytes
        self._h2 = h2.connection.H2Connection(
            h2.config.H2Configuration(client_side=True, header_encoding=None)
        )
        self._write_lock = trio.Lock()
        self._read_lock = trio.Lock()
        self._streams: dict[int, _StreamState] = {}
        self._preface = b""  # the first frame header, until it is checked
        self._preface_checked = False
        self.broken: CoreError | None = None

    def _break(self, error: CoreError) -> None:
        if self.broken is None:
            self.broken = error

    async def start(self) -> None:
        """Send the connection preface and our SETTINGS."""
        self._h2.initiate_connection()
        await self._flush()

    async def aclose(self) -> None:
        """Close the socket; calls still waiting on this connection raise ``CoreUnavailable``."""
        self._break(CoreUnavailable("gRPC connection closed by the driver"))
        await trio.aclose_forcefully(self._sock)

    async def _flush(self) -> None:
        async with self._write_lock:
            data = self._h2.data_to_send()
            if not data:
                return
            if self.broken is not None:
                _raise_copy(self.broken)
            sent = False
            try:
                await self._sock.send_all(data)
                sent = True
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
                raise CoreUnavailable(f"gRPC connection to the core broke while sending: {exc}") from exc
            finally:
                if not sent:
                    # Cancelled or failed mid-write: the peer may have half a frame; unusable.
                    self._break(CoreUnavailable("gRPC connection abandoned in the middle of a write"))

    async def request(self, path: str, body: bytes, headers: Headers, state: _StreamState) -> None:
        """Send one request and wait until ``state`` holds the whole answer.

        Raises ``CoreUnavailable`` / ``CoreProtocolError``; on any exit before the answer is
        complete (cancellation included) the stream is reset.
        """
        if self.broken is not None:
            _raise_copy(self.broken)
        try:
            stream_id = self._h2.get_next_available_stream_id()
            self._h2.send_headers(stream_id, headers)
            self._h2.send_data(stream_id, body, end_stream=True)
        except h2.exceptions.H2Error as exc:
            raise CoreProtocolError(f"gRPC: cannot start a stream on the connection: {exc!r}") from exc
        self._streams[stream_id] = state
        try:
            await self._flush()
            while True:
                if state.error is not None:
                    _raise_copy(state.error)
                if state.ended:
                    return
                if self.broken is not None:
                    _raise_copy(self.broken)
                async with self._read_lock:
                    # Another reader may have completed this stream while we waited for the lock.
                    if not state.ended and state.error is None and self.broken is None:
                        await self._read_once()
        finally:
            del self._streams[stream_id]
            if not state.ended and self.broken is None:
                # The RST_STREAM leaves with the next flush; the stream is already closed if the
                # peer reset it, which is all StreamClosedError can mean here.
                with contextlib.suppress(h2.exceptions.StreamClosedError):
                    self._h2.reset_stream(stream_id, h2.errors.ErrorCodes.CANCEL)

    async def _read_once(self) -> None:
        try:
            data = await self._sock.receive_some(_READ_CHUNK)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
            error = CoreUnavailable(f"gRPC connection to the core broke while reading: {exc}")
            error.__cause__ = exc
            self._break(error)
            return
        if not data:
            self._break(CoreUnavailable("the core closed the gRPC connection"))
            return
        if not self._preface_checked and not self._check_preface(data):
            return
        try:
            events = self._h2.receive_data(data)
        except h2.exceptions.ProtocolError as exc:
            protocol_error = CoreProtocolError(f"gRPC: the core's API spoke broken HTTP/2: {exc!r}")
            protocol_error.__cause__ = exc
            self._break(protocol_error)
            return
        for event in events:
            self._dispatch(event)
        if self.broken is None:
            # SETTINGS acks, WINDOW_UPDATEs, PING acks, our RST_STREAMs. If this fails, _flush
            # has marked the connection broken and every waiter sees it; a stream whose answer
            # is already complete (say, answer then GOAWAY) keeps its answer.
            with contextlib.suppress(CoreUnavailable):
                await self._flush()

    def _check_preface(self, data: bytes) -> bool:
        """Check that the peer's first frame is SETTINGS (RFC 9113 section 3.4).

        Without this, a peer that is not HTTP/2 (a wrong port: the VLESS inbound, a web server)
        makes h2 wait for the rest of a "frame" whose length is read from text, megabytes long.
        """
        self._preface += data[:9]
        if len(self._preface) < 9:
            return True
        self._preface_checked = True
        length = int.from_bytes(self._preface[:3], "big")
        frame_type, stream_id = self._preface[3], int.from_bytes(self._preface[5:9], "big")
        if frame_type != 0x4 or stream_id != 0 or length % 6 or length > 16384:
            self._break(
                CoreProtocolError(f"gRPC: the peer is not an HTTP/2 server (first bytes {self._preface!r})")
            )
            return False
        return True

    def _dispatch(self, event: h2.events.Event) -> None:
        if isinstance(event, h2.events.ConnectionTerminated):
            self._break(CoreUnavailable(f"the core closed the gRPC connection (GOAWAY {event.error_code})"))
            return
        if isinstance(event, h2.events.DataReceived) and event.stream_id:
            # Hand the window back even for abandoned streams: it is shared by the connection.
            self._h2.acknowledge_received_data(event.flow_controlled_length or 0, event.stream_id)
        stream_id = getattr(event, "stream_id", None)
        state = self._streams.get(stream_id) if isinstance(stream_id, int) else None
        if state is None:
            return
        if isinstance(event, h2.events.ResponseReceived):
            state.headers = list(event.headers or [])
        elif isinstance(event, h2.events.DataReceived):
            state.data += event.data or b""
            if len(state.data) > self._max_response_bytes:
                state.error = CoreProtocolError(
                    f"gRPC: response larger than {self._max_response_bytes} bytes"
                )
        elif isinstance(event, h2.events.TrailersReceived):
            state.trailers = list(event.headers or [])
        elif isinstance(event, h2.events.StreamEnded):
            state.ended = True
        elif isinstance(event, h2.events.StreamReset):
            state.error = CoreUnavailable(f"the core reset the gRPC stream (error code {event.error_code})")


def _header(headers: Headers | None, name: bytes) -> bytes | None:
    for key, value in headers or ():
        if key == name:
            return value
    return None


class GrpcChannel:
    """Unary gRPC calls to one ``host:port`` over one reused HTTP/2 connection.

    ``timeout`` bounds each call (connecting included). ``max_concurrent`` bounds the streams
    open at once on the connection. Call :meth:`aclose` when done.
    """

    def __init__(
        self,
        address: str,
        *,
        timeout: float,
        max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES,
        max_concurrent: int = 32,
    ) -> None:
        if timeout <= 0:
            raise ValueError(f"timeout must be positive, got {timeout}")
        self._host, self._port = split_address(address)
        self.address = address
        self._timeout = timeout
        self._max_response_bytes = max_response_bytes
        self._limiter = trio.Semaphore(max_concurrent)
        self._connect_lock = trio.Lock()
        self._conn: _Connection | None = None

    async def aclose(self) -> None:
        """Close the connection; in-flight calls fail with ``CoreUnavailable``. Safe to call twice."""
        conn, self._conn = self._conn, None
        if conn is not None:
            await conn.aclose()

    async def unary(self, path: str, request: bytes) -> bytes:
        """Call ``path`` (``/package.Service/Method``) with a serialized request; return the reply bytes.

        Raises :class:`CoreUnavailable`, :class:`CoreProtocolError` or :class:`CoreRejected`
        (see the module docstring), and ``ConnectionHeldAcrossIO`` inside a unit of work.
        """
        ensure_no_connection_held(f"gRPC {path}")
        if len(request) > MAX_REQUEST_BYTES:
            raise ValueError(f"gRPC request of {len(request)} bytes exceeds {MAX_REQUEST_BYTES}")
        try:
            with trio.fail_after(self._timeout):
                async with self._limiter:
                    return await self._unary(path, request)
        except trio.TooSlowError as exc:
            raise CoreUnavailable(
                f"gRPC {path} to {self.address}: no answer within {self._timeout:g} s"
            ) from exc

    async def _unary(self, path: str, request: bytes) -> bytes:
        body = frame_message(request)
        headers: Headers = [
            (b":method", b"POST"),
            (b":scheme", b"http"),
            (b":path", path.encode("ascii")),
            (b":authority", self.address.encode("ascii")),
            (b"content-type", b"application/grpc"),
            (b"te", b"trailers"),
            (b"grpc-timeout", f"{max(1, int(self._timeout * 1000))}m".encode("ascii")),
            (b"user-agent", b"atlas-grpc/1"),
        ]
        for attempt in (1, 2):
            conn, fresh = await self._connection()
            state = _StreamState()
            try:
                await conn.request(path, body, headers, state)
            except CoreUnavailable:
                # A kept-alive connection that died before answering (the core restarted) gets
                # one retry on a fresh connection; a fresh one failing is the real answer.
                if fresh or state.headers is not None or attempt == 2:
                    raise
                continue
            return self._result(path, state)
        raise AssertionError("unreachable: the second attempt either returns or raises")

    async def _connection(self) -> tuple[_Connection, bool]:
        async with self._connect_lock:
            if self._conn is not None and self._conn.broken is None:
                return self._conn, False
            if self._conn is not None:
                await self._conn.aclose()
                self._conn = None
            try:
                sock = await trio.open_tcp_stream(self._host, self._port)
            except OSError as exc:
                raise CoreUnavailable(f"cannot connect to the core API at {self.address}: {exc}") from exc
            conn = _Connection(sock, self.address, self._max_response_bytes)
            try:
                await conn.start()
            except BaseException:
                await conn.aclose()
                raise
            self._conn = conn
            return conn, True

    def _result(self, path: str, state: _StreamState) -> bytes:
        http_status = _header(state.headers, b":status")
        if http_status != b"200":
            raise CoreProtocolError(f"gRPC {path}: HTTP status {http_status!r}, expected 200")
        content_type = _header(state.headers, b"content-type") or b""
        if not content_type.startswith(b"application/grpc"):
            raise CoreProtocolError(f"gRPC {path}: content-type {content_type!r} is not gRPC")
        # A trailers-only answer (typical for errors) carries the status in the headers.
        raw_status = _header(state.trailers, b"grpc-status")
        raw_message = _header(state.trailers, b"grpc-message")
        if raw_status is None:
            raw_status = _header(state.headers, b"grpc-status")
            raw_message = _header(state.headers, b"grpc-message")
        if raw_status is None or not raw_status.isdigit():
            raise CoreProtocolError(f"gRPC {path}: missing or invalid grpc-status {raw_status!r}")
        status = int(raw_status)
        if status != 0:
            detail = urllib.parse.unquote(raw_message.decode("ascii", "replace")) if raw_message else ""
            raise CoreRejected(status, detail)
        return unframe_message(bytes(state.data))
