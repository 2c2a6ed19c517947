"""The HTTP/1.1 pool under the Bot session, against a raw server that misbehaves on purpose.

The Bot API behaviour (keep-alive reuse, the pool bound, deadlines, multipart) is tested through
the session in ``test_telegram_session.py`` and ``test_botapi_emulator.py``; here the server
closes kept-alive connections behind the pool's back, asks to close, answers too much, or is too
slow, which a real server (or a proxy in front of Telegram) may do.
"""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import h11
import pytest
import trio
import trio.testing

from atlas.net import http11
from tests.test_vpn_agent_tls import self_signed


@dataclass
class RawServer:
    """An HTTP/1.1 server on h11 whose behaviour per connection a test chooses."""

    close_after_answer: bool = False  # close the connection (without saying so) after each answer
    say_close: bool = False  # answer with ``Connection: close``
    body_for: Callable[[bytes], bytes] = lambda body: b"echo:" + body
    delay: float = 0.0
    connections: int = 0
    hung_up: int = 0
    closed: trio.Event = field(default_factory=trio.Event)

    async def handle(self, stream: trio.abc.Stream) -> None:
        self.connections += 1
        try:
            await self._serve(stream)
        except trio.BrokenResourceError:
            self.hung_up += 1  # the client hung up (or refused our certificate)
        finally:
            await stream.aclose()
            self.closed.set()

    async def _serve(self, stream: trio.abc.Stream) -> None:
        conn = h11.Connection(h11.SERVER)
        while True:
            body = b""
            while True:
                event = conn.next_event()
                if event is h11.NEED_DATA:
                    data = await stream.receive_some(65536)
                    if not data:
                        return
                    conn.receive_data(data)
                elif isinstance(event, h11.Data):
                    body += event.data
                elif isinstance(event, h11.EndOfMessage):
                    break
            await trio.sleep(self.delay)
            closing = self.close_after_answer or self.say_close  # as the answer is made
            answer = self.body_for(body)
            headers = [(b"content-length", str(len(answer)).encode())]
            if self.say_close:
                headers.append((b"connection", b"close"))
            out = conn.send(h11.Response(status_code=200, headers=headers))
            out = (out or b"") + (conn.send(h11.Data(data=answer)) or b"")
            out += conn.send(h11.EndOfMessage()) or b""
            await stream.send_all(out)
            if closing:
                return
            conn.start_next_cycle()


@asynccontextmanager
async def serving(server: RawServer) -> AsyncIterator[str]:
    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(partial(trio.serve_tcp, server.handle, 0, host="127.0.0.1"))
        port = listeners[0].socket.getsockname()[1]
        yield f"http://127.0.0.1:{port}"
        nursery.cancel_scope.cancel()


def _pool(origin: str, **kwargs: int) -> http11.Http11Pool:
    return http11.Http11Pool(origin, limit=kwargs.get("limit", 4), max_response_bytes=kwargs.get("max", 1000))


async def test_an_idle_connection_the_server_closed_is_not_reused() -> None:
    server = RawServer(close_after_answer=True)
    async with serving(server) as origin:
        pool = _pool(origin)
        first = await pool.request(b"POST", b"/one", body=b"1")
        await server.closed.wait()  # the server has closed the connection the pool keeps
        second = await pool.request(b"POST", b"/two", body=b"2")
        assert (first.status, first.body, second.body) == (200, b"echo:1", b"echo:2")
        assert pool.connections_opened == server.connections == 2
        await pool.aclose()


