"""``stars_reconciler``: no Stars charge is lost, whatever happened to its ``successful_payment``.

Each tick (every ``period`` s, default 10 min):

1. finishes refunds that were recorded but not confirmed (a crash or an error between the record
   and Telegram's answer), at most ``batch`` of them;
2. walks the bot's Stars history from the stored cursor (``reconcile_cursors``), at most
   ``max_pages`` pages of ``page_size`` (≤ 100), and decides each incoming charge by the table in
   :mod:`atlas.payments.stars_reconcile`: ``apply_payment`` (idempotent on the charge id); a charge
   that applies to nothing is refunded once, with a notice to the user;
3. moves the cursor past every entry it settled. Entries younger than ``grace`` are left for a
   later tick (the normal path, ``successful_payment``, usually gets there first), and so is
   everything after them.

Each page: one Telegram call, then short units of work (never a connection held across I/O). A
Telegram outage ends the tick where it is; the cursor only moves past settled entries, so the next
tick resumes there. A refund Telegram refuses for another reason (``CHARGE_NOT_FOUND``) is logged
as an error and stays recorded ``pending`` for an operator; the walk goes on. Running the reconcile
twice changes nothing the second time.
"""

from __future__ import annotations

import datetime as dt
import logging
import random
from collections.abc import Callable, Sequence

import trio
from aiogram.exceptions import TelegramAPIError, TelegramNetworkError

from atlas.actors.base import Actor
from atlas.clock import Clock
from atlas.domain import ReferralPolicy
from atlas.payments.stars_reconcile import (
    MAX_PAGE,
    VERDICTS,
    StarsLedgerApi,
    StarTransaction,
    Verdict,
)
from atlas.payments.stars_returns import ReturnOutcome, finish_return, return_charge
from atlas.storage import Database
from atlas.storage.units.apply import apply_payment
from atlas.storage.units.provider_records import (
    advance_reconcile_cursor,
    pending_provider_refunds,
    reconcile_cursor,
    refunded_externally,
)
from atlas.storage.units.records import ApplyOutcome

_log = logging.getLogger("atlas.actors.stars_reconciler")

PROVIDER = "stars"
CURSOR = "stars.transactions"
_TELEGRAM_DOWN = (TelegramNetworkError, TelegramAPIError)


class StarsReconciler(Actor):
    """Walks ``getStarTransactions`` and settles every charge; see the module docstring.

    Counters for tests and ``/status``: ``applied``, ``refunded``, ``refusals``, ``outages``.
    """

    def __init__(
        self,
        *,
        db: Callable[[], Database],
        ledger: StarsLedgerApi,
        clock: Clock,
        rng: random.Random,
        referral_policy: ReferralPolicy,
        balance_currency: str,
        period: float = 600.0,
        page_size: int = MAX_PAGE,
        max_pages: int = 20,
        batch: int = 50,
        grace: dt.timedelta = dt.timedelta(minutes=10),
        name: str = "stars_reconciler",
    ) -> None:
        if isinstance(page_size, bool) or not isinstance(page_size, int) or not 1 <= page_size <= MAX_PAGE:
            raise ValueError(f"page_size must be an integer in 1..{MAX_PAGE}, got {page_size!r}")
        if isinstance(max_pages, bool) or not isinstance(max_pages, int) or max_pages < 1:
            raise ValueError(f"max_pages must be a positive integer, got {max_pages!r}")
        if isinstance(batch, bool) or not isinstance(batch, int) or not 1 <= batch <= 1000:
            raise ValueError(f"batch must be an integer in 1..1000, got {batch!r}")
        if grace < dt.timedelta(0):
            raise ValueError(f"grace must be >= 0, got {grace}")
        super().__init__(name, period=period, first_tick=(5.0, min(60.0, period)), rng=rng)
        self._db = db
        self._ledger = ledger
        self._clock = clock
        self._policy = referral_policy
        self._currency = balance_currency
        self._page_size = page_size
        self._max_pages = max_pages
        self._batch = batch
        self._grace = grace
        self.applied = 0
        self.refunded = 0
        self.refusals = 0
        self.outages = 0

    async def tick(self) -> None:
        """Finish recorded refunds, then walk the history; a Telegram outage ends the tick."""
        try:
            await self.finish_recorded_refunds()
            await self.walk()
        except _TELEGRAM_DOWN as exc:
            self.outages += 1
            _log.warning(
                "stars reconcile: Telegram not usable (%s); the walk resumes next tick",
                exc.__class__.__name__,
            )

    async def finish_recorded_refunds(self) -> None:
        """Ask Telegram again for every refund recorded but not confirmed (bounded by ``batch``)."""
        pending = await self._db().run(pending_provider_refunds, provider=PROVIDER, limit=self._batch)
        for refund in pending:
            self._count(await finish_return(self._db(), self._ledger, self._clock, refund))

    async def walk(self) -> int:
        """Walk at most ``max_pages`` pages from the cursor; return where the cursor is now."""
        cursor: int = await self._db().run(reconcile_cursor, name=CURSOR)
        for _ in range(self._max_pages):
            page = await self._ledger.transactions(offset=cursor, limit=self._page_size)
            settled = await self._settle_page(page)
            if settled:
                cursor = await self._db().run(
                    advance_reconcile_cursor, name=CURSOR, position=cursor + settled, now=self._clock.now()
                )
            self.heartbeat()
            if settled < len(page) or len(page) < self._page_size:
                break
            await trio.lowlevel.checkpoint()
        return cursor

    async def _settle_page(self, entries: Sequence[StarTransaction]) -> int:
        # The grace is how long a handler may still be applying a charge: machine time, not business.
        young = self._clock.now() - self._clock.business_span(self._grace.total_seconds())
        ripe: list[StarTransaction] = []
        for entry in entries:
            if entry.date > young:
                break
            ripe.append(entry)
        returned = {entry.id for entry in ripe if not entry.incoming}
        charges = [entry for entry in ripe if entry.incoming and entry.id not in returned]
        known_refunds = await self._db().run(
            refunded_externally, provider=PROVIDER, external_ids=[entry.id for entry in charges]
        )
        for charge in charges:
            if charge.id not in known_refunds:
                await self._settle(charge)
        return len(ripe)

    async def _settle(self, charge: StarTransaction) -> None:
        assert charge.user_id is not None
        result = await self._db().run(
            apply_payment,
            provider=PROVIDER,
            external_id=charge.id,
            payload=charge.payload or None,
            paid_amount_minor=charge.amount,
            paid_currency="XTR",
            referral_policy=self._policy,
            balance_currency=self._currency,
            now=self._clock.now(),
        )
        if result.outcome is ApplyOutcome.APPLIED:
            self.applied += 1
            _log.warning(
                "stars charge %s of user %d applied by the reconcile (its successful_payment never "
                "arrived): payment %s",
                charge.id,
                charge.user_id,
                result.payment_id,
            )
        if VERDICTS[result.outcome] is Verdict.SETTLED:
            return
        outcome = await return_charge(
            self._db(),
            self._ledger,
            self._clock,
            external_id=charge.id,
            user_id=charge.user_id,
            amount_minor=charge.amount,
            reason=f"reconcile: {result.outcome.value}" + (f" ({result.reason})" if result.reason else ""),
        )
        self._count(outcome)

    def _count(self, outcome: ReturnOutcome) -> None:
        if outcome is ReturnOutcome.RETURNED:
            self.refunded += 1
        elif outcome is ReturnOutcome.REFUSED:
            self.refusals += 1
