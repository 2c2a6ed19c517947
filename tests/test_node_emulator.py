"""The node emulator speaks the agent contract over real HTTP, and its faults do what they say."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest
import trio

from atlas.testing.node_emulator import EmulatedUser, NodeEmulator

TOKEN = "emulator-token-0123456789"
AUTH = {"authorization": f"Bearer {TOKEN}"}
U1 = "11111111-1111-4111-8111-111111111111"
U2 = "22222222-2222-4222-8222-222222222222"


@pytest.fixture
async def emulator(nursery: trio.Nursery) -> NodeEmulator:
    emu = NodeEmulator(TOKEN)
    await nursery.start(emu.run)
    return emu


@pytest.fixture
async def http(emulator: NodeEmulator) -> Any:
    async with httpx.AsyncClient(base_url=emulator.url or "", headers=AUTH, timeout=5.0) as client:
        yield client


async def test_health_and_auth(emulator: NodeEmulator, http: httpx.AsyncClient) -> None:
    response = await http.get("/v1/health")
    assert (response.status_code, response.json()) == (200, {"ok": True, "core": "up", "users": 0})
    for headers in (
        {"authorization": "Bearer wrong"},
        {"authorization": f"Basic {TOKEN}"},
        {"authorization": ""},
    ):
        response = await http.get("/v1/health", headers=headers)
        assert (response.status_code, response.json()) == (401, {"error": "unauthorized"})
    assert emulator.unauthorized == 3
    assert emulator.calls["health"] == 4


async def test_put_and_delete_are_idempotent(emulator: NodeEmulator, http: httpx.AsyncClient) -> None:
    body = {"uuid": U1, "flow": "xtls-rprx-vision", "level": 0}
    assert (await http.put(f"/v1/users/{U1}", json=body)).json() == {"changed": True}
    assert (await http.put(f"/v1/users/{U1}", json=body)).json() == {"changed": False}
    assert emulator.users == {U1: EmulatedUser(U1, "xtls-rprx-vision", 0)}
    assert (await http.put(f"/v1/users/{U1}", json={**body, "flow": ""})).json() == {"changed": True}
    assert emulator.users[U1].flow == ""
    assert (await http.delete(f"/v1/users/{U1}")).json() == {"changed": True}
    assert (await http.delete(f"/v1/users/{U1}")).json() == {"changed": False}
    assert emulator.users == {}
    assert (emulator.calls["put_user"], emulator.calls["delete_user"]) == (3, 2)


async def test_batch_applies_op_by_op_through_the_change_gate(
    emulator: NodeEmulator, http: httpx.AsyncClient
) -> None:
    emulator.put_orphan(U2, U2)
    seen: list[tuple[str, str]] = []

    async def gate(kind: str, email: str) -> None:
        seen.append((kind, email))

    emulator.change_gate = gate
    ops = [
        {"op": "put", "email": U1, "uuid": U1, "flow": "xtls-rprx-vision"},
        {"op": "delete", "email": U2},
        {"op": "put", "email": "x@y", "uuid": "nope"},
        {"op": "put", "email": U1.upper(), "uuid": U1},
    ]
    response = await http.post("/v1/users:batch", json={"ops": ops})
    results = response.json()["results"]
    assert results[:2] == [{"ok": True, "changed": True}, {"ok": True, "changed": True}]
    assert (results[2]["status"], results[3]["status"]) == (400, 400)
    assert "repeated" in results[3]["error"]
    assert seen == [("put", U1), ("delete", U2)]
    assert emulator.users == {U1: EmulatedUser(U1, "xtls-rprx-vision", 0)}
    assert emulator.ops == {"put": 1, "delete": 1} and emulator.calls["batch"] == 1
    bad = await http.post("/v1/users:batch", json={"ops": []})
    assert bad.status_code == 400 and "1..1000" in bad.json()["error"]
    emulator.core_up = False
    down = await http.post("/v1/users:batch", json={"ops": ops[:1]})
    assert down.json()["results"][0]["status"] == 502


async def test_emails_are_case_insensitive(emulator: NodeEmulator, http: httpx.AsyncClient) -> None:
    await http.put(f"/v1/users/{U1.upper()}", json={"uuid": U1, "flow": "", "level": 0})
    assert list(emulator.users) == [U1]
    assert (await http.delete(f"/v1/users/{U1}")).json() == {"changed": True}


async def test_list_users_is_keyset_paginated(emulator: NodeEmulator, http: httpx.AsyncClient) -> None:
    emails = [f"user{i:03d}@x" for i in range(7)]
    for email in reversed(emails):
        emulator.put_orphan(email, U1)
    seen: list[str] = []
    after: str | None = None
    pages = 0
    while True:
        params: dict[str, Any] = {"limit": 3} | ({"after": after} if after else {})
        answer = (await http.get("/v1/users", params=params)).json()
        pages += 1
        seen += [user["email"] for user in answer["users"]]
        assert all(user == {"email": user["email"], "uuid": U1, "flow": ""} for user in answer["users"])
        if answer["next"] is None:
            break
        assert answer["next"] == answer["users"][-1]["email"]
        after = answer["next"]
    assert seen == emails
    assert pages == 3
    answer = (await http.get("/v1/users")).json()
    assert len(answer["users"]) == 7 and answer["next"] is None


@pytest.mark.parametrize(
    ("method", "path", "body", "message"),
    [
        ("GET", "/v1/users?limit=0", None, "limit"),
        ("GET", "/v1/users?limit=1001", None, "limit"),
        ("GET", "/v1/users?limit=abc", None, "limit"),
        ("PUT", f"/v1/users/{U1}", b"not json", "JSON"),
        ("PUT", f"/v1/users/{U1}", b"[1]", "object"),
        ("PUT", f"/v1/users/{U1}", json.dumps({"uuid": "nope"}).encode(), "uuid"),
        ("PUT", f"/v1/users/{U1}", json.dumps({"uuid": U1, "flow": "x"}).encode(), "flow"),
        ("PUT", f"/v1/users/{U1}", json.dumps({"uuid": U1, "level": -1}).encode(), "level"),
        ("PUT", "/v1/users/a%20b", json.dumps({"uuid": U1}).encode(), "email"),
    ],
)
async def test_bad_input_is_400(
    emulator: NodeEmulator, http: httpx.AsyncClient, method: str, path: str, body: bytes | None, message: str
) -> None:
    response = await http.request(method, path, content=body)
    assert response.status_code == 400
    assert message in response.json()["error"]
    assert emulator.users == {}


async def test_core_down(emulator: NodeEmulator, http: httpx.AsyncClient) -> None:
    emulator.core_up = False
    assert (await http.get("/v1/health")).json()["core"] == "down"
    response = await http.put(f"/v1/users/{U1}", json={"uuid": U1, "flow": "", "level": 0})
    assert response.status_code == 502 and response.json()["error"].startswith("core: ")
    assert (await http.delete(f"/v1/users/{U1}")).status_code == 502
    assert emulator.users == {}


async def test_traffic_counters(emulator: NodeEmulator, http: httpx.AsyncClient) -> None:
    assert (await http.get(f"/v1/users/{U1}/traffic")).json() == {"uplink": 0, "downlink": 0}
    emulator.add_traffic(U1, 10, 20)
    emulator.add_traffic(U1, 1, 2)
    assert (await http.get(f"/v1/users/{U1}/traffic")).json() == {"uplink": 11, "downlink": 22}


async def test_fail_next_then_garbage_in_order(emulator: NodeEmulator, http: httpx.AsyncClient) -> None:
    emulator.fail_next(2, status=500)
    emulator.garbage_next(1, "not_json")
    emulator.garbage_next(1, "wrong_shape")
    emulator.garbage_next(1, "wrong_types")
    assert [(await http.get("/v1/health")).status_code for _ in range(2)] == [500, 500]
    not_json = await http.get("/v1/health")
    assert not_json.status_code == 200
    with pytest.raises(ValueError):
        not_json.json()
    shape = (await http.put(f"/v1/users/{U1}", json={"uuid": U1})).json()
    assert "changed" not in shape
    types = (await http.get("/v1/health")).json()
    assert set(types) == {"ok", "core", "users"}
    assert not isinstance(types["ok"], bool) and not isinstance(types["core"], str)
    assert not isinstance(types["users"], int)
    assert emulator.users == {}, "garbage must not change the table"
    assert (await http.get("/v1/health")).json()["ok"] is True


async def test_outage_refuses_connections_and_recover_reuses_the_url(
    emulator: NodeEmulator, http: httpx.AsyncClient
) -> None:
    url = emulator.url
    await emulator.outage()
    with pytest.raises(httpx.ConnectError):
        async with httpx.AsyncClient(base_url=url or "", headers=AUTH) as fresh:
            await fresh.get("/v1/health")
    await emulator.recover()
    assert emulator.url == url
    assert (await http.get("/v1/health")).status_code == 200
    with pytest.raises(RuntimeError, match="needs an outage"):
        await emulator.recover()


async def test_outage_without_refusing_answers_503(emulator: NodeEmulator, http: httpx.AsyncClient) -> None:
    await emulator.outage(refuse_connections=False)
    assert (await http.get("/v1/health")).status_code == 503
    await emulator.recover()
    assert (await http.get("/v1/health")).status_code == 200


async def test_latency_and_max_concurrency_are_observed(
    mock_clock: trio.testing.MockClock, emulator: NodeEmulator, http: httpx.AsyncClient
) -> None:
    mock_clock.autojump_threshold = 0.02  # real sockets in flight: jump only when truly idle
    emulator.latency = 2.0
    start = trio.current_time()
    async with trio.open_nursery() as nursery:
        for _ in range(5):
            nursery.start_soon(http.get, "/v1/health")
    assert trio.current_time() - start >= 2.0
    assert emulator.max_concurrent == 5
    assert emulator.in_flight == 0
    emulator.reset_counters()
    assert (emulator.requests, emulator.max_concurrent) == (0, 0)
