"""The transaction handle a unit of work receives.

A :class:`Tx` is a thin proxy over one asyncpg connection inside one transaction. It exists so that
two mistakes the predecessor made are impossible to make quietly:

* using a connection after it went back to the pool (``fast_expiry_cleanup`` did): once the unit
  ends, every method raises :class:`TxClosed`;
* fetching an unbounded result set (five workers did): ``fetch`` refuses a query that has no
  ``LIMIT`` unless the caller names the bound (``bounded_by="ids passed in, at most 1000"``).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, TypeAlias, TypeVar

import asyncpg

from atlas.storage.errors import TxClosed, UnboundedFetch

_LIMIT = re.compile(r"\blimit\s+(\$\d+|\d+)", re.IGNORECASE)

# Rows are asyncpg Records; typed as read-only mappings so units index them by column name.
Record: TypeAlias = Mapping[str, Any]

U = TypeVar("U", bound=Callable[..., Any])

_SETTING_NAME = re.compile(r"[a-z_][a-z0-9_.]*")
_SETTING_VALUE = re.compile(r"[A-Za-z0-9_.]+")
_BEGIN_WITH = "__atlas_begin__"


def transaction_settings(**settings: str) -> Callable[[U], U]:
    """Give a unit of work's transaction these settings (``SET LOCAL``), sent with its ``BEGIN``.

    ``db.run`` sends ``BEGIN; SET LOCAL name = value; ...`` as one message, so the settings cost no
    round trip, and they end with the transaction: the next unit on the connection has the server's
    defaults again. Names are identifiers and values identifiers or numbers, written in code (checked
    here, never quoted from input), e.g. ``@transaction_settings(plan_cache_mode="force_generic_plan")``.
    """
    for name, value in settings.items():
        if not _SETTING_NAME.fullmatch(name) or not _SETTING_VALUE.fullmatch(value):
            raise ValueError(
                f"transaction setting {name}={value!r}: names are identifiers, values identifiers or numbers"
            )
    begin = "; ".join(["BEGIN", *(f"SET LOCAL {name} = {value}" for name, value in settings.items())])

    def mark(unit: U) -> U:
        setattr(unit, _BEGIN_WITH, begin)
        return unit

    return mark


def begin_statement(unit: Callable[..., Any]) -> str:
    """What ``db.run`` sends to open ``unit``'s transaction: ``BEGIN`` and its settings, if any."""
    begin: str = getattr(unit, _BEGIN_WITH, "BEGIN")
    return begin


class Tx:
    """One transaction of one unit of work. Valid only while that unit runs."""

    __slots__ = ("_conn", "_open", "unit_name")

    def __init__(self, conn: asyncpg.Connection, unit_name: str) -> None:
        self._conn: asyncpg.Connection = conn
        self._open = True
        self.unit_name = unit_name

    def _check(self) -> asyncpg.Connection:
        if not self._open:
            raise TxClosed(
                f"transaction of unit {self.unit_name!r} used after the unit ended; "
                "its connection is back in the pool"
            )
        return self._conn

    def close(self) -> None:
        """Invalidate the handle (called by ``db.run`` when the unit ends)."""
        self._open = False

    @property
    def is_open(self) -> bool:
        """True while the unit of work that received this handle is running."""
        return self._open

    async def execute(self, query: str, *args: Any) -> str:
        """Run a statement; return its status tag (``"UPDATE 3"``)."""
        return str(await self._check().execute(query, *args))

    async def executemany(self, query: str, args: Iterable[Sequence[Any]]) -> None:
        """Run a statement once per argument tuple, in this transaction."""
        await self._check().executemany(query, args)

    async def fetch(self, query: str, *args: Any, bounded_by: str | None = None) -> list[Record]:
        """Return all rows of a bounded query.

        The query must contain ``LIMIT`` (a literal or a parameter), or the caller must say in
        ``bounded_by`` why the result is bounded anyway; otherwise :class:`UnboundedFetch`.
        """
        if bounded_by is None and not _LIMIT.search(query):
            raise UnboundedFetch(
                f"unit {self.unit_name!r}: fetch without LIMIT; add LIMIT or say why it is bounded "
                "with bounded_by=..."
            )
        rows: list[Record] = await self._check().fetch(query, *args)
        return rows

    async def fetchrow(self, query: str, *args: Any) -> Record | None:
        """Return the first row, or None."""
        row: Record | None = await self._check().fetchrow(query, *args)
        return row

    async def fetchval(self, query: str, *args: Any, column: int = 0) -> Any:
        """Return one value of the first row, or None."""
        return await self._check().fetchval(query, *args, column=column)
