"""The hand-written protobuf codec and the h2-based unary gRPC client (against fake HTTP/2 servers)."""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from functools import partial

import h2.config
import h2.connection
import h2.events
import pytest
import trio
from hypothesis import given
from hypothesis import strategies as st

from atlas.net import ConnectionHeldAcrossIO, holding_connection
from atlas.vpn.core import classify_refusal, traffic_counter_names
from atlas.vpn.core_errors import (
    CoreInboundNotFound,
    CoreProtocolError,
    CoreRejected,
    CoreUnavailable,
    CoreUserExists,
    CoreUserNotFound,
)
from atlas.vpn.wire import (
    AddUserOperation,
    AlterInboundRequest,
    ApiNames,
    GrpcChannel,
    QueryStatsRequest,
    QueryStatsResponse,
    RemoveUserOperation,
    Stat,
    TypedMessage,
    User,
    VlessAccount,
    frame_message,
    split_address,
    unframe_message,
)
from atlas.vpn.wire.protobuf import decode_varint, encode_varint, iter_fields

# --- protobuf ---------------------------------------------------------------------------------

texts = st.text(max_size=40)
typed_messages = st.builds(TypedMessage, texts, st.binary(max_size=60))
users = st.builds(User, st.integers(0, 2**32 - 1), texts, st.none() | typed_messages)
stats = st.builds(Stat, texts, st.integers(-(2**63), 2**63 - 1))

MESSAGES = {
    TypedMessage: typed_messages,
    VlessAccount: st.builds(VlessAccount, texts, texts, texts),
    User: users,
    AddUserOperation: st.builds(AddUserOperation, st.none() | users),
    RemoveUserOperation: st.builds(RemoveUserOperation, texts),
    AlterInboundRequest: st.builds(AlterInboundRequest, texts, st.none() | typed_messages),
    QueryStatsRequest: st.builds(QueryStatsRequest, texts, st.booleans()),
    Stat: stats,
    QueryStatsResponse: st.builds(QueryStatsResponse, st.lists(stats, max_size=5).map(tuple)),
}


@given(st.integers(0, 2**64 - 1))
def test_varint_round_trip(value: int) -> None:
    encoded = encode_varint(value)
    assert decode_varint(encoded, 0) == (value, len(encoded))


@given(st.data())
def test_every_message_round_trips(data: st.DataObject) -> None:
    kind = data.draw(st.sampled_from(sorted(MESSAGES, key=lambda k: k.__name__)))
    message = data.draw(MESSAGES[kind])
    assert kind.decode(message.encode()) == message  # type: ignore[attr-defined]


@given(st.sampled_from(sorted(MESSAGES, key=lambda k: k.__name__)), st.binary(max_size=200))
def test_garbage_decodes_or_raises_protocol_error(kind: type, garbage: bytes) -> None:
    # Any other exception (IndexError, UnicodeDecodeError, ...) fails the test.
    with contextlib.suppress(CoreProtocolError):
        kind.decode(garbage)  # type: ignore[attr-defined]


def test_field_numbers_match_the_real_protos() -> None:
    # vless.Account{1: id, 2: flow, 3: encryption} (V2Ray 4.34 / Xray).
    assert VlessAccount("u", "f", "none").encode() == b"\x0a\x01u\x12\x01f\x1a\x04none"
    # User{1: level, 2: email, 3: account}; TypedMessage{1: type, 2: value}.
    account = TypedMessage("t", b"\x01")
    assert User(5, "e", account).encode() == b"\x08\x05\x12\x01e\x1a\x06\x0a\x01t\x12\x01\x01"
    # AlterInboundRequest{1: tag, 2: operation}; AddUserOperation{1: user}; RemoveUserOperation{1: email}.
    assert AlterInboundRequest("in", TypedMessage("o")).encode() == b"\x0a\x02in\x12\x03\x0a\x01o"
    assert AddUserOperation(User()).encode() == b"\x0a\x00"
    assert RemoveUserOperation("e").encode() == b"\x0a\x01e"
    # QueryStatsRequest{1: pattern, 2: reset}; QueryStatsResponse{1: repeated Stat{1: name, 2: value}}.
    assert QueryStatsRequest("p", True).encode() == b"\x0a\x01p\x10\x01"
    assert QueryStatsResponse((Stat("n", 300),)).encode() == b"\x0a\x06\x0a\x01n\x10\xac\x02"
    assert Stat("n", -1).encode() == b"\x0a\x01n\x10" + b"\xff" * 9 + b"\x01"


def test_decoder_skips_unknown_fields_and_keeps_last_scalar() -> None:
    data = b"\x0a\x01a" + b"\x38\x07" + b"\x45\x00\x00\x00\x00" + b"\x0a\x01b"  # 7: varint, 8: fixed32
    assert RemoveUserOperation.decode(data) == RemoveUserOperation("b")


