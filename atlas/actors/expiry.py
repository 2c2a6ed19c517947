"""``expiry``: end subscriptions whose time is up and ask for their keys to be revoked.

Each batch is one ``expire_due`` unit (``FOR UPDATE SKIP LOCKED LIMIT n``): the status becomes
expired, the key's desired state becomes absent (the VPN controller removes it from the nodes), and
one notice per expiry goes to the outbox. Paid and trial subscriptions alike: a trial that was
converted to paid is a paid row, so a trial expiry can never revoke paid time.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable

from atlas.actors.base import Actor
from atlas.actors.batching import run_batches
from atlas.clock import Clock
from atlas.domain import SubscriptionKind
from atlas.storage import Database
from atlas.storage.units.expiry import expire_due

_log = logging.getLogger("atlas.actors.expiry")


class ExpiryWorker(Actor):
    """Expires due subscriptions (only ``kind`` if given) every ``period`` seconds."""

    def __init__(
        self,
        *,
        db: Callable[[], Database],
        clock: Clock,
        rng: random.Random,
        name: str = "expiry",
        kind: SubscriptionKind | None = None,
        period: float = 60.0,
        batch: int = 100,
        tick_budget: float = 30.0,
    ) -> None:
        super().__init__(name, period=period, first_tick=(1.0, min(30.0, period)), rng=rng)
        self._db = db
        self._clock = clock
        self._kind = kind
        self._batch = batch
        self._tick_budget = tick_budget
        self.expired = 0

    async def tick(self) -> None:
        """Expire everything due now, batch by batch, within the tick's budget."""

        async def step() -> tuple[int, bool]:
            counts = await self._db().run(
                expire_due, now=self._clock.now(), limit=self._batch, kind=self._kind
            )
            self.expired += counts.expired
            return counts.expired, counts.claimed == self._batch

        run = await run_batches(step, budget=self._tick_budget, heartbeat=self.heartbeat)
        if run.items:
            _log.info("%s tick: %d subscriptions expired", self.name, run.items)
