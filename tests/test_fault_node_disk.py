"""The node agent's config write against a real full disk and a real read-only file system.

The core's config file lives on a small tmpfs mounted in the test's own temp directory (root in
this container may mount; nothing outside that directory is touched). A real V2Ray core runs from
that file, the real agent (``atlas node``'s ``run_agent``) edits it, and the real VPN controller
drives the agent over HTTP from real PostgreSQL. Faults:

* **disk full**: a filler file takes every free block, so the agent's temp file hits ``ENOSPC``;
* **read-only**: the tmpfs is remounted ``ro``, so creating the temp file fails with ``EROFS``.

Asserted for each: the old config file survives byte for byte and the core keeps running with it
(its users still there); the agent answers a clear 500 naming the write failure (and stays healthy,
no crash); the controller keeps the change pending with the error and retries; once the space
(or write access) returns, the next pass applies the change to the file and to the core.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import errno
import os
import random
import subprocess
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
from pydantic import SecretStr

from atlas.actors.vpn_controller import VpnController
from atlas.clock import Clock
from atlas.storage import Database, Tx
from atlas.storage.units.subscriptions import start_trial
from atlas.storage.units.users import register_user
from atlas.storage.units.vpn import Backoff
from atlas.vpn import Fleet, NodeConfig
from atlas.vpn.agent import run_agent
from atlas.vpn.agent_settings import NodeAgentSettings
from atlas.vpn.core import CoreDriver
from atlas.vpn.core_errors import CoreUserExists
from tests._vpn_support import start_server_core

TOKEN = "disk-fault-node-token-0123456789"
NOW = dt.datetime(2026, 3, 1, 12, 0, tzinfo=dt.UTC)
TMPFS_BYTES = 256 * 1024


def _run(*argv: str) -> None:
    done = subprocess.run(argv, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        pytest.fail(
            f"{' '.join(argv)} failed ({done.stderr.strip()}): this proof needs root and mount(2), "
            "which the test container grants (see docs/security.md)",
            pytrace=False,
        )


@contextlib.contextmanager
def small_tmpfs() -> Iterator[Path]:
    """A 256 KiB tmpfs of the test's own (its mount point in a fresh temp dir); unmounted after."""
    where = Path(tempfile.mkdtemp(prefix="atlas-fault-disk-"))
    _run("mount", "-t", "tmpfs", "-o", f"size={TMPFS_BYTES},mode=0755", "tmpfs", str(where))
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], capture_output=True, check=False)
        with contextlib.suppress(OSError):
            where.rmdir()


def fill_up(directory: Path) -> Path:
    """Take every free block of ``directory``'s file system with one file; return that file."""
    filler = directory / "filler"
    descriptor = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    chunk = b"\0" * 4096
    try:
        while True:
            os.write(descriptor, chunk)  # unbuffered: the first ENOSPC is ours, not a close's
    except OSError as exc:
        assert exc.errno == errno.ENOSPC, exc
    finally:
        os.close(descriptor)
    return filler


async def _trial(db: Database, user_id: int) -> str:
    await db.run(
        register_user,
        user_id=user_id,
        username=None,
        first_name="D",
        language="en",
        start_payload=None,
        now=NOW,
    )
    view = await db.run(start_trial, user_id=user_id, trial_days=3, now=NOW)
    assert view.key_uuid is not None
    return str(view.key_uuid)


async def _row(tx: Tx, *, email: str) -> dict[str, Any]:
    row = await tx.fetchrow(
        "SELECT kn.applied, kn.pending, kn.attempts, kn.last_error FROM vpn_key_nodes kn "
        "JOIN vpn_keys k ON k.id = kn.key_id WHERE k.uuid::text = $1 LIMIT 1",
        email,
    )
    assert row is not None
    return dict(row)


async def core_has(driver: CoreDriver, email: str) -> bool:
    """Ask the core whether it has ``email`` (an add that is refused means yes; undone otherwise)."""
    try:
        await driver.add_user(email, str(uuid.uuid4()))
    except CoreUserExists:
        return True
    await driver.remove_user(email)
    return False


