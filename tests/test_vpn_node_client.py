"""The circuit breaker, and the node client against the emulator over real HTTP."""

from __future__ import annotations

import json
from collections.abc import Callable
from contextlib import aclosing
from typing import Any

import httpx
import pytest
import trio
import trio.testing

from atlas.net import ConnectionHeldAcrossIO, OutboundHttp, holding_connection
from atlas.testing.node_emulator import NodeEmulator
from atlas.vpn.breaker import BreakerState, CircuitBreaker, CircuitOpen
from atlas.vpn.node_client import (
    Fleet,
    NodeAuthFailed,
    NodeCircuitOpen,
    NodeClient,
    NodeError,
    NodeHealth,
    NodeProtocolError,
    NodeRejected,
    NodeTraffic,
    NodeUnavailable,
    NodeUser,
    UnknownNode,
)
from atlas.vpn.nodes import NodeConfig
from atlas.vpn.user_batch import OpResult, UserOp

TOKEN = "node-token-0123456789abcdef"
U1 = "11111111-1111-4111-8111-111111111111"
U2 = "22222222-2222-4222-8222-222222222222"


def config(url: str, **overrides: Any) -> NodeConfig:
    fields: dict[str, Any] = {
        "name": "n1",
        "agent_url": url,
        "token": TOKEN,
        "public_host": "vpn.example.com",
        "port": 443,
        "security": "none",
    }
    fields.update(overrides)
    return NodeConfig(**fields)


@pytest.fixture
async def emulator(nursery: trio.Nursery) -> NodeEmulator:
    emu = NodeEmulator(TOKEN)
    await nursery.start(emu.run)
    return emu


@pytest.fixture
async def client(emulator: NodeEmulator) -> Any:
    node_client = NodeClient(
        config(emulator.url or ""), timeout=5.0, max_concurrency=3, breaker=CircuitBreaker(3, 30.0)
    )
    yield node_client
    await node_client.aclose()


@pytest.fixture
def cushioned(mock_clock: trio.testing.MockClock) -> trio.testing.MockClock:
    # Real sockets are in flight: let the clock jump only after 20 ms of real idleness.
    mock_clock.autojump_threshold = 0.02
    return mock_clock


# -- the breaker on its own ---------------------------------------------------------------------


async def test_breaker_state_machine(autojump_clock: trio.testing.MockClock) -> None:
    breaker = CircuitBreaker(3, 10.0, name="n1")
    assert breaker.state is BreakerState.CLOSED
    for _ in range(2):
        breaker.failure(breaker.acquire())
    breaker.success(breaker.acquire())  # a success resets the consecutive count
    for _ in range(2):
        breaker.failure(breaker.acquire())
    assert breaker.state is BreakerState.CLOSED
    breaker.failure(breaker.acquire())
    assert breaker.state is BreakerState.OPEN

    with pytest.raises(CircuitOpen) as info:
        breaker.acquire()
    assert info.value.retry_after == pytest.approx(10.0)
    await trio.sleep(9.9)
    with pytest.raises(CircuitOpen):
        breaker.acquire()
    await trio.sleep(0.1)
    assert breaker.state is BreakerState.HALF_OPEN

    probe = breaker.acquire()
    assert probe.probe
    with pytest.raises(CircuitOpen) as info:
        breaker.acquire()  # only ONE probe at a time
    assert info.value.retry_after == 0.0
    breaker.failure(probe)
    assert breaker.state is BreakerState.OPEN  # a failed probe re-opens for a full timeout
    await trio.sleep(5)
    with pytest.raises(CircuitOpen):
        breaker.acquire()
    await trio.sleep(5)
    breaker.success(breaker.acquire())
    assert breaker.state is BreakerState.CLOSED
    stats = breaker.statistics()
    assert (stats.opened, stats.rejected, stats.consecutive_failures) == (2, 4, 0)
    assert (stats.total_failures, stats.total_successes) == (6, 2)


async def test_breaker_released_probe_frees_the_slot_and_stale_outcomes_are_ignored(
    autojump_clock: trio.testing.MockClock,
) -> None:
    breaker = CircuitBreaker(1, 5.0)
    slow = breaker.acquire()  # admitted while closed, finishes late
    breaker.failure(breaker.acquire())
    assert breaker.state is BreakerState.OPEN
    breaker.success(slow)  # stale: must not close the circuit
    assert breaker.state is BreakerState.OPEN
    await trio.sleep(5)
    probe = breaker.acquire()
    breaker.release(probe)  # e.g. cancelled
    assert breaker.state is BreakerState.HALF_OPEN
    second = breaker.acquire()
    assert second.probe
    breaker.success(second)
    assert breaker.state is BreakerState.CLOSED