@pytest.mark.parametrize(
    ("garbage", "fragment"),
    [
        (b"\x0a", "truncated varint"),
        (b"\x0a\x05ab", "runs past the end"),
        (b"\x0b", "unsupported wire type 3"),
        (b"\x00\x01", "invalid field number 0"),
        (b"\x08" + b"\xff" * 11, "longer than 10 bytes"),
        (b"\x0a\x02\xff\xfe", "not valid UTF-8"),
        (b"\x08\x01", "expected length-delimited"),
    ],
)
def test_structural_damage_names_the_problem(garbage: bytes, fragment: str) -> None:
    with pytest.raises(CoreProtocolError, match=fragment):
        RemoveUserOperation.decode(garbage)


def test_iter_fields_reports_wire_types() -> None:
    assert list(iter_fields(b"\x08\x96\x01\x12\x02hi")) == [(1, 0, 150), (2, 2, b"hi")]


def test_api_names_per_flavour() -> None:
    xray, v2ray = ApiNames.for_flavour("xray"), ApiNames.for_flavour("v2ray")
    assert xray.alter_inbound_path == "/xray.app.proxyman.command.HandlerService/AlterInbound"
    assert xray.query_stats_path == "/xray.app.stats.command.StatsService/QueryStats"
    assert xray.add_user_operation == "xray.app.proxyman.command.AddUserOperation"
    assert xray.vless_account == "xray.proxy.vless.Account"
    assert v2ray.alter_inbound_path == "/v2ray.core.app.proxyman.command.HandlerService/AlterInbound"
    assert v2ray.remove_user_operation == "v2ray.core.app.proxyman.command.RemoveUserOperation"
    assert v2ray.vless_account == "v2ray.core.proxy.vless.Account"
    with pytest.raises(ValueError, match="flavour"):
        ApiNames.for_flavour("sing-box")  # type: ignore[arg-type]


def test_refusals_are_classified_by_text() -> None:
    # The texts V2Ray 4.34 really sends (grpc-status 2).
    exists = CoreRejected(2, "v2ray.com/core/proxy/vless: User a@x already exists.")
    missing = CoreRejected(2, "v2ray.com/core/proxy/vless: User b@x not found.")
    no_handler = CoreRejected(
        2,
        "v2ray.com/core/app/proxyman/command: failed to get handler: nope > "
        "v2ray.com/core/app/proxyman/inbound: handler not found: nope",
    )
    other = CoreRejected(12, "unknown service xray.app.stats.command.StatsService")
    assert type(classify_refusal(exists)) is CoreUserExists
    assert type(classify_refusal(missing)) is CoreUserNotFound
    assert type(classify_refusal(no_handler)) is CoreInboundNotFound
    assert classify_refusal(other) is other
    assert traffic_counter_names("a@x") == (
        "user>>>a@x>>>traffic>>>uplink",
        "user>>>a@x>>>traffic>>>downlink",
    )


def test_grpc_framing() -> None:
    assert frame_message(b"abc") == b"\x00\x00\x00\x00\x03abc"
    assert unframe_message(frame_message(b"abc")) == b"abc"
    for bad, fragment in [
        (b"\x00\x00", "no message frame"),
        (b"\x01\x00\x00\x00\x00", "compressed-flag"),
        (b"\x00\x00\x00\x00\x05ab", "says 5 bytes"),
    ]:
        with pytest.raises(CoreProtocolError, match=fragment):
            unframe_message(bad)


def test_split_address() -> None:
    assert split_address("127.0.0.1:10085") == ("127.0.0.1", 10085)
    assert split_address("[::1]:8080") == ("::1", 8080)
    for bad in ["localhost", ":80", "host:0", "host:x", "host:70000"]:
        with pytest.raises(ValueError, match="host:port"):
            split_address(bad)


# --- the gRPC client against fake HTTP/2 servers ---------------------------------------------

Reply = tuple[list[tuple[str, str]], bytes | None, list[tuple[str, str]] | None]


def ok(payload: bytes) -> Reply:
    return (
        [(":status", "200"), ("content-type", "application/grpc")],
        frame_message(payload),
        [("grpc-status", "0")],
    )


def echo(path: str, payload: bytes) -> Reply:
    return ok(path.encode() + b"|" + payload)


