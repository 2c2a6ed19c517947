"""The connection budget: a trio-side token for every pooled connection.

Why a budget in front of the pool: asyncpg's pool waits on the asyncio side, where a waiter holds
nothing of ours but also tells us nothing. Borrowing a token on the trio side *first* means a caller
waits where trio can cancel it and a deadline can bound it, every wait is measured, and the number
of callers on the asyncio side never exceeds the pool, so ``pool.acquire`` never blocks. This is the
predecessor's 600-second freeze made visible: starvation shows up as ``waiting`` and ``max_wait``
here, and as a ``BudgetExhausted`` error instead of a silent hang.

A token is a ``trio.CapacityLimiter`` borrow; it is not a rate limiter.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

import trio

from atlas.storage.errors import BudgetExhausted


@dataclass(frozen=True, slots=True)
class BudgetStatistics:
    """A snapshot of the budget: what is borrowed now and what waiting has cost so far."""

    total: int
    in_use: int
    waiting: int
    borrows: int
    exhausted: int
    total_wait: float
    max_wait: float

    def as_tuple(self) -> tuple[int, int, int]:
        """(in use, total, waiting): the triple crash reports carry."""
        return (self.in_use, self.total, self.waiting)


class ConnectionBudget:
    """Hands out at most ``total`` connection tokens; callers wait under a deadline.

    Cancellation while waiting leaves the budget unchanged; a token is always returned when the
    ``borrow`` block exits, however it exits.
    """

    def __init__(self, total: int) -> None:
        if total < 1:
            raise ValueError(f"connection budget must be at least 1, got {total}")
        self._limiter = trio.CapacityLimiter(total)
        self._borrows = 0
        self._exhausted = 0
        self._total_wait = 0.0
        self._max_wait = 0.0

    @property
    def total(self) -> int:
        """How many tokens exist (never more than the pool's size)."""
        return int(self._limiter.total_tokens)

    @asynccontextmanager
    async def borrow(self, deadline: float, borrower: object) -> AsyncIterator[None]:
        """Hold one token for the duration of the block.

        Raises :class:`BudgetExhausted` when no token is free within ``deadline`` seconds.
        ``borrower`` must be unique among current borrowers (a fresh object per call).
        """
        started = trio.current_time()
        try:
            with trio.fail_after(deadline):
                await self._limiter.acquire_on_behalf_of(borrower)
        except trio.TooSlowError:
            self._exhausted += 1
            stats = self._limiter.statistics()
            raise BudgetExhausted(
                f"no database connection within {deadline:.3g}s "
                f"({stats.borrowed_tokens}/{stats.total_tokens} in use, {stats.tasks_waiting} waiting)"
            ) from None
        waited = trio.current_time() - started
        self._borrows += 1
        self._total_wait += waited
        self._max_wait = max(self._max_wait, waited)
        try:
            yield
        finally:
            self._limiter.release_on_behalf_of(borrower)

    def statistics(self) -> BudgetStatistics:
        """Return a snapshot; cheap enough for every crash report and metrics scrape."""
        stats = self._limiter.statistics()
        return BudgetStatistics(
            total=int(stats.total_tokens),
            in_use=stats.borrowed_tokens,
            waiting=stats.tasks_waiting,
            borrows=self._borrows,
            exhausted=self._exhausted,
            total_wait=self._total_wait,
            max_wait=self._max_wait,
        )
