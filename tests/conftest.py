"""Shared fixtures: one embedded PostgreSQL per test session, a fresh database per test.

The server starts once (``initdb`` + ``pg_ctl start``, about two seconds) with fsync off. A template
database is migrated once; every test that asks for ``db`` gets its own ``CREATE DATABASE ...
TEMPLATE`` copy (tens of milliseconds), so tests never see each other's rows and can run in any
order. Set ``ATLAS_TEST_DATABASE_URL`` to run against another PostgreSQL server instead (the user
needs CREATEDB).

Under pytest-xdist (``scripts/test`` passes ``-n``) every worker is a session of its own: its own
embedded server in its own ``mkdtemp`` directory (a Unix socket there, no TCP port to share), its
own template, its own scratch databases. Each worker also moves the ``slow`` tests to the front of
its collection (every worker sorts alike, so the collections still agree): the scheduler hands
them out first, and the minutes-long ones do not start last and leave the other workers idle.
A test marked ``alone`` (a proof that is a latency bound on this process's own CPU share) runs
while no other test runs; those go last.

The server's data directory is a fresh ``mkdtemp`` directory of its own (not under pytest's
``tmp_path_factory``, whose base is 0700): when the suite runs as root the server runs as
``atlas-pg``, which must be able to reach its data directory, and Atlas opens no directory outside
its own to make that so.
"""

from __future__ import annotations

import datetime as dt
import fcntl
import itertools
import os
import shutil
import tempfile
import uuid
from collections.abc import AsyncIterator, Generator, Iterator
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import pytest
import trio
import trio_asyncio

from atlas.runtime.bridge import open_bridge
from atlas.storage import Database, DatabaseSettings, EmbeddedPostgres, migrate

TEMPLATE = "atlas_template"
_counter = itertools.count()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Under xdist, the ``slow`` tests first and the ``alone`` ones last (otherwise as collected).

    Last, because an ``alone`` test waits for every running test to end: at the end of the run
    those are short ones, where at the start they are the minutes-long ``slow`` ones.
    """
    if os.environ.get("PYTEST_XDIST_WORKER"):
        items.sort(key=lambda item: (item.get_closest_marker("alone") is not None, not _is_slow(item)))


def _is_slow(item: pytest.Item) -> bool:
    return item.get_closest_marker("slow") is not None


def _run_lock(name: str) -> int:
    """A lock file shared by this run's xdist workers (and only them: the run's id is in the name)."""
    run = os.environ.get("PYTEST_XDIST_TESTRUNUID", "serial")
    path = os.path.join(tempfile.gettempdir(), f"atlas-tests-{run}.{name}")
    return os.open(path, os.O_RDWR | os.O_CREAT, 0o600)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_protocol(
    item: pytest.Item, nextitem: pytest.Item | None
) -> Generator[None, object, object]:
    """Under xdist, an ``alone`` test runs while no other test does (set-up and tear-down included).

    A readers-writer lock over two ``flock`` files: every test holds ``tests`` shared while it runs;
    an ``alone`` test holds it exclusively. To take it, the ``alone`` test first closes the ``gate``
    (exclusive), which new tests must pass (shared) before they start, so the workers that finish
    wait at the gate instead of starving it.
    """
    if not os.environ.get("PYTEST_XDIST_WORKER"):
        return (yield)
    alone = item.get_closest_marker("alone") is not None
    gate, tests = _run_lock("gate"), _run_lock("tests")
    try:
        fcntl.flock(gate, fcntl.LOCK_EX if alone else fcntl.LOCK_SH)
        fcntl.flock(tests, fcntl.LOCK_EX if alone else fcntl.LOCK_SH)
        if not alone:
            fcntl.flock(gate, fcntl.LOCK_UN)
        return (yield)
    finally:
        os.close(tests)  # closing releases the locks
        os.close(gate)


@dataclass(frozen=True)
class PgServer:
    """Where the session's server is: a DSN builder for any database on it."""

    base_dsn: str

    def dsn(self, database: str) -> str:
        """DSN of ``database`` on the session's server."""
        head, _, query = self.base_dsn.partition("?")
        prefix = head.rsplit("/", 1)[0]
        return f"{prefix}/{database}" + (f"?{query}" if query else "")


