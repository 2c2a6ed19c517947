"""The core's JSON config file as the node's source of truth for users, and config rendering.

:class:`CoreConfigFile` keeps the parsed config in memory and edits one thing in it: the
``settings.clients`` list of the VLESS inbound with the given tag. Every change is written
atomically (temp file in the same directory, fsync, ``os.replace``, fsync of the directory), so
the file on disk is always either the old or the new complete document, and a core (re)starting
at any moment loads a valid user list. Everything else in the document is preserved.

A batch of changes (:meth:`CoreConfigFile.apply`) costs one write, like a single change.

Concurrency: changes are serialised by a ``trio.Lock`` held only for the read-modify-write of
the document and the file write, never for network calls. The blocking file I/O runs in a worker
thread (``trio.to_thread.run_sync``, not abandonable): once started, a write finishes and the
in-memory copy is swapped to match before a cancellation is delivered, so memory never differs
from disk. A failed write (disk full, permissions) raises :class:`CoreConfigError` and changes
nothing.

Errors::

    CoreConfigError       the file cannot be read, parsed, or written, or has no usable inbound
"""

from __future__ import annotations

import bisect
import contextlib
import copy
import json
import os
import stat
import tempfile
from collections.abc import Iterable
from collections.abc import Set as AbstractSet
from pathlib import Path
from typing import Any

import trio

from atlas.vpn.vless_user import VlessUser, email_key


class CoreConfigError(Exception):
    """The core's config file cannot be read, parsed or written, or lacks the VLESS inbound."""


def _read_text(path: Path) -> str:
    return path.read_text(encoding="utf-8")


def write_atomically(path: Path, text: str) -> None:
    """Replace ``path`` with ``text`` atomically (blocking; run it in a thread).

    The temp file gets the old file's mode (and owner, when running as root) so that a core
    running as another user can still read it.
    """
    directory = path.parent
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=directory)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        try:
            old = path.stat()
        except FileNotFoundError:
            os.chmod(tmp, 0o644)
        else:
            os.chmod(tmp, stat.S_IMODE(old.st_mode))
            if os.geteuid() == 0:
                os.chown(tmp, old.st_uid, old.st_gid)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise
    dir_fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(dir_fd)  # make the rename itself durable
    finally:
        os.close(dir_fd)


def _find_inbound(document: Any, inbound_tag: str) -> dict[str, Any]:
    if not isinstance(document, dict) or not isinstance(document.get("inbounds"), list):
        raise CoreConfigError("config has no 'inbounds' list")
    for inbound in document["inbounds"]:
        if isinstance(inbound, dict) and inbound.get("tag") == inbound_tag:
            if inbound.get("protocol") != "vless":
                raise CoreConfigError(
                    f"inbound {inbound_tag!r} has protocol {inbound.get('protocol')!r}, expected 'vless'"
                )
            settings = inbound.setdefault("settings", {})
            if not isinstance(settings, dict):
                raise CoreConfigError(f"inbound {inbound_tag!r}: 'settings' is not an object")
            clients = settings.setdefault("clients", [])
            if not isinstance(clients, list):
                raise CoreConfigError(f"inbound {inbound_tag!r}: 'settings.clients' is not a list")
            return inbound
    raise CoreConfigError(f"config has no inbound tagged {inbound_tag!r}")


def _clients_of(document: Any, inbound_tag: str) -> list[Any]:
    clients: list[Any] = _find_inbound(document, inbound_tag)["settings"]["clients"]
    return clients


def _index(document: Any, inbound_tag: str) -> dict[str, VlessUser]:
    users: dict[str, VlessUser] = {}
    for position, entry in enumerate(_clients_of(document, inbound_tag)):
        if not isinstance(entry, dict) or not isinstance(entry.get("email"), str):
            continue  # a client without an email is not ours to manage; it is kept untouched
        uuid, flow, level = entry.get("id"), entry.get("flow", ""), entry.get("level", 0)
        if not isinstance(uuid, str) or not isinstance(flow, str) or not isinstance(level, int):
            raise CoreConfigError(
                f"inbound {inbound_tag!r}: client #{position} has a malformed id/flow/level"
            )
        user = VlessUser(entry["email"], uuid, flow, level)
        if user.key in users:
            raise CoreConfigError(f"inbound {inbound_tag!r}: email {user.email!r} appears twice")
        users[user.key] = user
    return users


