"""Session-level advisory locks: "only one process does this at a time" (polling Telegram, say).

``pg_try_advisory_lock`` belongs to a *session*, so the lock lives exactly as long as one
connection: :func:`hold_advisory_lock` takes one connection out of the pool for the lifetime of the
``async with`` block and gives it back (unlocked) when the block ends.

Why this does not break contract 1 ("a connection never meets I/O"): the bug that contract
prevents is a connection tied up, unaccounted, while its holder waits for slow I/O, so that units
starve for the pool. Here the hold is explicit and accounted for:

* the connection is borrowed through the same :class:`~atlas.storage.ConnectionBudget` as every
  unit of work (one token for the whole block), so the budget never promises a connection the pool
  does not have, and ``/status`` shows it as in use;
* nothing but the lock, its probe and the unlock ever runs on it; it is never in a transaction and
  never handed to a unit, and the context of the code inside the block is *not* marked as holding a
  connection (its HTTP calls are the point of the lock, and they never touch this connection).

If the server or the connection goes away, the session and with it the lock are gone. The holder
finds out through :meth:`AdvisoryLock.check`, which raises :class:`AdvisoryLockLost`; callers that
must not run unlocked call it between steps (the polling intake does before every poll).

Errors (all :class:`~atlas.storage.StorageError`)::

    AdvisoryLockError
    ├── AdvisoryLockBusy    busy: another session holds the lock
    └── AdvisoryLockLost    it broke: the connection holding the lock is gone
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import asyncpg
import trio

from atlas.storage.database import Database
from atlas.storage.errors import BudgetExhausted, DatabaseUnavailable, StorageError

_log = logging.getLogger("atlas.storage.locks")

_BROKEN: tuple[type[BaseException], ...] = (
    OSError,
    asyncpg.PostgresConnectionError,
    asyncpg.ConnectionDoesNotExistError,
    asyncpg.InterfaceError,
    asyncpg.AdminShutdownError,
    # A session killed server-side can leave the protocol mid-operation when the next probe is sent
    # ("cannot switch to state ...; another operation is in progress"): the session is gone all the same.
    asyncpg.InternalClientError,
)

_BROKEN_OR_SILENT: tuple[type[BaseException], ...] = (trio.TooSlowError, *_BROKEN)


class AdvisoryLockError(StorageError):
    """Base of the advisory lock errors."""


class AdvisoryLockBusy(AdvisoryLockError):
    """Another session holds the lock ``name`` (key ``key``)."""

    def __init__(self, name: str, key: int) -> None:
        self.name = name
        self.key = key
        super().__init__(f"advisory lock {name!r} (key {key}) is held by another session")


class AdvisoryLockLost(AdvisoryLockError):
    """The connection that held the lock ``name`` is gone, and the lock with it."""

    def __init__(self, name: str, why: str) -> None:
        self.name = name
        super().__init__(f"advisory lock {name!r} lost: {why}")


# What a holder meets when the database goes away or is too slow to answer: taking the lock fails
# (no server, no connection free in time), or a held one is lost.
_OUTAGE: tuple[type[StorageError], ...] = (DatabaseUnavailable, BudgetExhausted, AdvisoryLockLost)


def lock_outage(error: BaseException) -> StorageError | None:
    """The database outage behind ``error`` (alone, or every leaf of a group), or None.

    A lock holder that meets one should wait for the database and try to take the lock again,
    not crash: crashing burns its supervisor's restart intensity on an outage it cannot fix (a
    10 s PostgreSQL stop made the ``workers`` supervisor give up, issue 11). ``Cancelled`` leaves
    of a group (the holder's other tasks, cancelled by the nursery) do not count against it.
    """
    if isinstance(error, _OUTAGE):
        return error
    if isinstance(error, BaseExceptionGroup):
        matched, rest = error.split(_OUTAGE)
        if matched is not None and (rest is None or rest.split(trio.Cancelled)[1] is None):
            leaf: BaseException = matched
            while isinstance(leaf, BaseExceptionGroup):
                leaf = leaf.exceptions[0]
            return leaf if isinstance(leaf, StorageError) else None
    return None


def advisory_key(name: str) -> int:
    """A stable signed 64-bit key for ``name`` (the first 8 bytes of its sha256)."""
    if not name:
        raise ValueError("an advisory lock needs a non-empty name")
    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big", signed=True)


class AdvisoryLock:
    """A held lock. Valid inside its ``async with`` block only."""

    def __init__(self, name: str, key: int, conn: Any, db: Database) -> None:
        self.name = name
        self._db = db
        self.key = key
        self._conn = conn
        self._held = True

    @property
    def held(self) -> bool:
        """True until the block ends or the lock is found lost."""
        return self._held

    async def check(self, timeout: float = 5.0) -> None:  # noqa: ASYNC109 - a probe with its own bound
        """Make sure the session (and so the lock) is still there; :class:`AdvisoryLockLost` if not.

        One round trip on the lock's own connection, bounded by ``timeout`` seconds (a probe that
        does not answer counts as lost: a half-open TCP connection would otherwise look alive).
        """
        if not self._held:
            raise AdvisoryLockLost(self.name, "the lock was released or already found lost")
        conn = self._conn

        async def _probe() -> bool:
            return bool(
                await conn.fetchval(
                    "SELECT EXISTS (SELECT 1 FROM pg_locks WHERE locktype = 'advisory' AND granted "
                    "AND pid = pg_backend_pid() AND objid = ($1::bigint & 4294967295)::oid "
                    "AND classid = (($1::bigint >> 32) & 4294967295)::oid)",
                    self.key,
                )
            )

        try:
            with trio.fail_after(timeout):
                still = await self._db._call(_probe)
        except _BROKEN_OR_SILENT as exc:
            self._held = False
            raise AdvisoryLockLost(self.name, f"{type(exc).__name__}: {exc}") from exc
        if not still:
            self._held = False
            raise AdvisoryLockLost(self.name, "the session no longer holds it")


@asynccontextmanager
async def hold_advisory_lock(db: Database, name: str) -> AsyncIterator[AdvisoryLock]:
    """Hold the session advisory lock ``name`` for the duration of the block.

    Borrows one connection token from the budget (waiting at most ``acquire_timeout``,
    :class:`~atlas.storage.BudgetExhausted`) and one pooled connection for the whole block
    (:class:`~atlas.storage.DatabaseUnavailable` when the server cannot be reached). Raises
    :class:`AdvisoryLockBusy` at once, holding nothing, when another session has the lock: callers
    decide whether to stand by and try again. On exit — normal, error or cancellation — the lock is
    released and the connection goes back to the pool in a shielded, time-boxed step; when the unlock
    is not confirmed the connection is terminated instead, so a failed unlock cannot leak the lock.
    """
    key = advisory_key(name)
    pool = db._pool  # package-private: the one place outside db.run that borrows a connection
    async with db.budget.borrow(db.settings.acquire_timeout, object()):

        async def _acquire() -> Any:
            return await pool.acquire()

        try:
            conn = await db._call(_acquire)
        except _BROKEN as exc:
            # The server is away (stopped, restarting): a name every caller knows, not asyncpg's.
            raise DatabaseUnavailable(f"advisory lock {name!r}: {type(exc).__name__}: {exc}") from exc
        clean = False  # True once we know the session holds no lock: only then may it be reused
        try:
            try:
                got = bool(await db._call(conn.fetchval, "SELECT pg_try_advisory_lock($1)", key))
            except _BROKEN as exc:
                raise DatabaseUnavailable(f"advisory lock {name!r}: {type(exc).__name__}: {exc}") from exc
            if not got:
                clean = True
                raise AdvisoryLockBusy(name, key)
            lock = AdvisoryLock(name, key, conn, db)
            _log.info("advisory lock %r taken (key %d)", name, key)
            try:
                yield lock
            finally:
                clean = await _unlock(db, lock, conn)
        finally:
            await _give_back(db, conn, clean=clean, name=name)


async def _give_back(db: Database, conn: Any, *, clean: bool, name: str) -> None:
    """Return the lock's connection to the pool, or end its session when it may still hold the lock.

    The pool does not reset connections on release (:mod:`atlas.storage.database`), so a session
    whose unlock was not confirmed must not be reused: terminating it is what drops the lock.
    """
    pool = db._pool  # package-private, as above

    async def _release() -> None:
        if not clean:
            # InterfaceError: already closed and handed back by the pool; the session and its lock ended.
            with contextlib.suppress(asyncpg.InterfaceError):
                conn.terminate()
        await pool.release(conn)

    with trio.CancelScope(shield=True), trio.move_on_after(10) as box:
        await db._call(_release)
    if box.cancelled_caught:
        _log.error("advisory lock %r: its connection did not go back to the pool in 10 s", name)
        db._loop.call_soon(conn.terminate)


async def _unlock(db: Database, lock: AdvisoryLock, conn: Any) -> bool:
    """Release the lock; True when the session is known to hold it no more (safe to reuse)."""
    was_held = lock.held
    lock._held = False
    if not was_held:
        return False  # found lost: the session is broken or in doubt
    with trio.CancelScope(shield=True), trio.move_on_after(5):
        try:
            released = bool(await db._call(conn.fetchval, "SELECT pg_advisory_unlock($1)", lock.key))
        except _BROKEN as exc:
            # The session is gone, so is the lock; nothing to undo.
            _log.warning("advisory lock %r: unlock failed (%s); the session ended anyway", lock.name, exc)
            return False
        _log.info("advisory lock %r released", lock.name)
        return released
    return False
