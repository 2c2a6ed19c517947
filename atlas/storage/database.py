"""``Database``: the pool, the budget, and ``db.run`` — the only way to touch PostgreSQL.

Contract 1 of DESIGN.md, by construction:

* Code outside this package never sees a connection. It calls ``await db.run(unit, **kwargs)``
  where ``unit`` is ``async def unit(tx, **kwargs)``. The whole unit runs inside one transaction on
  the storage loop (:mod:`atlas.storage.loop`: asyncpg on its own uvloop loop in a thread of its
  own), in one handoff each way.
* Before the handoff, ``db.run`` borrows a token from the :class:`ConnectionBudget` (a
  ``trio.CapacityLimiter``) under a deadline; the token is returned when the unit has ended *and*
  its connection is back in the pool.
* While the unit runs, :func:`atlas.net.holding_connection` marks its context, so every outbound
  client raises :class:`atlas.net.ConnectionHeldAcrossIO`: a unit of work cannot do I/O.
* The ``tx`` handle is invalidated when the unit ends (:class:`TxClosed` afterwards).

Transactions: ``db.run`` sends ``BEGIN`` itself (with the unit's
:func:`~atlas.storage.tx.transaction_settings` in the same message, when it has any), then
``COMMIT``, or ``ROLLBACK`` when the unit raised.

Cancellation: cancelling the caller cancels the asyncio task running the unit; ``db.run`` rolls the
transaction back once asyncpg has cancelled the query in progress (or, if the connection broke, the
pool terminates and replaces it), and only *then* does the trio side resume and return the token
(:meth:`StorageLoop.call` waits for the task).

Conflicts: a unit has no I/O, so re-running it is safe. Serialization failures and deadlocks are
retried up to ``conflict_retries`` times before :class:`TransactionConflict` is raised.

Why asyncpg is not on the process's trio-asyncio loop any more: see :mod:`atlas.storage.loop`
(3.6× the cost per unit, measured) and docs/architecture.md.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Concatenate, ParamSpec, TypeVar

import asyncpg
import trio

from atlas.net.guard import holding_connection
from atlas.storage.budget import BudgetStatistics, ConnectionBudget
from atlas.storage.errors import DatabaseUnavailable, TransactionConflict
from atlas.storage.loop import StorageLoop
from atlas.storage.tx import Tx, begin_statement

P = ParamSpec("P")
T = TypeVar("T")

UnitOfWork = Callable[Concatenate[Tx, P], Awaitable[T]]

_log = logging.getLogger("atlas.storage")

# Errors that mean "the server or the connection broke", not "your SQL is wrong".
_UNAVAILABLE: tuple[type[BaseException], ...] = (
    OSError,
    asyncpg.PostgresConnectionError,
    asyncpg.ConnectionDoesNotExistError,
    asyncpg.CannotConnectNowError,
    asyncpg.TooManyConnectionsError,
    asyncpg.AdminShutdownError,
)
_CONFLICT: tuple[type[BaseException], ...] = (
    asyncpg.SerializationError,
    asyncpg.DeadlockDetectedError,
)


@dataclass(frozen=True, slots=True)
class DatabaseSettings:
    """How to reach PostgreSQL and how much of it we may use.

    ``pool_size`` is also the budget's size: the budget is never larger than the pool.
    """

    dsn: str
    pool_size: int = 10
    acquire_timeout: float = 10.0
    unit_timeout: float = 30.0
    statement_timeout: float = 30.0
    conflict_retries: int = 3

    def __post_init__(self) -> None:
        for name in ("pool_size", "conflict_retries"):
            value = getattr(self, name)
            if value < (1 if name == "pool_size" else 0):
                raise ValueError(f"DatabaseSettings.{name} out of range: {value!r}")
        for name in ("acquire_timeout", "unit_timeout", "statement_timeout"):
            value = getattr(self, name)
            if value <= 0:
                raise ValueError(f"DatabaseSettings.{name} must be positive, got {value!r}")


async def _no_session_state_to_reset(conn: asyncpg.Connection) -> None:
    """The pool's reset on release: nothing to send, so no round trip per unit.

    asyncpg's default reset sends ``RESET ALL; CLOSE ALL; UNLISTEN *; SELECT
    pg_advisory_unlock_all()`` on every release: one more round trip for every unit. Atlas's
    connections never carry session state: a unit runs inside the one transaction ``db.run``
    opens and ends (asyncpg still rolls back a transaction left open before calling this), units
    use transaction-scoped locks only (``pg_advisory_xact_lock``), and the one session-level user,
    :mod:`atlas.storage.locks`, unlocks its lock or terminates the connection when it cannot.
    """


async def _roll_back(conn: asyncpg.Connection, name: str) -> None:
    """Roll back after a unit failed; the unit's own error is what the caller must see.

    If the connection broke, or a cancelled query is still being cancelled and the ``ROLLBACK``
    fails, the pool's release finds the connection closed (and replaces it) or still inside the
    transaction (and rolls it back before anyone else gets it): no transaction stays open.
    """
    if conn.is_closed():
        return
    try:
        await conn.execute("ROLLBACK")
    except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError) as exc:
        _log.info(
            "unit %s: ROLLBACK failed (%s: %s); the pool resets the connection", name, type(exc).__name__, exc
        )


def _unit_name(unit: Callable[..., Any]) -> str:
    module = getattr(unit, "__module__", "") or ""
    qualname = getattr(unit, "__qualname__", None) or repr(unit)
    return f"{module.rsplit('.', 1)[-1]}.{qualname}" if module else str(qualname)


class Database:
    """The pool owner. Open it with :meth:`open` (from trio); close it with :meth:`close`."""

    def __init__(self, settings: DatabaseSettings, pool: asyncpg.Pool, loop: StorageLoop) -> None:
        self.settings = settings
        self._pool = pool
        self._loop = loop
        self.budget = ConnectionBudget(settings.pool_size)
        self.units_run = 0
        self.units_failed = 0
        self.conflicts_retried = 0

    @classmethod
    async def open(cls, settings: DatabaseSettings) -> Database:
        """Start the storage loop, create the asyncpg pool on it, and wrap both.

        Raises :class:`DatabaseUnavailable` when the server cannot be reached (the loop is stopped
        again: nothing is left running).
        """

        async def _create() -> asyncpg.Pool:
            return await asyncpg.create_pool(
                settings.dsn,
                min_size=1,
                max_size=settings.pool_size,
                command_timeout=settings.statement_timeout,
                server_settings={"application_name": "atlas"},
                reset=_no_session_state_to_reset,
            )

        loop = await StorageLoop.start()
        try:
            pool = await loop.call(_create)
        except BaseException as exc:
            with trio.CancelScope(shield=True):
                await loop.close()
            if isinstance(exc, _UNAVAILABLE):
                raise DatabaseUnavailable(f"cannot connect to PostgreSQL: {exc}") from exc
            raise
        return cls(settings, pool, loop)

    async def close(self) -> None:
        """Close the pool, waiting (bounded) for connections in use to come back."""

        async def _close() -> None:
            await asyncio.wait_for(self._pool.close(), timeout=10)

        try:
            try:
                await self._loop.call(_close)
            except TimeoutError:
                _log.warning("pool did not close within 10 s; terminating its connections")
                self._loop.call_soon(self._pool.terminate)
        finally:
            await self._loop.close()

    async def run(self, unit: UnitOfWork[P, T], /, *args: P.args, **kwargs: P.kwargs) -> T:
        """Run ``unit(tx, **kwargs)`` whole inside one transaction and return its result.

        Waits at most ``acquire_timeout`` for a connection token (:class:`BudgetExhausted`), and at
        most ``unit_timeout`` for the unit (``trio.TooSlowError``; the transaction is rolled back).
        Anything the unit raises is re-raised after rollback; connection failures become
        :class:`DatabaseUnavailable`.
        """
        if args:
            raise TypeError("db.run passes arguments to a unit by keyword only")
        name = _unit_name(unit)
        if self._pool.is_closing():
            # asyncpg would raise its own InterfaceError; callers outside storage only know ours.
            raise DatabaseUnavailable(f"unit {name!r}: the connection pool is closed")
        attempts = self.settings.conflict_retries + 1
        for attempt in range(1, attempts + 1):
            try:
                async with self.budget.borrow(self.settings.acquire_timeout, object()):
                    with trio.fail_after(self.settings.unit_timeout):
                        result: T = await self._loop.call(self._in_transaction, unit, name, kwargs)
                self.units_run += 1
                return result
            except _CONFLICT as exc:
                if attempt == attempts:
                    self.units_failed += 1
                    raise TransactionConflict(
                        f"unit {name!r} still conflicting after {attempt} tries"
                    ) from exc
                self.conflicts_retried += 1
                _log.info("unit %s conflicted (%s), retrying", name, exc.__class__.__name__)
            except _UNAVAILABLE as exc:
                self.units_failed += 1
                raise DatabaseUnavailable(f"unit {name!r}: {exc.__class__.__name__}: {exc}") from exc
            except BaseException:
                self.units_failed += 1
                raise
        raise AssertionError("unreachable")  # pragma: no cover

    async def _in_transaction(self, unit: UnitOfWork[..., T], name: str, kwargs: dict[str, Any]) -> T:
        # Runs on the storage loop. The connection and the guard live exactly as long as this.
        # BEGIN is ours, not asyncpg's `conn.transaction()`: it carries the unit's settings in the
        # same message (`transaction_settings`), which asyncpg's BEGIN cannot.
        begin = begin_statement(unit)
        async with self._pool.acquire() as conn:
            tx = Tx(conn, name)
            try:
                with holding_connection(name):
                    await conn.execute(begin)
                    try:
                        result = await unit(tx, **kwargs)
                    except BaseException:
                        await _roll_back(conn, name)
                        raise
                    await conn.execute("COMMIT")
                    return result
            finally:
                tx.close()

    def budget_statistics(self) -> BudgetStatistics:
        """Snapshot of the connection budget (for metrics, /status and crash reports)."""
        return self.budget.statistics()

    async def _call(self, fn: Callable[..., Awaitable[T]], /, *args: Any) -> T:
        """Package-private: run ``fn(*args)`` on the storage loop (advisory locks use it)."""
        return await self._loop.call(fn, *args)

    def pool_statistics(self) -> dict[str, int]:
        """The pool's own view: size, idle connections, and the configured maximum."""
        return {
            "size": self._pool.get_size(),
            "idle": self._pool.get_idle_size(),
            "max": self._pool.get_max_size(),
        }