class CoreConfigFile:
    """The VLESS users of one inbound of a core config file; see the module docstring.

    Call :meth:`load` once before use. Reads (:meth:`users`, :meth:`get`, :meth:`page`) come
    from memory and do no I/O.
    """

    def __init__(self, path: Path, inbound_tag: str) -> None:
        self.path = path
        self.inbound_tag = inbound_tag
        self._lock = trio.Lock()
        self._document: Any = None
        self._users: dict[str, VlessUser] = {}
        self._sorted_keys: list[str] = []

    async def load(self) -> None:
        """Read and check the file; raises :class:`CoreConfigError` naming what is wrong."""
        async with self._lock:
            try:
                text = await trio.to_thread.run_sync(_read_text, self.path)
            except OSError as exc:
                raise CoreConfigError(f"cannot read core config {self.path}: {exc}") from exc
            try:
                document = json.loads(text)
            except ValueError as exc:
                raise CoreConfigError(f"core config {self.path} is not valid JSON: {exc}") from exc
            self._swap(document)

    def _swap(self, document: Any) -> None:
        users = _index(document, self.inbound_tag)
        self._document = document
        self._users = users
        self._sorted_keys = sorted(users)

    def _loaded(self) -> Any:
        if self._document is None:
            raise RuntimeError("CoreConfigFile.load() has not been called")
        return self._document

    def users(self) -> list[VlessUser]:
        """Every managed user, sorted by email key."""
        return [self._users[key] for key in self._sorted_keys]

    def count(self) -> int:
        """The number of managed users."""
        return len(self._users)

    def get(self, email: str) -> VlessUser | None:
        """The user with this email (case-insensitive), or None."""
        return self._users.get(email_key(email))

    def page(self, after: str | None, limit: int) -> tuple[list[VlessUser], bool]:
        """Up to ``limit`` users with email key greater than ``after``'s, and whether more follow."""
        start = 0 if after is None else bisect.bisect_right(self._sorted_keys, email_key(after))
        keys = self._sorted_keys[start : start + limit]
        return [self._users[key] for key in keys], start + limit < len(self._sorted_keys)

    async def upsert(self, user: VlessUser) -> bool:
        """Store ``user`` (replacing the entry with the same email); return False if it was already there.

        Raises :class:`CoreConfigError` if the write fails (nothing changed then).
        """
        async with self._lock:
            current = self._users.get(user.key)
            if current is not None and current.same_as(user):
                return False
            document = copy.deepcopy(self._loaded())
            clients = _clients_of(document, self.inbound_tag)
            clients[:] = [entry for entry in clients if not _entry_has_key(entry, user.key)]
            clients.append(user.to_client_entry())
            await self._write(document)
            return True

    async def remove(self, email: str) -> bool:
        """Drop the user with this email; return False if there was none.

        Raises :class:`CoreConfigError` if the write fails (nothing changed then).
        """
        key = email_key(email)
        async with self._lock:
            if key not in self._users:
                return False
            document = copy.deepcopy(self._loaded())
            clients = _clients_of(document, self.inbound_tag)
            clients[:] = [entry for entry in clients if not _entry_has_key(entry, key)]
            await self._write(document)
            return True

    async def apply(self, upserts: Iterable[VlessUser], removals: Iterable[str]) -> int:
        """Store every user of ``upserts`` and drop every email of ``removals`` in ONE write.

        This is what a batch of the node agent costs on disk: one atomic rewrite whatever the
        number of changes. An email must not appear twice across both (``ValueError``). Returns
        how many entries changed; with none, nothing is written. Raises :class:`CoreConfigError`
        if the write fails (nothing changed then).
        """
        puts = {user.key: user for user in upserts}
        drops = {email_key(email) for email in removals}
        if len(puts) + len(drops) != len(puts.keys() | drops):
            raise ValueError("an email appears both among the upserts and the removals")
        async with self._lock:
            puts = {
                key: user
                for key, user in puts.items()
                if (current := self._users.get(key)) is None or not current.same_as(user)
            }
            drops = {key for key in drops if key in self._users}
            if not puts and not drops:
                return 0
            document = copy.deepcopy(self._loaded())
            clients = _clients_of(document, self.inbound_tag)
            touched = puts.keys() | drops
            clients[:] = [entry for entry in clients if not _entry_key_in(entry, touched)]
            clients.extend(user.to_client_entry() for user in puts.values())
            await self._write(document)
            return len(touched)

    async def _write(self, document: Any) -> None:
        text = json.dumps(document, indent=2, ensure_ascii=False) + "\n"
        try:
            await trio.to_thread.run_sync(write_atomically, self.path, text)
        except OSError as exc:
            raise CoreConfigError(f"cannot write core config {self.path}: {exc}") from exc
        self._swap(document)