def test_breaker_validates_its_arguments() -> None:
    with pytest.raises(ValueError, match="failure_threshold"):
        CircuitBreaker(0, 1.0)
    with pytest.raises(ValueError, match="reset_timeout"):
        CircuitBreaker(1, 0)


# -- the client over real HTTP ------------------------------------------------------------------


async def test_health_put_delete_traffic(emulator: NodeEmulator, client: NodeClient) -> None:
    assert await client.health() == NodeHealth(core_up=True, users=0)
    assert await client.put_user(U1, U1, "xtls-rprx-vision") is True
    assert await client.put_user(U1, U1, "xtls-rprx-vision") is False
    assert emulator.users[U1].flow == "xtls-rprx-vision"
    assert await client.health() == NodeHealth(core_up=True, users=1)
    emulator.add_traffic(U1, 5, 7)
    assert await client.traffic(U1) == NodeTraffic(uplink=5, downlink=7)
    assert await client.delete_user(U1) is True
    assert await client.delete_user(U1) is False
    assert emulator.users == {}
    stats = client.statistics()
    assert (stats.calls, stats.successes, stats.unavailable, stats.protocol_errors) == (7, 7, 0, 0)
    assert stats.breaker.state is BreakerState.CLOSED


async def test_pagination_collects_every_user(emulator: NodeEmulator, client: NodeClient) -> None:
    expected = sorted(f"{i:08d}-0000-4000-8000-000000000000" for i in range(1234))
    for email in expected:
        emulator.put_orphan(email, email)
    collected: list[NodeUser] = []
    async with aclosing(client.iter_all_users(page_size=100)) as pages:
        async for page in pages:
            assert 1 <= len(page) <= 100
            collected += page
    assert [user.email for user in collected] == expected
    assert all(user.uuid == user.email and user.flow == "" for user in collected)
    assert emulator.calls["list_users"] == 13

    first = await client.list_users(limit=1000)
    assert len(first.users) == 1000 and first.next == expected[999]
    rest = await client.list_users(after=first.next, limit=1000)
    assert len(rest.users) == 234 and rest.next is None


async def test_empty_node_yields_no_pages(client: NodeClient) -> None:
    assert [page async for page in client.iter_all_users()] == []


async def test_wrong_token_is_auth_failed_and_does_not_open_the_breaker(emulator: NodeEmulator) -> None:
    bad = NodeClient(
        config(emulator.url or "", token="wrong-token-0123456789"), breaker=CircuitBreaker(1, 30.0)
    )
    for _ in range(3):
        with pytest.raises(NodeAuthFailed) as info:
            await bad.health()
        assert info.value.status == 401 and "unauthorized" in str(info.value)
    assert isinstance(info.value, NodeRejected)
    assert bad.breaker.state is BreakerState.CLOSED
    assert bad.statistics().rejected == 3
    assert emulator.unauthorized == 3
    assert TOKEN not in repr(bad) and "wrong-token" not in str(info.value)
    await bad.aclose()


async def test_5xx_is_unavailable(emulator: NodeEmulator, client: NodeClient) -> None:
    emulator.fail_next(1, status=503)
    with pytest.raises(NodeUnavailable) as info:
        await client.health()
    assert info.value.status == 503
    emulator.core_up = False
    with pytest.raises(NodeUnavailable, match="core: "):
        await client.put_user(U1, U1)
    assert client.statistics().unavailable == 2


async def test_400_is_rejected(emulator: NodeEmulator, client: NodeClient) -> None:
    with pytest.raises(NodeRejected, match="uuid must be a UUID") as info:
        await client.put_user(U1, "not-a-uuid")
    assert info.value.status == 400 and not isinstance(info.value, NodeAuthFailed)
    assert client.breaker.statistics().total_failures == 0


@pytest.mark.parametrize("kind", ["not_json", "wrong_shape", "wrong_types"])
@pytest.mark.parametrize(
    "call",
    [
        lambda c: c.health(),
        lambda c: c.list_users(),
        lambda c: c.put_user(U1, U1),
        lambda c: c.delete_user(U1),
        lambda c: c.traffic(U1),
    ],
    ids=["health", "list_users", "put_user", "delete_user", "traffic"],
)
async def test_garbage_is_a_protocol_error_never_success(
    emulator: NodeEmulator, client: NodeClient, kind: Any, call: Callable[[NodeClient], Any]
) -> None:
    emulator.garbage_next(1, kind)
    with pytest.raises(NodeProtocolError):
        await call(client)
    assert client.statistics().protocol_errors == 1
    assert client.breaker.statistics().consecutive_failures == 1
    await call(client)  # the next, honest answer succeeds and resets the count
    assert client.breaker.statistics().consecutive_failures == 0