@dataclass
class FakeGrpcServer:
    """A tiny HTTP/2 server: answers requests in batches of ``batch`` (reversed, to test multiplexing)."""

    respond: Callable[[str, bytes], Reply] = echo
    batch: int = 1
    close_after: int | None = None  # close each connection after this many answers
    goaway: bool = False  # ... sending GOAWAY with the last answer, as a server shutting down does
    connections: int = 0
    requests: list[tuple[str, dict[str, str]]] = field(default_factory=list)

    async def handle(self, stream: trio.SocketStream) -> None:
        self.connections += 1
        conn = h2.connection.H2Connection(
            h2.config.H2Configuration(client_side=False, header_encoding="utf-8")
        )
        conn.initiate_connection()
        await stream.send_all(conn.data_to_send())
        headers: dict[int, dict[str, str]] = {}
        bodies: dict[int, bytes] = {}
        pending: list[int] = []
        answered = 0
        while data := await stream.receive_some(65536):
            for event in conn.receive_data(data):
                if isinstance(event, h2.events.RequestReceived):
                    headers[event.stream_id] = dict(event.headers)  # type: ignore[arg-type]
                    bodies[event.stream_id] = b""
                elif isinstance(event, h2.events.DataReceived):
                    bodies[event.stream_id] += event.data
                    conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
                elif isinstance(event, h2.events.StreamEnded):
                    pending.append(event.stream_id)
                elif isinstance(event, h2.events.StreamReset) and event.stream_id in pending:
                    pending.remove(event.stream_id)
            if len(pending) >= self.batch:
                for stream_id in reversed(pending):
                    path = headers[stream_id][":path"]
                    self.requests.append((path, headers[stream_id]))
                    reply_headers, body, trailers = self.respond(path, unframe_message(bodies[stream_id]))
                    conn.send_headers(stream_id, reply_headers, end_stream=body is None and trailers is None)
                    if body is not None:
                        chunk = conn.max_outbound_frame_size
                        for start in range(0, len(body), chunk):
                            last = start + chunk >= len(body)
                            conn.send_data(
                                stream_id, body[start : start + chunk], end_stream=last and not trailers
                            )
                    if trailers is not None:
                        conn.send_headers(stream_id, trailers, end_stream=True)
                    answered += 1
                pending.clear()
            closing = self.close_after is not None and answered >= self.close_after
            if closing and self.goaway:
                conn.close_connection()
            await stream.send_all(conn.data_to_send())
            if closing:
                await stream.aclose()
                return


async def serve(nursery: trio.Nursery, handler: Callable[[trio.SocketStream], Awaitable[object]]) -> str:
    listeners = await nursery.start(partial(trio.serve_tcp, handler, 0, host="127.0.0.1"))
    port = listeners[0].socket.getsockname()[1]
    return f"127.0.0.1:{port}"


async def test_unary_call_sends_grpc_headers_and_returns_the_reply(nursery: trio.Nursery) -> None:
    server = FakeGrpcServer()
    channel = GrpcChannel(await serve(nursery, server.handle), timeout=5)
    assert await channel.unary("/svc.S/M", b"hello") == b"/svc.S/M|hello"
    _path, headers = server.requests[0]
    assert headers["content-type"] == "application/grpc"
    assert headers["te"] == "trailers"
    assert headers[":method"] == "POST"
    await channel.aclose()


async def test_concurrent_calls_share_one_connection_and_get_their_own_answers(nursery: trio.Nursery) -> None:
    server = FakeGrpcServer(batch=8)  # answers only once 8 calls are open, in reverse order
    channel = GrpcChannel(await serve(nursery, server.handle), timeout=5)
    results: dict[int, bytes] = {}

    async def call(i: int) -> None:
        results[i] = await channel.unary("/s.S/M", str(i).encode())

    async with trio.open_nursery() as calls:
        for i in range(8):
            calls.start_soon(call, i)
    assert results == {i: f"/s.S/M|{i}".encode() for i in range(8)}
    assert server.connections == 1
    await channel.aclose()


@pytest.mark.parametrize("goaway", [False, True])
async def test_reconnects_once_when_a_kept_alive_connection_died(nursery: trio.Nursery, goaway: bool) -> None:
    server = FakeGrpcServer(close_after=1, goaway=goaway)  # like a core that restarted between calls
    channel = GrpcChannel(await serve(nursery, server.handle), timeout=5)
    for i in range(3):
        assert await channel.unary("/s.S/M", b"%d" % i) == b"/s.S/M|%d" % i
    assert server.connections == 3
    await channel.aclose()


