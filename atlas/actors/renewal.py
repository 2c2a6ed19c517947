"""``renewal``: auto-renew paid subscriptions from the user's balance.

Each batch is one ``claim_and_renew`` unit: ``FOR UPDATE SKIP LOCKED LIMIT n`` over due
subscriptions, debit and extension in the same transaction, one "not enough balance" notice per
period. Two processes running this worker never renew the same subscription twice (the claim skips
locked rows; the ledger's idempotency key refuses a second charge for the same period).
"""

from __future__ import annotations

import datetime as dt
import logging
import random
from collections.abc import Callable

from atlas.actors.base import Actor
from atlas.actors.batching import run_batches
from atlas.clock import Clock
from atlas.domain import PlanCatalog
from atlas.storage import Database
from atlas.storage.units.renewals import claim_and_renew

_log = logging.getLogger("atlas.actors.renewal")


class RenewalWorker(Actor):
    """Renews due subscriptions every ``period`` seconds, ``batch`` at a time."""

    def __init__(
        self,
        *,
        db: Callable[[], Database],
        clock: Clock,
        rng: random.Random,
        catalog: PlanCatalog,
        currency: str,
        renew_window: dt.timedelta = dt.timedelta(hours=24),
        retry_after: dt.timedelta = dt.timedelta(hours=6),
        period: float = 300.0,
        batch: int = 100,
        tick_budget: float = 60.0,
    ) -> None:
        super().__init__("renewal", period=period, first_tick=(5.0, min(60.0, period)), rng=rng)
        self._db = db
        self._clock = clock
        self._catalog = catalog
        self._currency = currency
        self._renew_window = renew_window
        self._retry_after = retry_after
        self._batch = batch
        self._tick_budget = tick_budget
        self.renewed = 0
        self.insufficient = 0

    async def tick(self) -> None:
        """Renew everything due now, batch by batch, within the tick's budget."""

        async def step() -> tuple[int, bool]:
            counts = await self._db().run(
                claim_and_renew,
                now=self._clock.now(),
                limit=self._batch,
                renew_window=self._renew_window,
                retry_after=self._retry_after,
                catalog=self._catalog,
                currency=self._currency,
            )
            self.renewed += counts.renewed
            self.insufficient += counts.insufficient
            return counts.claimed, counts.claimed == self._batch

        run = await run_batches(step, budget=self._tick_budget, heartbeat=self.heartbeat)
        if run.items:
            _log.info("renewal tick: %d claimed in %d batches", run.items, run.batches)