def _entry_key_in(entry: Any, keys: AbstractSet[str]) -> bool:
    return (
        isinstance(entry, dict) and isinstance(entry.get("email"), str) and email_key(entry["email"]) in keys
    )


def _entry_has_key(entry: Any, key: str) -> bool:
    return (
        isinstance(entry, dict) and isinstance(entry.get("email"), str) and email_key(entry["email"]) == key
    )


# --- rendering configs for tests and the demo -------------------------------------------------


def render_server_config(
    *,
    vless_port: int,
    api_port: int,
    inbound_tag: str = "vless-in",
    users: Iterable[VlessUser] = (),
    listen: str = "127.0.0.1",
    loglevel: str = "warning",
) -> dict[str, Any]:
    """A minimal valid core config: a VLESS inbound (plain TCP, no TLS) plus the gRPC API.

    Works on V2Ray 4.34 and Xray: ``decryption: none``, a dokodemo-door inbound tagged ``api`` on
    127.0.0.1 routed to the ``api`` outbound, HandlerService and StatsService, per-user traffic
    counters at level 0, and a freedom outbound. Plain TCP is for tests and demos only.
    """
    return {
        "log": {"loglevel": loglevel},
        "api": {"tag": "api", "services": ["HandlerService", "StatsService"]},
        "stats": {},
        "policy": {"levels": {"0": {"statsUserUplink": True, "statsUserDownlink": True}}},
        "inbounds": [
            {
                "tag": inbound_tag,
                "listen": listen,
                "port": vless_port,
                "protocol": "vless",
                "settings": {"clients": [u.to_client_entry() for u in users], "decryption": "none"},
                "streamSettings": {"network": "tcp", "security": "none"},
            },
            {
                "tag": "api",
                "listen": "127.0.0.1",
                "port": api_port,
                "protocol": "dokodemo-door",
                "settings": {"address": "127.0.0.1"},
            },
        ],
        "outbounds": [{"tag": "direct", "protocol": "freedom", "settings": {}}],
        "routing": {"rules": [{"type": "field", "inboundTag": ["api"], "outboundTag": "api"}]},
    }


def render_client_config(
    *,
    server_host: str,
    server_port: int,
    uuid: str,
    http_port: int,
    flow: str = "",
    loglevel: str = "warning",
) -> dict[str, Any]:
    """A core config in client mode: an HTTP proxy on 127.0.0.1 that tunnels through VLESS (plain TCP)."""
    return {
        "log": {"loglevel": loglevel},
        "inbounds": [
            {"tag": "http-in", "listen": "127.0.0.1", "port": http_port, "protocol": "http", "settings": {}}
        ],
        "outbounds": [
            {
                "tag": "proxy",
                "protocol": "vless",
                "settings": {
                    "vnext": [
                        {
                            "address": server_host,
                            "port": server_port,
                            "users": [{"id": uuid, "encryption": "none", "flow": flow, "level": 0}],
                        }
                    ]
                },
                "streamSettings": {"network": "tcp", "security": "none"},
            }
        ],
    }
