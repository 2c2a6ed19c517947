"""``reminders`` and ``trial_notices``: warn users before their time runs out.

A keyset walk over active subscriptions (``id > cursor ORDER BY id LIMIT n``), one
``enqueue_due_reminders`` unit per page; each due reminder becomes an outbox row whose dedupe key
names the subscription, its expiry and the threshold, so a reminder is sent once even if two
processes walk at the same time or the worker crashes halfway. The trial worker walks trial
subscriptions and also expires trials; the paid worker walks paid ones.
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
from atlas.storage.units.reminders import enqueue_due_reminders

_log = logging.getLogger("atlas.actors.reminders")


class ReminderWorker(Actor):
    """Enqueues due reminders for ``kind`` subscriptions; for trials also expires them."""

    def __init__(
        self,
        *,
        db: Callable[[], Database],
        clock: Clock,
        rng: random.Random,
        currency: str,
        kind: SubscriptionKind,
        period: float = 300.0,
        batch: int = 200,
        tick_budget: float = 30.0,
    ) -> None:
        name = "trial_notices" if kind is SubscriptionKind.TRIAL else "reminders"
        super().__init__(name, period=period, first_tick=(5.0, min(60.0, period)), rng=rng)
        self._db = db
        self._clock = clock
        self._currency = currency
        self._kind = kind
        self._batch = batch
        self._tick_budget = tick_budget
        self.enqueued = 0
        self.expired = 0

    async def tick(self) -> None:
        """Walk every active subscription of this kind once; then (trials) expire the due ones."""
        cursor = 0

        async def remind() -> tuple[int, bool]:
            nonlocal cursor
            batch = await self._db().run(
                enqueue_due_reminders,
                now=self._clock.now(),
                after_id=cursor,
                limit=self._batch,
                currency=self._currency,
                kind=self._kind,
            )
            self.enqueued += batch.enqueued
            if batch.next_after_id is None:
                return batch.examined, False
            cursor = batch.next_after_id
            return batch.examined, True

        run = await run_batches(remind, budget=self._tick_budget, heartbeat=self.heartbeat)
        if self._kind is SubscriptionKind.TRIAL:

            async def expire() -> tuple[int, bool]:
                counts = await self._db().run(
                    expire_due, now=self._clock.now(), limit=self._batch, kind=SubscriptionKind.TRIAL
                )
                self.expired += counts.expired
                return counts.expired, counts.claimed == self._batch

            await run_batches(expire, budget=self._tick_budget, heartbeat=self.heartbeat)
        if run.items:
            _log.info("%s tick: %d subscriptions examined, %d reminders so far", self.name, run.items,
                      self.enqueued)