async def test_a_connection_idle_past_its_keepalive_expiry_is_not_reused(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # The server keeps it open, but a server's keep-alive timeout may close it just as the next
    # request goes out (that request then fails, never sent twice): the pool retires it first.
    server = RawServer()
    async with serving(server) as origin:
        pool = http11.Http11Pool(origin, limit=4, max_response_bytes=1000, keepalive_expiry=4.0)
        await pool.request(b"POST", b"/", body=b"1")
        await trio.sleep(3.9)
        await pool.request(b"POST", b"/", body=b"2")  # within the expiry: the same connection
        assert pool.connections_opened == 1
        await trio.sleep(4.1)
        answer = await pool.request(b"POST", b"/", body=b"3")
        assert (answer.body, pool.connections_opened, server.connections) == (b"echo:3", 2, 2)
        await pool.aclose()


async def test_kept_alive_connections_are_reused_and_connection_close_is_obeyed() -> None:
    server = RawServer()
    async with serving(server) as origin:
        pool = _pool(origin)
        answers = [await pool.request(b"POST", b"/", body=str(n).encode()) for n in range(5)]
        assert [a.body for a in answers] == [b"echo:%d" % n for n in range(5)]
        assert pool.connections_opened == 1

        server.say_close = True  # from now on every answer ends its connection
        await pool.request(b"POST", b"/", body=b"x")  # still on the first connection, which then ends
        assert pool.idle_connections == 0  # dropped at once, not kept for the next call
        await pool.request(b"POST", b"/", body=b"y")
        assert pool.connections_opened == 2
        await pool.aclose()


async def test_answers_over_the_bound_are_refused_whether_declared_or_not() -> None:
    server = RawServer(body_for=lambda body: b"x" * 5000)
    async with serving(server) as origin:
        pool = _pool(origin, max=1000)
        with pytest.raises(http11.ResponseTooLarge, match="content-length 5000 exceeds 1000 bytes"):
            await pool.request(b"POST", b"/")
        await pool.aclose()


async def test_a_cancelled_request_closes_its_connection_so_no_stale_answer_is_read() -> None:
    server = RawServer(delay=0.5)
    async with serving(server) as origin:
        pool = _pool(origin, limit=1)
        with trio.move_on_after(0.1) as scope:
            await pool.request(b"POST", b"/", body=b"cancelled")
        assert scope.cancelled_caught
        server.delay = 0
        answer = await pool.request(b"POST", b"/", body=b"next")
        assert answer.body == b"echo:next"  # not the late answer to the cancelled request
        assert pool.connections_opened == 2
        await pool.aclose()


async def test_connect_failures_and_bad_origins_are_named() -> None:
    with trio.socket.socket() as unused:
        await unused.bind(("127.0.0.1", 0))
        port = unused.getsockname()[1]
    pool = _pool(f"http://127.0.0.1:{port}")
    with pytest.raises(http11.ConnectError):
        await pool.request(b"POST", b"/")
    with pytest.raises(ValueError, match="origin must be"):
        _pool("ftp://example.org")


async def test_https_connections_are_verified_and_kept_alive(tmp_path: Path) -> None:
    cert, key = await self_signed(tmp_path)
    server_tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_tls.load_cert_chain(cert, key)
    server = RawServer()
    async with trio.open_nursery() as nursery:
        serve = partial(trio.serve_ssl_over_tcp, server.handle, 0, server_tls, host="127.0.0.1")
        listeners = await nursery.start(serve)
        port = listeners[0].transport_listener.socket.getsockname()[1]
        trusting = http11.Http11Pool(
            f"https://127.0.0.1:{port}", limit=2, max_response_bytes=1000,
            ssl_context=ssl.create_default_context(cafile=str(cert)),
        )  # fmt: skip
        answers = [await trusting.request(b"POST", b"/", body=b"%d" % n) for n in range(3)]
        assert [a.body for a in answers] == [b"echo:0", b"echo:1", b"echo:2"]
        # One handshake: TLS 1.3's session tickets, read with the first answer, do not make the
        # idle connection look closed.
        assert trusting.connections_opened == 1
        await trusting.aclose()

        default_trust = http11.Http11Pool(f"https://127.0.0.1:{port}", limit=1, max_response_bytes=1000)
        with pytest.raises(http11.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
            await default_trust.request(b"POST", b"/")  # a certificate nobody vouches for: refused
        with trio.fail_after(5):
            while server.hung_up == 0:  # noqa: ASYNC110 - the server's side of the refusal
                await trio.sleep(0.01)
        nursery.cancel_scope.cancel()
