"""The node agent over HTTP (httpx, real sockets) in front of a REAL V2Ray core, and its config file.

Needs the ``v2ray`` executable (Debian/Ubuntu package ``v2ray``); fails, never skips, without it.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import stat
import subprocess
import uuid as uuidlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import pydantic
import pytest
import trio
from pydantic import SecretStr

import atlas.vpn.core_config
from atlas.vpn.agent import NodeAgent, run_agent
from atlas.vpn.agent_settings import NodeAgentSettings
from atlas.vpn.core import CoreDriver
from atlas.vpn.core_config import (
    CoreConfigError,
    CoreConfigFile,
    render_client_config,
    render_server_config,
)
from atlas.vpn.core_errors import CoreUserExists, CoreUserNotFound
from atlas.vpn.core_process import ManagedCore, core_command
from atlas.vpn.vless_user import VlessUser
from tests._vpn_support import free_ports

TAG = "vless-in"
TOKEN = "agent-test-token-0123456789"




def new_uuid() -> str:
    return str(uuidlib.uuid4())


def clients_in(path: Path) -> list[dict[str, Any]]:
    document = json.loads(path.read_text())
    (inbound,) = [i for i in document["inbounds"] if i["tag"] == TAG]
    clients: list[dict[str, Any]] = inbound["settings"]["clients"]
    return clients


@dataclass
class Node:
    http: httpx.AsyncClient
    url: str
    core: ManagedCore
    driver: CoreDriver  # the test's own view of the core
    config_path: Path

    async def core_has(self, email: str) -> bool:
        """Ask the core without changing it (on the expected path)."""
        try:
            await self.driver.add_user(email, new_uuid())
        except CoreUserExists:
            return True
        await self.driver.remove_user(email)
        return False


async def start_core(nursery: trio.Nursery, directory: Path, binary: str) -> tuple[ManagedCore, str, Path]:
    vless_port, api_port = free_ports(2)
    config_path = directory / "config.json"
    config_path.write_text(json.dumps(render_server_config(vless_port=vless_port, api_port=api_port)))
    core = ManagedCore(
        core_command(binary, config_path, "v2ray"), ready=[("127.0.0.1", api_port), ("127.0.0.1", vless_port)]
    )
    await core.start(nursery)
    return core, f"127.0.0.1:{api_port}", config_path


@pytest.fixture
async def node(nursery: trio.Nursery, tmp_path: Path, v2ray_binary: str) -> AsyncIterator[Node]:
    core, api, config_path = await start_core(nursery, tmp_path, v2ray_binary)
    settings = NodeAgentSettings(
        token=SecretStr(TOKEN),
        listen_port=0,
        core_api=api,
        flavour="v2ray",
        inbound_tag=TAG,
        config_path=config_path,
    )
    url = await nursery.start(run_agent, settings)
    async with (
        httpx.AsyncClient(
            base_url=url, headers={"authorization": f"Bearer {TOKEN}"}, trust_env=False, timeout=10
        ) as http,
        CoreDriver(api, "v2ray", TAG, timeout=5) as driver,
    ):
        yield Node(http, url, core, driver, config_path)


# --- authentication ---------------------------------------------------------------------------

ROUTES = [
    ("GET", "/v1/health"),
    ("GET", "/v1/users"),
    ("PUT", "/v1/users/a@atlas"),
    ("DELETE", "/v1/users/a@atlas"),
    ("GET", "/v1/users/a@atlas/traffic"),
    ("POST", "/v1/users:batch"),
    ("GET", "/no/such/path"),
]


async def test_every_route_needs_the_token(node: Node) -> None:
    async with httpx.AsyncClient(base_url=node.url, trust_env=False, timeout=10) as stranger:
        for method, path in ROUTES:
            for headers in (
                {},
                {"authorization": "Bearer " + "x" * len(TOKEN)},
                {"authorization": TOKEN},  # no scheme
                {"authorization": f"Basic {TOKEN}"},
            ):
                response = await stranger.request(method, path, headers=headers, json={"uuid": new_uuid()})
                assert response.status_code == 401, (method, path, headers)
                assert response.json() == {"error": "unauthorized"}
        # The scheme is case-insensitive (RFC 7235); the token is not.
        ok = await stranger.get("/v1/health", headers={"authorization": f"bearer {TOKEN}"})
        assert ok.status_code == 200
        wrong_case = await stranger.get("/v1/health", headers={"authorization": f"Bearer {TOKEN.upper()}"})
        assert wrong_case.status_code == 401
    assert clients_in(node.config_path) == []  # the unauthorised PUTs changed nothing
    health = await node.http.get("/v1/health")
    assert health.status_code == 200
    assert health.json() == {"ok": True, "core": "up", "users": 0}


# --- put / delete -----------------------------------------------------------------------------


async def test_put_and_delete_are_idempotent(node: Node) -> None:
    key = new_uuid()

    async def put(email: str, body: dict[str, Any]) -> Any:
        response = await node.http.put(f"/v1/users/{email}", json=body)
        assert response.status_code == 200, response.text
        return response.json()

    assert await put("alice@atlas", {"uuid": key, "flow": ""}) == {"changed": True}
    assert await put("alice@atlas", {"uuid": key}) == {"changed": False}
    assert await put("ALICE@Atlas", {"uuid": key.upper(), "level": 0}) == {"changed": False}
    assert clients_in(node.config_path) == [{"id": key, "email": "alice@atlas", "flow": "", "level": 0}]
    assert await node.core_has("alice@atlas")

    other = new_uuid()
    assert await put("alice@atlas", {"uuid": other}) == {"changed": True}  # replaced
    assert await put("alice@atlas", {"uuid": other, "flow": "xtls-rprx-direct"}) == {"changed": True}
    assert clients_in(node.config_path) == [
        {"id": other, "email": "alice@atlas", "flow": "xtls-rprx-direct", "level": 0}
    ]
    assert await node.core_has("alice@atlas")

    users = (await node.http.get("/v1/users")).json()
    assert users == {
        "users": [{"email": "alice@atlas", "uuid": other, "flow": "xtls-rprx-direct"}],
        "next": None,
    }

    assert (await node.http.delete("/v1/users/Alice@atlas")).json() == {"changed": True}
    assert (await node.http.delete("/v1/users/alice@atlas")).json() == {"changed": False}
    assert clients_in(node.config_path) == []
    assert not await node.core_has("alice@atlas")
    assert (await node.http.get("/v1/health")).json()["users"] == 0


async def test_traffic_of_a_user_without_traffic_is_zero(node: Node) -> None:
    await node.http.put("/v1/users/quiet@atlas", json={"uuid": new_uuid()})
    for email in ("quiet@atlas", "never-seen@atlas"):
        response = await node.http.get(f"/v1/users/{email}/traffic")
        assert response.status_code == 200
        assert response.json() == {"uplink": 0, "downlink": 0}


async def test_concurrent_changes_keep_file_and_core_in_step(node: Node) -> None:
    emails = [f"user{i:02d}@atlas" for i in range(20)]
    async with trio.open_nursery() as requests:
        for email in emails:
            requests.start_soon(partial(node.http.put, f"/v1/users/{email}", json={"uuid": new_uuid()}))
    final: dict[str, str] = {}
    async with trio.open_nursery() as requests:
        for i, email in enumerate(emails):
            if i % 2:
                final[email] = new_uuid()
                requests.start_soon(partial(node.http.put, f"/v1/users/{email}", json={"uuid": final[email]}))
            else:
                requests.start_soon(node.http.delete, f"/v1/users/{email}")
    assert {c["email"]: c["id"] for c in clients_in(node.config_path)} == final
    for i, email in enumerate(emails):
        assert await node.core_has(email) == bool(i % 2), email


# --- batches ----------------------------------------------------------------------------------


def counting_writes(monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    """Record every atomic write of a config file (the agent runs in this process)."""
    writes: list[Path] = []
    original = atlas.vpn.core_config.write_atomically

    def counted(path: Path, text: str) -> None:
        writes.append(path)
        original(path, text)

    monkeypatch.setattr(atlas.vpn.core_config, "write_atomically", counted)
    return writes


async def test_a_batch_of_adds_and_removes_is_one_config_write_and_lives_in_the_core(
    node: Node, nursery: trio.Nursery, monkeypatch: pytest.MonkeyPatch
) -> None:
    old = {f"old{i}@atlas": new_uuid() for i in range(5)}
    for email, key in old.items():
        assert (await node.http.put(f"/v1/users/{email}", json={"uuid": key})).status_code == 200
    replaced, kept = "old0@atlas", "old1@atlas"
    fresh = {f"new{i}@atlas": new_uuid() for i in range(20)}
    fresh[replaced] = new_uuid()  # new credentials for an existing user
    removed = ["old2@atlas", "old3@atlas", "never@atlas"]
    ops: list[dict[str, Any]] = [{"op": "put", "email": e, "uuid": k} for e, k in fresh.items()]
    ops += [{"op": "put", "email": kept, "uuid": old[kept]}]  # unchanged
    ops += [{"op": "delete", "email": e} for e in removed]
    writes = counting_writes(monkeypatch)

    response = await node.http.post("/v1/users:batch", json={"ops": ops})
    assert response.status_code == 200, response.text
    results = response.json()["results"]
    assert results == (
        [{"ok": True, "changed": True}] * len(fresh)
        + [{"ok": True, "changed": False}]
        + [{"ok": True, "changed": True}] * 2
        + [{"ok": True, "changed": False}]
    )
    assert writes == [node.config_path]  # ONE write for 21 puts and 2 deletes
    expected = {**old, **fresh}
    for email in ("old2@atlas", "old3@atlas"):
        del expected[email]
    assert {c["email"]: c["id"] for c in clients_in(node.config_path)} == expected
    for email in [*expected, *removed]:
        assert await node.core_has(email) == (email in expected), email

    # The core restarts from the file: every user of the batch is there, the removed ones are not.
    await node.core.stop()
    await node.core.start(nursery)
    for email in [*expected, *removed]:
        assert await node.core_has(email) == (email in expected), email
    # The file, and so the listing, holds the replaced user's new credentials.
    listing = (await node.http.get("/v1/users", params={"limit": 1000})).json()["users"]
    assert {u["email"]: u["uuid"] for u in listing} == expected

    # A batch that changes nothing writes nothing.
    again = await node.http.post("/v1/users:batch", json={"ops": [{"op": "delete", "email": "never@atlas"}]})
    assert again.json() == {"results": [{"ok": True, "changed": False}]}
    assert writes == [node.config_path]


async def test_a_bad_op_gets_its_own_400_and_the_rest_is_applied(node: Node) -> None:
    good = new_uuid()
    ops: list[Any] = [
        {"op": "put", "email": "good@atlas", "uuid": good},
        {"op": "put", "email": "bad@atlas", "uuid": "not-a-uuid"},
        {"op": "frobnicate", "email": "x@atlas"},
        "not an object",
        {"op": "put", "email": "GOOD@atlas", "uuid": new_uuid()},  # repeats good@atlas
        {"op": "delete", "email": "bad email"},
        {"op": "put", "email": "level@atlas", "uuid": new_uuid(), "level": True},
    ]
    response = await node.http.post("/v1/users:batch", json={"ops": ops})
    assert response.status_code == 200, response.text
    results = response.json()["results"]
    assert results[0] == {"ok": True, "changed": True}
    fragments = [
        "ops[1]: uuid",
        "ops[2].op",
        "ops[3]: must be an object",
        "ops[4].email: repeated",
        "ops[5]: email",
        "ops[6].level",
    ]
    for result, fragment in zip(results[1:], fragments, strict=True):
        assert result["ok"] is False and result["status"] == 400, result
        assert fragment in result["error"], (fragment, result)
    assert {c["email"]: c["id"] for c in clients_in(node.config_path)} == {"good@atlas": good}
    assert await node.core_has("good@atlas")


async def test_batch_envelope_errors_and_bounds_are_400(node: Node) -> None:
    too_many = [{"op": "delete", "email": f"u{i}@atlas"} for i in range(1001)]
    for body, fragment in [
        ([], "body: must be a JSON object"),
        ({"ops": "x"}, "ops: must be a list"),
        ({"ops": []}, "1..1000 ops"),
        ({"ops": too_many}, "1..1000 ops, got 1001"),
    ]:
        response = await node.http.post("/v1/users:batch", json=body)
        assert response.status_code == 400, body
        assert fragment in response.json()["error"]
    huge = {"ops": [{"op": "delete", "email": "a" * 100 + f"{i}@atlas"} for i in range(3000)]}
    response = await node.http.post("/v1/users:batch", json=huge)
    assert response.status_code == 400
    assert "larger than 262144" in response.json()["error"]
    assert clients_in(node.config_path) == []


async def test_a_batch_while_the_core_is_down_is_502_per_op_and_heals_on_retry(
    node: Node, nursery: trio.Nursery
) -> None:
    key = new_uuid()
    await node.core.stop()
    ops = [{"op": "put", "email": "late@atlas", "uuid": key}, {"op": "delete", "email": "gone@atlas"}]
    response = await node.http.post("/v1/users:batch", json={"ops": ops})
    assert response.status_code == 200
    results = response.json()["results"]
    assert [(r["ok"], r["status"]) for r in results] == [(False, 502), (False, 502)]
    assert all(r["error"].startswith("core: ") for r in results)
    # As for a single PUT: the grant reached the file first (the file over-approximates the core).
    assert [c["email"] for c in clients_in(node.config_path)] == ["late@atlas"]
    await node.core.start(nursery)
    retry = await node.http.post("/v1/users:batch", json={"ops": ops})
    assert retry.json() == {"results": [{"ok": True, "changed": False}, {"ok": True, "changed": False}]}
    assert await node.core_has("late@atlas")


# --- listing ----------------------------------------------------------------------------------


async def test_pagination_is_keyset_by_email(node: Node) -> None:
    emails = [f"p{i}@atlas" for i in (5, 2, 6, 0, 3, 1, 4)]
    for email in emails:
        assert (await node.http.put(f"/v1/users/{email}", json={"uuid": new_uuid()})).status_code == 200

    seen: list[str] = []
    after: str | None = None
    pages = 0
    while True:
        params: dict[str, Any] = {"limit": 3} | ({"after": after} if after else {})
        body = (await node.http.get("/v1/users", params=params)).json()
        seen += [user["email"] for user in body["users"]]
        pages += 1
        if body["next"] is None:
            break
        assert body["next"] == body["users"][-1]["email"]
        after = body["next"]
    assert seen == sorted(emails)
    assert pages == 3

    everything = (await node.http.get("/v1/users")).json()  # default limit 500
    assert [u["email"] for u in everything["users"]] == sorted(emails)
    assert everything["next"] is None
    exact = (await node.http.get("/v1/users", params={"limit": 7})).json()
    assert exact["next"] is None  # nothing follows, so no cursor
    upper = (await node.http.get("/v1/users", params={"after": "P4@ATLAS"})).json()
    assert [u["email"] for u in upper["users"]] == ["p5@atlas", "p6@atlas"]


# --- bad input --------------------------------------------------------------------------------

KEY = "0b4f2c7e-5d8a-4a1b-9c3d-2e6f7a8b9c0d"
BAD_REQUESTS: list[tuple[str, str, dict[str, Any], str]] = [
    ("PUT", "/v1/users/a%20b", {"json": {"uuid": KEY}}, "email"),
    ("PUT", "/v1/users/x%3E%3E%3Ey", {"json": {"uuid": KEY}}, "email"),
    ("PUT", "/v1/users/" + "a" * 129, {"json": {"uuid": KEY}}, "email"),
    ("PUT", "/v1/users/.dot@atlas", {"json": {"uuid": KEY}}, "email"),
    ("PUT", "/v1/users/ok@atlas", {"json": {"uuid": "not-a-uuid"}}, "uuid"),
    ("PUT", "/v1/users/ok@atlas", {"json": {"uuid": KEY.replace("-", "")}}, "uuid"),
    ("PUT", "/v1/users/ok@atlas", {"json": {"uuid": 12}}, "uuid"),
    ("PUT", "/v1/users/ok@atlas", {"json": {}}, "uuid: missing"),
    ("PUT", "/v1/users/ok@atlas", {"json": {"uuid": KEY, "flow": "Vision!"}}, "flow"),
    ("PUT", "/v1/users/ok@atlas", {"json": {"uuid": KEY, "flow": None}}, "flow"),
    ("PUT", "/v1/users/ok@atlas", {"json": {"uuid": KEY, "level": -1}}, "level"),
    ("PUT", "/v1/users/ok@atlas", {"json": {"uuid": KEY, "level": True}}, "level"),
    ("PUT", "/v1/users/ok@atlas", {"json": {"uuid": KEY, "level": "0"}}, "level"),
    ("PUT", "/v1/users/ok@atlas", {"content": b"{not json"}, "not valid JSON"),
    ("PUT", "/v1/users/ok@atlas", {"content": b"[1, 2]"}, "JSON object"),
    ("PUT", "/v1/users/ok@atlas", {"content": b"\xff\xfe"}, "not valid JSON"),
    ("PUT", "/v1/users/ok@atlas", {"content": b'{"uuid": "' + b"x" * 5000 + b'"}'}, "larger than 4096"),
    ("GET", "/v1/users?limit=0", {}, "limit"),
    ("GET", "/v1/users?limit=1001", {}, "limit"),
    ("GET", "/v1/users?limit=ten", {}, "limit"),
    ("GET", "/v1/users?after=a%20b", {}, "after"),
    ("DELETE", "/v1/users/a%20b", {}, "email"),
    ("GET", "/v1/users/a%20b/traffic", {}, "email"),
]


async def test_bad_input_is_400_naming_the_field_and_changes_nothing(node: Node) -> None:
    for method, path, kwargs, fragment in BAD_REQUESTS:
        response = await node.http.request(method, path, **kwargs)
        assert response.status_code == 400, (method, path, kwargs, response.text)
        assert fragment in response.json()["error"], (path, kwargs, response.json())
    assert clients_in(node.config_path) == []
    assert not await node.core_has("ok@atlas")


async def test_chunked_body_over_the_cap_is_refused(node: Node) -> None:
    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(10):
            yield b" " * 1000  # no content-length: the cap applies while reading

    response = await node.http.put("/v1/users/ok@atlas", content=chunks())
    assert response.status_code == 400
    assert "larger than 4096" in response.json()["error"]


# --- the core fails ---------------------------------------------------------------------------


async def test_core_down_is_502_and_health_says_down(node: Node, nursery: trio.Nursery) -> None:
    key = new_uuid()
    await node.core.stop()

    health = await node.http.get("/v1/health")
    assert health.status_code == 200
    assert health.json() == {"ok": True, "core": "down", "users": 0}
    for method, path, body in [
        ("PUT", "/v1/users/late@atlas", {"uuid": key}),
        ("DELETE", "/v1/users/gone@atlas", None),
        ("GET", "/v1/users/late@atlas/traffic", None),
    ]:
        response = await node.http.request(method, path, json=body)
        assert response.status_code == 502, (method, path)
        assert response.json()["error"].startswith("core: ")
    # The grant reached the file before the core failed (the file over-approximates the core),
    # so the listing shows it and a restarted core loads it.
    listing = (await node.http.get("/v1/users")).json()
    assert listing["users"] == [{"email": "late@atlas", "uuid": key, "flow": ""}]

    await node.core.start(nursery)
    assert (await node.http.get("/v1/health")).json() == {"ok": True, "core": "up", "users": 1}
    assert (await node.http.put("/v1/users/late@atlas", json={"uuid": key})).json() == {"changed": False}
    assert await node.core_has("late@atlas")


async def test_agent_start_reapplies_the_file_until_the_core_answers(
    nursery: trio.Nursery, tmp_path: Path, v2ray_binary: str, caplog: pytest.LogCaptureFixture
) -> None:
    core, api, config_path = await start_core(nursery, tmp_path, v2ray_binary)
    config = CoreConfigFile(config_path, TAG)
    await config.load()
    # Users written to the file while the running core never heard of them (an agent that
    # crashed between its file write and its gRPC call).
    for i in range(3):
        await config.upsert(VlessUser(f"kept{i}@atlas", new_uuid()))
    async with CoreDriver(api, "v2ray", TAG, timeout=5) as driver:
        agent = NodeAgent(config, driver)
        with pytest.raises(CoreUserNotFound):
            await driver.remove_user("kept0@atlas")
        with trio.fail_after(10):
            await agent.keep_core_in_step()
        for i in range(3):
            with pytest.raises(CoreUserExists):
                await driver.add_user(f"kept{i}@atlas", new_uuid())

        # With the core down, it retries until the core is back.
        await core.stop()
        done = trio.Event()

        async def converge() -> None:
            await agent.keep_core_in_step(first_retry=0.05, max_retry=0.2)
            done.set()

        caplog.set_level(logging.WARNING, logger="atlas.vpn.agent")
        nursery.start_soon(converge)
        await core.start(nursery)
        with trio.fail_after(10):
            await done.wait()
        assert any("retrying" in r.getMessage() for r in caplog.records)  # it did meet the stopped core
        with pytest.raises(CoreUserExists):
            await driver.add_user("kept2@atlas", new_uuid())


# --- the config file --------------------------------------------------------------------------


def write_config(path: Path, document: Any) -> Path:
    path.write_text(json.dumps(document))
    return path


@pytest.mark.parametrize(
    ("document", "fragment"),
    [
        ("{not json", "not valid JSON"),
        ({"inbounds": "x"}, "no 'inbounds' list"),
        ({"inbounds": [{"tag": "other", "protocol": "vless"}]}, "no inbound tagged 'vless-in'"),
        ({"inbounds": [{"tag": TAG, "protocol": "vmess"}]}, "expected 'vless'"),
        ({"inbounds": [{"tag": TAG, "protocol": "vless", "settings": {"clients": {}}}]}, "not a list"),
        (
            {
                "inbounds": [
                    {
                        "tag": TAG,
                        "protocol": "vless",
                        "settings": {"clients": [{"id": KEY, "email": "a@x"}, {"id": KEY, "email": "A@x"}]},
                    }
                ]
            },
            "appears twice",
        ),
        (
            {"inbounds": [{"tag": TAG, "protocol": "vless", "settings": {"clients": [{"email": "a@x"}]}}]},
            "malformed",
        ),
    ],
)
async def test_config_load_errors_name_the_problem(tmp_path: Path, document: Any, fragment: str) -> None:
    path = tmp_path / "config.json"
    path.write_text(document if isinstance(document, str) else json.dumps(document))
    with pytest.raises(CoreConfigError, match=fragment):
        await CoreConfigFile(path, TAG).load()
    with pytest.raises(CoreConfigError, match="cannot read"):
        await CoreConfigFile(tmp_path / "missing.json", TAG).load()


async def test_config_edits_keep_everything_else(tmp_path: Path) -> None:
    document = render_server_config(vless_port=1, api_port=2)
    document["inbounds"][0]["settings"]["clients"] = [
        {"id": KEY, "alterId": 0},  # no email: not ours, kept untouched
        {"id": KEY, "email": "Hand@Made", "flow": "", "level": 0},
    ]
    document["x-operator-note"] = "keep me"
    path = write_config(tmp_path / "config.json", document)
    os.chmod(path, 0o640)

    config = CoreConfigFile(path, TAG)
    await config.load()
    assert config.get("hand@made") == VlessUser("Hand@Made", KEY)
    assert await config.upsert(VlessUser("new@atlas", new_uuid())) is True
    assert await config.remove("HAND@MADE") is True
    assert await config.remove("hand@made") is False

    on_disk = json.loads(path.read_text())
    assert on_disk["x-operator-note"] == "keep me"
    assert on_disk["inbounds"][1] == document["inbounds"][1]
    assert [c.get("email") for c in on_disk["inbounds"][0]["settings"]["clients"]] == [None, "new@atlas"]
    assert stat.S_IMODE(path.stat().st_mode) == 0o640
    assert sorted(p.name for p in await trio.Path(tmp_path).iterdir()) == [
        "config.json"
    ]  # no temp files left


async def test_failed_write_changes_nothing(tmp_path: Path) -> None:
    directory = tmp_path / "etc"
    directory.mkdir()
    path = write_config(directory / "config.json", render_server_config(vless_port=1, api_port=2))
    config = CoreConfigFile(path, TAG)
    await config.load()
    shutil.rmtree(directory)
    with pytest.raises(CoreConfigError, match="cannot write"):
        await config.upsert(VlessUser("a@atlas", KEY))
    assert config.get("a@atlas") is None
    assert config.count() == 0


async def test_a_batch_of_config_changes_is_one_write_and_a_failed_one_changes_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    directory = tmp_path / "etc"
    directory.mkdir()
    document = render_server_config(vless_port=1, api_port=2)
    hand_made = {"id": KEY, "email": "Hand@Made", "flow": "", "level": 0}
    document["inbounds"][0]["settings"]["clients"] = [hand_made]
    path = write_config(directory / "config.json", document)
    config = CoreConfigFile(path, TAG)
    await config.load()
    writes = counting_writes(monkeypatch)
    same = VlessUser("Hand@Made", KEY)
    fresh = [VlessUser(f"u{i}@atlas", new_uuid()) for i in range(10)]
    # The unchanged user and the absent one are no-ops; the ten new ones are one write.
    assert await config.apply([*fresh, same], ["nobody@atlas"]) == 10
    assert len(writes) == 1
    assert await config.apply([], ["HAND@made", "u0@atlas"]) == 2
    assert len(writes) == 2
    assert await config.apply([], ["hand@made"]) == 0
    assert len(writes) == 2  # nothing to change: nothing written
    assert [u.email for u in config.users()] == [f"u{i}@atlas" for i in range(1, 10)]
    with pytest.raises(ValueError, match="both"):
        await config.apply([VlessUser("u1@atlas", new_uuid())], ["U1@atlas"])

    shutil.rmtree(directory)
    with pytest.raises(CoreConfigError, match="cannot write"):
        await config.apply([VlessUser("late@atlas", KEY)], ["u1@atlas"])
    assert config.get("late@atlas") is None and config.get("u1@atlas") is not None
    assert config.count() == 9


async def test_rendered_configs_pass_the_cores_own_check(tmp_path: Path, v2ray_binary: str) -> None:
    users = [VlessUser("a@atlas", KEY)]
    server = write_config(tmp_path / "s.json", render_server_config(vless_port=1, api_port=2, users=users))
    client = write_config(
        tmp_path / "c.json",
        render_client_config(server_host="127.0.0.1", server_port=1, uuid=KEY, http_port=3),
    )
    for path in (server, client):
        with trio.fail_after(10):
            result = await trio.run_process(
                [v2ray_binary, "-test", "-config", str(path)],
                capture_stdout=True,
                stderr=subprocess.STDOUT,
                check=False,
            )
        assert result.returncode == 0, result.stdout


# --- settings ---------------------------------------------------------------------------------


def test_settings_come_from_the_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("ATLAS_NODE_TOKEN", TOKEN)
    monkeypatch.setenv("ATLAS_NODE_LISTEN_PORT", "9000")
    monkeypatch.setenv("ATLAS_NODE_CORE_API", "127.0.0.1:10085")
    monkeypatch.setenv("ATLAS_NODE_FLAVOUR", "v2ray")
    monkeypatch.setenv("ATLAS_NODE_CONFIG_PATH", str(tmp_path / "c.json"))
    settings = NodeAgentSettings()  # type: ignore[call-arg]
    assert settings.token.get_secret_value() == TOKEN
    assert TOKEN not in repr(settings)  # a secret is never printed
    assert (settings.listen_port, settings.flavour, settings.config_path) == (
        9000,
        "v2ray",
        tmp_path / "c.json",
    )

    for name, value, fragment in [
        ("ATLAS_NODE_TOKEN", "short", "at least 16"),
        ("ATLAS_NODE_CORE_API", "no-port", "host:port"),
        ("ATLAS_NODE_FLAVOUR", "singbox", "flavour"),
    ]:
        with monkeypatch.context() as patch:
            patch.setenv(name, value)
            with pytest.raises(pydantic.ValidationError, match=fragment):
                NodeAgentSettings()  # type: ignore[call-arg]