@pytest.mark.parametrize(
    ("reply", "error", "fragment"),
    [
        (
            (
                [
                    (":status", "200"),
                    ("content-type", "application/grpc"),
                    ("grpc-status", "2"),
                    ("grpc-message", "User%20a@x%20already%20exists.%20%E2%9C%93"),
                ],
                None,
                None,
            ),
            CoreRejected,
            "User a@x already exists. \u2713",
        ),
        (
            ([(":status", "404"), ("content-type", "text/plain")], b"no", None),
            CoreProtocolError,
            "HTTP status",
        ),
        (
            ([(":status", "200"), ("content-type", "text/html")], b"<html>", None),
            CoreProtocolError,
            "content-type",
        ),
        (
            ([(":status", "200"), ("content-type", "application/grpc")], frame_message(b"x"), None),
            CoreProtocolError,
            "grpc-status",
        ),
        (
            ([(":status", "200"), ("content-type", "application/grpc")], b"\x00\x00", [("grpc-status", "0")]),
            CoreProtocolError,
            "no message frame",
        ),
    ],
)
async def test_bad_answers_raise_named_errors(
    nursery: trio.Nursery, reply: Reply, error: type[Exception], fragment: str
) -> None:
    server = FakeGrpcServer(respond=lambda path, payload: reply)
    channel = GrpcChannel(await serve(nursery, server.handle), timeout=5)
    with pytest.raises(error, match=fragment) as info:
        await channel.unary("/s.S/M", b"")
    if isinstance(info.value, CoreRejected):
        assert info.value.status == 2
    await channel.aclose()


async def test_response_larger_than_the_bound_is_a_protocol_error(nursery: trio.Nursery) -> None:
    server = FakeGrpcServer(respond=lambda path, payload: ok(b"x" * 60_000))  # within one flow window
    channel = GrpcChannel(await serve(nursery, server.handle), timeout=5, max_response_bytes=50_000)
    with pytest.raises(CoreProtocolError, match="larger than 50000"):
        await channel.unary("/s.S/M", b"")
    await channel.aclose()


@pytest.mark.parametrize(
    ("garbage", "fragment"),
    [
        (b"HTTP/1.1 400 Bad Request\r\n\r\n" * 4, "not an HTTP/2 server"),  # a wrong port
        # A valid (empty) SETTINGS frame, then DATA on stream 0, which HTTP/2 forbids.
        (b"\x00\x00\x00\x04\x00\x00\x00\x00\x00" + b"\x00\x00\x01\x00\x00\x00\x00\x00\x00x", "broken HTTP/2"),
    ],
)
async def test_garbage_from_the_server_is_a_protocol_error(
    nursery: trio.Nursery, garbage: bytes, fragment: str
) -> None:
    async def send_garbage(stream: trio.SocketStream) -> None:
        await stream.send_all(garbage)
        await trio.sleep_forever()

    channel = GrpcChannel(await serve(nursery, send_garbage), timeout=5)
    with pytest.raises(CoreProtocolError, match=fragment):
        await channel.unary("/s.S/M", b"")
    await channel.aclose()


async def test_silent_server_times_out_as_unavailable(nursery: trio.Nursery) -> None:
    async def silent(stream: trio.SocketStream) -> None:
        await trio.sleep_forever()

    channel = GrpcChannel(await serve(nursery, silent), timeout=0.2)
    with trio.fail_after(5), pytest.raises(CoreUnavailable, match=r"no answer within 0\.2 s"):
        await channel.unary("/s.S/M", b"")
    await channel.aclose()


async def test_refused_connection_is_unavailable() -> None:
    listener = trio.socket.socket()
    await listener.bind(("127.0.0.1", 0))
    address = f"127.0.0.1:{listener.getsockname()[1]}"
    listener.close()  # nothing listens there now
    channel = GrpcChannel(address, timeout=5)
    with pytest.raises(CoreUnavailable, match="cannot connect"):
        await channel.unary("/s.S/M", b"")


async def test_no_call_while_a_connection_is_held(nursery: trio.Nursery) -> None:
    server = FakeGrpcServer()
    channel = GrpcChannel(await serve(nursery, server.handle), timeout=5)
    with holding_connection("unit_x"), pytest.raises(ConnectionHeldAcrossIO, match=r"gRPC /s\.S/M"):
        await channel.unary("/s.S/M", b"")
    assert server.requests == []
    await channel.aclose()


async def test_cancelled_call_leaves_the_connection_usable(nursery: trio.Nursery) -> None:
    server = FakeGrpcServer(batch=2)  # the first call alone gets no answer
    channel = GrpcChannel(await serve(nursery, server.handle), timeout=5)
    with trio.move_on_after(0.2) as scope:
        await channel.unary("/s.S/first", b"")
    assert scope.cancelled_caught
    # The abandoned stream was reset; two new calls complete the batch on the same connection.
    results: list[bytes] = []

    async def call(name: str) -> None:
        results.append(await channel.unary(f"/s.S/{name}", b""))

    async with trio.open_nursery() as calls:
        for name in ("a", "b"):
            calls.start_soon(call, name)
    assert sorted(results) == [b"/s.S/a|", b"/s.S/b|"]
    assert server.connections == 1
    await channel.aclose()