async def test_breaker_opens_then_half_opens_after_the_timeout(
    cushioned: trio.testing.MockClock, emulator: NodeEmulator, client: NodeClient
) -> None:
    emulator.fail_next(3)
    for _ in range(3):
        with pytest.raises(NodeUnavailable):
            await client.health()
    assert client.breaker.state is BreakerState.OPEN
    before = emulator.requests
    with pytest.raises(NodeCircuitOpen) as info:
        await client.health()
    assert isinstance(info.value, NodeUnavailable) and info.value.retry_after > 0
    assert emulator.requests == before, "an open circuit must not reach the node"

    await trio.sleep(30)
    assert client.breaker.state is BreakerState.HALF_OPEN
    emulator.fail_next(1)
    with pytest.raises(NodeUnavailable):
        await client.health()  # the probe fails: open again
    assert client.breaker.state is BreakerState.OPEN

    await trio.sleep(30)
    emulator.latency = 1.0
    outcomes: list[str] = []

    async def one() -> None:
        try:
            await client.health()
            outcomes.append("ok")
        except NodeCircuitOpen:
            outcomes.append("rejected")

    async with trio.open_nursery() as nursery:
        for _ in range(3):
            nursery.start_soon(one)
    assert sorted(outcomes) == ["ok", "rejected", "rejected"], "half-open lets exactly one probe through"
    assert client.breaker.state is BreakerState.CLOSED
    stats = client.statistics()
    assert (stats.breaker.opened, stats.circuit_rejected) == (2, 3)


async def test_outage_is_unavailable_and_recovery_closes_the_breaker(
    cushioned: trio.testing.MockClock, emulator: NodeEmulator, client: NodeClient
) -> None:
    assert (await client.health()).core_up
    await emulator.outage()
    for _ in range(3):
        with pytest.raises(NodeUnavailable) as info:
            await client.health()
        assert not isinstance(info.value, NodeCircuitOpen)
    with pytest.raises(NodeCircuitOpen):
        await client.health()
    await emulator.recover()
    await trio.sleep(30)
    assert (await client.health()).core_up
    assert client.breaker.state is BreakerState.CLOSED


async def test_timeout_is_unavailable(cushioned: trio.testing.MockClock, emulator: NodeEmulator) -> None:
    emulator.latency = 60.0
    slow = NodeClient(config(emulator.url or ""), timeout=2.0)
    start = trio.current_time()
    with pytest.raises(NodeUnavailable):
        await slow.health()
    assert 2.0 <= trio.current_time() - start < 10.0
    await slow.aclose()


async def test_concurrency_limit_is_respected(
    cushioned: trio.testing.MockClock, emulator: NodeEmulator, client: NodeClient
) -> None:
    emulator.latency = 1.0
    async with trio.open_nursery() as nursery:
        for i in range(12):
            nursery.start_soon(client.put_user, f"user{i}", U1)
        await trio.sleep(0.5)
        stats = client.statistics()
        assert (stats.in_flight, stats.waiting) == (3, 9)
    assert emulator.max_concurrent == 3
    assert len(emulator.users) == 12


async def test_connection_held_raises_before_any_request(emulator: NodeEmulator, client: NodeClient) -> None:
    calls = [
        lambda: client.health(),
        lambda: client.list_users(),
        lambda: client.put_user(U1, U1),
        lambda: client.delete_user(U1),
        lambda: client.traffic(U1),
    ]
    with holding_connection("unit"):
        for call in calls:
            with pytest.raises(ConnectionHeldAcrossIO, match="unit"):
                await call()
        with pytest.raises(ConnectionHeldAcrossIO):
            async for _ in client.iter_all_users():
                pass
    assert emulator.requests == 0
    stats = client.statistics()
    assert (stats.calls, stats.breaker.total_failures, stats.breaker.total_successes) == (0, 0, 0)


async def test_cancelled_call_does_not_count_against_the_node(
    cushioned: trio.testing.MockClock, emulator: NodeEmulator, client: NodeClient
) -> None:
    emulator.latency = 10.0
    with trio.move_on_after(1.0):
        await client.health()
    assert client.breaker.statistics().total_failures == 0
    assert client.statistics().in_flight == 0