async def converge_until(controller: VpnController, done: Any, what: str) -> None:
    """Run controller passes (a real retry loop, short backoff) until ``done()`` or 30 s."""
    with trio.fail_after(30):
        while not await done():
            await controller.converge()
            await trio.sleep(0.3)


@pytest.fixture
async def node_on_tmpfs(
    nursery: trio.Nursery, v2ray_binary: str
) -> AsyncIterator[tuple[Path, str, CoreDriver]]:
    """A V2Ray core and the agent, the config file on a small tmpfs; yields (mount, agent URL, driver)."""
    with small_tmpfs() as mount:
        server = await start_server_core(nursery, mount, v2ray_binary)
        settings = NodeAgentSettings(
            token=SecretStr(TOKEN),
            listen_port=0,
            core_api=server.api,
            flavour="v2ray",
            config_path=server.config_path,
        )
        url = await nursery.start(run_agent, settings)
        async with CoreDriver(server.api, "v2ray", "vless-in", timeout=5) as driver:
            yield mount, url, driver
            assert server.core.process is not None and server.core.process.returncode is None, (
                "the core stopped"
            )
        nursery.cancel_scope.cancel()


@pytest.mark.slow
async def test_a_full_disk_and_a_read_only_one_keep_the_old_config_and_heal_once_writable(
    db: Database, node_on_tmpfs: tuple[Path, str, CoreDriver]
) -> None:
    mount, url, driver = node_on_tmpfs
    config_path = mount / "server.json"
    node = NodeConfig(
        name="d1", agent_url=url, token=TOKEN, public_host="127.0.0.1", port=443, security="none"
    )
    fleet = Fleet([node], timeout=5, max_concurrency=2, failure_threshold=1000)
    controller = VpnController(
        db=lambda: db, fleet=fleet, clock=Clock(NOW), rng=random.Random(3), reconcile_every=None,
        batch=10, lease=30.0, backoff=Backoff(base=0.2, cap=0.5), period=3600.0, first_tick=(3600.0, 3600.0),
    )  # fmt: skip
    headers = {"authorization": f"Bearer {TOKEN}"}
    async with fleet, httpx.AsyncClient(base_url=url, headers=headers, trust_env=False, timeout=10) as http:
        first = await _trial(db, 801)
        await converge_until(controller, lambda: core_has(driver, first), "the first key on the node")

        for fault, user_id in (("disk full", 802), ("read-only", 803)):
            before = config_path.read_bytes()
            assert first.encode() in before
            filler: Path | None = None
            if fault == "disk full":
                filler = fill_up(mount)
            else:
                _run("mount", "-o", "remount,ro", str(mount))
            try:
                # The agent's own answer to a write it cannot make: a clear 500, the cause named.
                probe = await http.put(
                    f"/v1/users/probe-{user_id}@atlas",
                    json={"uuid": str(uuid.uuid4()), "flow": "", "level": 0},
                )
                assert probe.status_code == 500, probe.text
                cause = "No space left on device" if fault == "disk full" else "Read-only file system"
                assert cause in probe.json()["error"], probe.text

                wanted = await _trial(db, user_id)
                for _ in range(3):  # the controller tries, and tries again after its backoff
                    await controller.converge()
                    await trio.sleep(0.6)
                row = await db.run(_row, email=wanted)
                assert row["pending"] and row["applied"] == "absent" and row["attempts"] >= 2, row
                assert cause in (row["last_error"] or ""), row
                # The old config is intact, the core runs with it, the agent is healthy.
                assert config_path.read_bytes() == before, f"{fault}: the config file changed"
                assert [p.name for p in mount.iterdir() if p.name.endswith(".tmp")] == []
                assert await core_has(driver, first) and not await core_has(driver, wanted)
                assert (await http.get("/v1/health")).status_code == 200
            finally:
                if filler is not None:
                    filler.unlink()
                else:
                    _run("mount", "-o", "remount,rw", str(mount))

            # Space (or write access) is back: the next passes apply the change.
            await converge_until(controller, lambda w=wanted: core_has(driver, w), f"{fault}: applied after")
            assert wanted.encode() in config_path.read_bytes()
            row = await db.run(_row, email=wanted)
            assert not row["pending"] and row["applied"] == "present" and row["last_error"] is None, row
