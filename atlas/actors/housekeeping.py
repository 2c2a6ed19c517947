"""Housekeeping: keep the runtime's own tables from growing without bound.

``CrashReportPruner`` deletes crash reports older than the retention, in bounded batches, yielding
and beating its heart between batches, with a time budget per tick (contract 3: every batch is
bounded, a tick has a time budget). ``HandledUpdatePruner`` does the same for the record of handled
Telegram updates (``telegram_handled_updates``), which only matters while Telegram may still send
an update again: it keeps unconfirmed updates for 24 hours, so two days are kept.
"""

from __future__ import annotations

import datetime as dt
import logging
import random
from collections.abc import Awaitable, Callable

import trio

from atlas.actors.base import Actor
from atlas.clock import Clock
from atlas.storage import Database
from atlas.storage.crash_reports import prune_crash_reports
from atlas.storage.units.handled_updates import prune_handled_updates

_log = logging.getLogger("atlas.actors.housekeeping")

PruneUnit = Callable[..., Awaitable[int]]
"""``async def prune(tx, *, before, limit) -> int``: delete at most ``limit`` rows older than
``before``; return how many were deleted."""


class RetentionPruner(Actor):
    """Deletes rows older than ``retention`` with ``prune``, ``batch`` rows at a time, every ``period``."""

    def __init__(
        self,
        name: str,
        prune: PruneUnit,
        *,
        what: str,
        db: Callable[[], Database],
        clock: Clock,
        rng: random.Random,
        retention: dt.timedelta,
        period: float,
        batch: int,
        tick_budget: float,
    ) -> None:
        super().__init__(name, period=period, first_tick=(5.0, 60.0), rng=rng)
        self._prune = prune
        self._what = what
        self._db = db
        self._clock = clock
        self._retention = retention
        self._batch = batch
        self._tick_budget = tick_budget
        self.pruned = 0

    async def tick(self) -> None:
        """Delete old rows until none are left or the tick's time budget is spent."""
        before = self._clock.now() - self._retention
        deadline = trio.current_time() + self._tick_budget
        while trio.current_time() < deadline:
            deleted = await self._db().run(self._prune, before=before, limit=self._batch)
            self.pruned += deleted
            self.heartbeat()
            if deleted < self._batch:
                break
            await trio.lowlevel.checkpoint()
        if self.pruned:
            _log.info("%s pruned so far: %d", self._what, self.pruned)


class CrashReportPruner(RetentionPruner):
    """Deletes crash reports older than ``retention`` (30 days by default)."""

    def __init__(
        self,
        *,
        db: Callable[[], Database],
        clock: Clock,
        rng: random.Random,
        retention: dt.timedelta = dt.timedelta(days=30),
        period: float = 3600.0,
        batch: int = 500,
        tick_budget: float = 10.0,
    ) -> None:
        super().__init__(
            "crash_report_pruner",
            prune_crash_reports,
            what="crash reports",
            db=db,
            clock=clock,
            rng=rng,
            retention=retention,
            period=period,
            batch=batch,
            tick_budget=tick_budget,
        )


class HandledUpdatePruner(RetentionPruner):
    """Deletes handled-update records older than ``retention`` (two days by default)."""

    def __init__(
        self,
        *,
        db: Callable[[], Database],
        clock: Clock,
        rng: random.Random,
        retention: dt.timedelta = dt.timedelta(days=2),
        period: float = 3600.0,
        batch: int = 5000,
        tick_budget: float = 10.0,
    ) -> None:
        super().__init__(
            "handled_update_pruner",
            prune_handled_updates,
            what="handled-update records",
            db=db,
            clock=clock,
            rng=rng,
            retention=retention,
            period=period,
            batch=batch,
            tick_budget=tick_budget,
        )