async def _admin_execute(server: PgServer, *statements: str) -> None:
    async def _go() -> None:
        conn = await asyncpg.connect(server.dsn("postgres"))
        try:
            for statement in statements:
                await conn.execute(statement)
        finally:
            await conn.close()

    async with trio_asyncio.open_loop():
        await trio_asyncio.aio_as_trio(_go)()


async def _build_template(server: PgServer) -> None:
    await _admin_execute(server, f"DROP DATABASE IF EXISTS {TEMPLATE}", f"CREATE DATABASE {TEMPLATE}")
    async with open_bridge():
        db = await Database.open(DatabaseSettings(dsn=server.dsn(TEMPLATE), pool_size=2))
        try:
            await migrate(db, now=dt.datetime.now(dt.UTC))
        finally:
            await db.close()


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PgServer]:
    """The session's PostgreSQL server with a migrated template database."""
    external = os.environ.get("ATLAS_TEST_DATABASE_URL")
    embedded: EmbeddedPostgres | None = None
    if external:
        server = PgServer(external)
    else:
        data_dir = Path(tempfile.mkdtemp(prefix="atlas-test-pg-"))
        embedded = EmbeddedPostgres(data_dir, durable=False, max_connections=300)
        server = PgServer(trio.run(embedded.start))
    try:
        trio.run(_build_template, server)
        yield server
    finally:
        if embedded is not None:
            trio.run(embedded.stop)
            shutil.rmtree(embedded.data_dir, ignore_errors=True)


async def _scratch_database(server: PgServer, template: str) -> AsyncIterator[str]:
    name = f"t_{os.getpid()}_{next(_counter)}_{uuid.uuid4().hex[:6]}"

    async def _go(statement: str) -> None:
        conn = await asyncpg.connect(server.dsn("postgres"))
        try:
            await conn.execute(statement)
        finally:
            await conn.close()

    await trio_asyncio.aio_as_trio(_go)(f"CREATE DATABASE {name} TEMPLATE {template}")
    try:
        yield server.dsn(name)
    finally:
        with trio.CancelScope(shield=True):
            await trio_asyncio.aio_as_trio(_go)(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


@pytest.fixture
async def fresh_database(bridge: None, pg_server: PgServer) -> AsyncIterator[str]:
    """A new migrated database for this test; yields its DSN and drops it afterwards."""
    async for dsn in _scratch_database(pg_server, TEMPLATE):
        yield dsn


@pytest.fixture
async def empty_database(bridge: None, pg_server: PgServer) -> AsyncIterator[str]:
    """A new database with no tables at all (for migration tests)."""
    async for dsn in _scratch_database(pg_server, "template0"):
        yield dsn


@pytest.fixture
async def bridge() -> AsyncIterator[None]:
    """The trio-asyncio loop, open for the whole test (as ``atlas run`` opens it at its root)."""
    async with open_bridge():
        yield


@pytest.fixture
async def db(bridge: None, fresh_database: str) -> AsyncIterator[Database]:
    """An open :class:`Database` on a fresh migrated database (pool and budget of 10)."""
    database = await Database.open(DatabaseSettings(dsn=fresh_database, pool_size=10, acquire_timeout=30))
    try:
        yield database
    finally:
        with trio.CancelScope(shield=True):
            await database.close()


@pytest.fixture(scope="session")
def v2ray_binary() -> str:
    """The ``v2ray`` executable; fails (never skips) with the set-up command when it is missing."""
    found = shutil.which("v2ray")
    if found is None:
        pytest.fail(
            "the 'v2ray' executable is missing: run the README set-up "
            "(Debian/Ubuntu: apt-get install -y v2ray) before the test suite",
            pytrace=False,
        )
    return found