async def test_client_validates_arguments_before_io(emulator: NodeEmulator, client: NodeClient) -> None:
    for call in (
        lambda: client.put_user("a/b", U1),
        lambda: client.put_user("a b", U1),
        lambda: client.put_user("", U1),
        lambda: client.put_user(U1, U1, flow="bogus"),
        lambda: client.put_user(U1, U1, level=-1),
        lambda: client.list_users(limit=0),
        lambda: client.list_users(limit=1001),
    ):
        with pytest.raises(ValueError):
            await call()
    assert emulator.requests == 0
    with pytest.raises(ValueError, match="max_concurrency"):
        NodeClient(config("http://x"), max_concurrency=0)


# -- answers that the emulator cannot produce (MockTransport) -----------------------------------


def mock_client(handler: Callable[[httpx.Request], httpx.Response]) -> NodeClient:
    http = OutboundHttp(transport=httpx.MockTransport(handler), max_response_bytes=1024 * 1024)
    return NodeClient(config("http://node.test"), http=http)


def answering(status: int, body: Any = None, content: bytes | None = None, **kw: Any) -> NodeClient:
    def handler(request: httpx.Request) -> httpx.Response:
        assert request.headers["authorization"] == f"Bearer {TOKEN}"
        if content is not None:
            return httpx.Response(status, content=content, **kw)
        return httpx.Response(status, json=body, **kw)

    return mock_client(handler)


def user(email: str) -> dict[str, str]:
    return {"email": email, "uuid": U1, "flow": ""}


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"users": [user("b"), user("a")], "next": None}, "broken order"),
        ({"users": [user("a"), user("a")], "next": None}, "broken order"),
        ({"users": [user("a")], "next": "z"}, "last email"),
        ({"users": [], "next": "a"}, "last email"),
        ({"users": [user("a")] * 1, "next": 5}, "'next' must be a string"),
        ({"users": {"a": 1}, "next": None}, "must be a list"),
        ({"users": ["a"], "next": None}, "must be an object"),
        ({"users": [{"email": "a", "uuid": U1}], "next": None}, "missing field 'flow'"),
        ({"users": [{"email": "", "uuid": U1, "flow": ""}], "next": None}, "empty"),
        ({"users": [user("x")] * 0}, "missing field 'next'"),
    ],
)
async def test_list_users_checks_order_and_shape(body: Any, message: str) -> None:
    client = answering(200, body)
    with pytest.raises(NodeProtocolError, match=message):
        await client.list_users(limit=10)


async def test_list_users_rejects_more_than_asked_and_rows_before_the_cursor() -> None:
    client = answering(200, {"users": [user(f"u{i}") for i in range(3)], "next": "u2"})
    with pytest.raises(NodeProtocolError, match="at most 2"):
        await client.list_users(limit=2)
    with pytest.raises(NodeProtocolError, match="broken order"):
        await client.list_users(after="u1", limit=10)


@pytest.mark.parametrize(
    ("status", "error"),
    [
        (404, NodeRejected),
        (409, NodeRejected),
        (408, NodeUnavailable),
        (429, NodeUnavailable),
        (500, NodeUnavailable),
        (302, NodeProtocolError),
        (204, NodeProtocolError),
    ],
)
async def test_status_classification(status: int, error: type[NodeError]) -> None:
    client = answering(status, {"error": "nope"})
    with pytest.raises(error) as info:
        await client.health()
    assert type(info.value) is error and info.value.status == status


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"[" * 100_000, "not JSON"),
        (b"\xff\xfe", "not JSON"),
        (b"x" * (2 * 1024 * 1024), "exceeds"),
        (json.dumps({"ok": True, "core": "up", "users": -1}).encode(), "non-negative"),
        (json.dumps({"ok": True, "core": "up", "users": True}).encode(), "non-negative"),
        (json.dumps({"ok": False, "core": "up", "users": 1}).encode(), "'ok' must be true"),
        (json.dumps({"ok": True, "core": "sideways", "users": 1}).encode(), "'core'"),
    ],
)
async def test_health_garbage(content: bytes, message: str) -> None:
    with pytest.raises(NodeProtocolError, match=message):
        await answering(200, content=content).health()


async def test_put_sends_the_contract_body_and_quotes_the_email() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json={"changed": True})

    client = mock_client(handler)
    assert await client.put_user("a+b@x", U1, "xtls-rprx-vision", level=2)
    (request,) = seen
    assert request.method == "PUT"
    assert request.url.raw_path == b"/v1/users/a%2Bb%40x"
    assert json.loads(request.content) == {"uuid": U1, "flow": "xtls-rprx-vision", "level": 2}


async def test_a_batch_to_the_emulator_answers_per_op(emulator: NodeEmulator, client: NodeClient) -> None:
    emulator.put_orphan("old@x", U2)
    ops = [
        UserOp.put("a@x", U1),
        UserOp.put("b@x", U2, "xtls-rprx-vision"),
        UserOp.delete("old@x"),
        UserOp.delete("none@x"),
        UserOp.put("A@Xy", "not-a-uuid"),
    ]
    results = await client.apply_batch(ops)
    assert results[:4] == [OpResult.done(True)] * 3 + [OpResult.done(False)]
    assert not results[4].ok and results[4].status == 400 and "uuid" in results[4].error
    assert set(emulator.users) == {"a@x", "b@x"}
    assert emulator.calls["batch"] == 1 and emulator.ops == {"put": 2, "delete": 2}
    assert client.breaker.statistics().total_successes == 1

    emulator.core_up = False  # every op fails on the node's side: the node is unavailable
    with pytest.raises(NodeUnavailable, match="every op failed"):
        await client.apply_batch([UserOp.put("c@x", U1), UserOp.delete("a@x")])
    assert client.breaker.statistics().total_failures == 1


async def test_a_batch_is_checked_before_any_io(emulator: NodeEmulator, client: NodeClient) -> None:
    for ops, message in [
        ([], "1..1000 ops"),
        ([UserOp.delete("a@x")] * 1001, "1..1000 ops"),
        ([UserOp.delete("a@x"), UserOp.put("A@x", U1)], "twice"),
        ([UserOp.put("a@x", U1, "bogus-flow")], "flow"),
        ([UserOp.delete("a b")], "email"),
    ]:
        with pytest.raises(ValueError, match=message):
            await client.apply_batch(ops)
    assert emulator.requests == 0


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"results": [{"ok": True, "changed": True}]}, "sent 2 ops, got 1 results"),
        ({"results": {"0": {}}}, "must be a list"),
        ({"results": [{"ok": "true", "changed": True}] * 2}, "ok must be a boolean"),
        ({"results": [{"ok": True, "changed": "yes"}] * 2}, "changed must be a boolean"),
        ({"results": [{"ok": False, "status": 200, "error": "?"}] * 2}, "HTTP error status"),
        ({"results": [{"ok": False, "status": 400}] * 2}, "missing field 'error'"),
        ({"changed": True}, "missing field 'results'"),
    ],
)
async def test_batch_garbage_is_a_protocol_error(body: Any, message: str) -> None:
    with pytest.raises(NodeProtocolError, match=message):
        await answering(200, body).apply_batch([UserOp.put("a@x", U1), UserOp.delete("b@x")])


async def test_batch_sends_the_contract_body() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        answers = [{"ok": True, "changed": True}, {"ok": False, "status": 400, "error": "ops[1]: email"}]
        return httpx.Response(200, json={"results": answers})

    ops = [UserOp.put("a@x", U1, level=3), UserOp.delete("b@x")]
    results = await mock_client(handler).apply_batch(ops)
    assert results == [OpResult.done(True), OpResult.failed(400, "ops[1]: email")]
    (request,) = seen
    assert (request.method, request.url.raw_path) == ("POST", b"/v1/users:batch")
    assert json.loads(request.content) == {
        "ops": [
            {"op": "put", "email": "a@x", "uuid": U1, "flow": "", "level": 3},
            {"op": "delete", "email": "b@x"},
        ]
    }


# -- the fleet ----------------------------------------------------------------------------------


async def test_fleet_has_one_client_per_enabled_node(emulator: NodeEmulator) -> None:
    nodes = [
        config(emulator.url or "", name="a"),
        config(emulator.url or "", name="b", enabled=False),
        config(emulator.url or "", name="c"),
    ]
    async with Fleet(nodes, max_concurrency=2, failure_threshold=2, reset_timeout=5.0) as fleet:
        assert [c.name for c in fleet.enabled()] == ["a", "c"]
        assert fleet.for_node("c").breaker.failure_threshold == 2
        assert fleet.for_node("a").limiter.total_tokens == 2
        assert fleet.for_node("a").breaker is not fleet.for_node("c").breaker
        with pytest.raises(UnknownNode):
            fleet.for_node("b")
        with pytest.raises(UnknownNode):
            fleet.for_node("zzz")
        await fleet.for_node("a").put_user(U2, U2)
        assert [s.node for s in fleet.statistics()] == ["a", "c"]
        assert fleet.statistics()[0].successes == 1
    with pytest.raises(ValueError, match="duplicate"):
        Fleet([nodes[0], nodes[0]])
