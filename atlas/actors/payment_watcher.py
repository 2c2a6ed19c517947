"""``payment_watcher``: the Crypto Pay webhook's backup, by polling.

Each tick walks the pending ``cryptopay`` payments with keyset pagination
(:func:`~atlas.storage.units.payments.pending_payments`, ``id > cursor ORDER BY id LIMIT batch``),
asks Crypto Pay ``getInvoices`` for the invoice ids of each page — between two units of work, never
inside one — and applies the paid ones through the same function as the webhook
(:func:`atlas.payments.apply_flow.apply_paid_invoice`), so a webhook, a watcher and a replay racing
on one invoice apply it exactly once. After a complete walk it expires stale intents.

One unreadable invoice (an item of the answer that fails the strict parser) is skipped, reported
(an error line, the ``unreadable`` counter) and kept for an operator
(:func:`~atlas.storage.units.provider_records.keep_provider_message`, once per distinct item); the
rest of the page is applied and the walk goes on. Before, such an item made the whole answer a
protocol error: later pages and expiry never ran and the backoff grew to 900 s, for everyone.

Outages: when Crypto Pay cannot be asked (:class:`~atlas.payments.CryptoPayUnavailable`, or an
answer we cannot trust: :class:`~atlas.payments.CryptoPayProtocolError`), the tick stops where it
is, changes nothing (every payment stays ``pending``; in particular **nothing is expired** during
an outage, however long), logs a warning, and the following ticks are skipped for a jittered,
growing delay (:class:`~atlas.supervision.Backoff`), at least the service's ``Retry-After`` when it
sent one (a 429). The first tick that gets through applies
everything that was paid meanwhile. A wrong token (:class:`~atlas.payments.CryptoPayAuthError`) is
a configuration error, not an outage: it crashes the actor, so the supervisor reports it.

Expiry: ``expire_payment_intents`` runs only after a walk that reached the end, and with a grace
(``now - expiry_grace``): an intent expires only once the watcher has had a full tick after its
``expires_at`` to see it paid. (An intent the user pays after it expired is still applied by the
webhook: ``apply_payment`` accepts ``expired``.)

Database errors propagate: the actor crashes and restarts under its supervisor's backoff; since
each page is its own short unit, nothing half-done is left.
"""

from __future__ import annotations

import datetime as dt
import logging
import random
from collections.abc import Callable

import trio

from atlas.actors.base import Actor
from atlas.clock import Clock
from atlas.domain import ReferralPolicy
from atlas.payments.apply_flow import PROVIDER, apply_paid_invoice
from atlas.payments.cryptopay import CryptoPayClient, CryptoPayProtocolError, CryptoPayUnavailable
from atlas.payments.cryptopay_types import UnreadableItem
from atlas.storage import Database
from atlas.storage.units.payments import expire_payment_intents, pending_payments
from atlas.storage.units.provider_records import keep_provider_message
from atlas.storage.units.records import ApplyOutcome
from atlas.supervision import Backoff

_log = logging.getLogger("atlas.actors.payment_watcher")


class PaymentWatcher(Actor):
    """Polls pending Crypto Pay invoices every ``period`` s; see the module docstring.

    - ``batch`` (1..1000): payments per page, hence invoice ids per ``getInvoices`` call.
    - ``tick_budget``: seconds a tick may walk; the rest waits for the next tick (the cursor
      starts again from the beginning, so nothing is skipped for long).
    - ``expire_batch``: at most this many intents expired per tick.
    - ``expiry_grace``: how long after ``expires_at`` an unpaid intent is expired.
    - ``backoff``: delay before asking again after an outage (consecutive failures grow it).

    Counters for tests and ``/status``: ``applied``, ``flagged``, ``expired``, ``outages``,
    ``unreadable``.
    """

    def __init__(
        self,
        *,
        db: Callable[[], Database],
        client: CryptoPayClient,
        clock: Clock,
        rng: random.Random,
        referral_policy: ReferralPolicy,
        balance_currency: str,
        period: float = 60.0,
        batch: int = 100,
        tick_budget: float = 30.0,
        expire_batch: int = 500,
        expiry_grace: dt.timedelta = dt.timedelta(minutes=10),
        backoff: Backoff | None = None,
        name: str = "payment_watcher",
    ) -> None:
        if isinstance(batch, bool) or not isinstance(batch, int) or not 1 <= batch <= 1000:
            raise ValueError(f"batch must be an integer in 1..1000, got {batch!r}")
        if isinstance(expire_batch, bool) or not isinstance(expire_batch, int) or expire_batch < 1:
            raise ValueError(f"expire_batch must be a positive integer, got {expire_batch!r}")
        if not tick_budget > 0:
            raise ValueError(f"tick_budget must be > 0 seconds, got {tick_budget!r}")
        if expiry_grace < dt.timedelta(0):
            raise ValueError(f"expiry_grace must be >= 0, got {expiry_grace}")
        super().__init__(name, period=period, first_tick=(1.0, min(30.0, period)), rng=rng)
        self._db = db
        self._client = client
        self._clock = clock
        self._jitter = rng
        self._policy = referral_policy
        self._currency = balance_currency
        self._batch = batch
        self._tick_budget = tick_budget
        self._expire_batch = expire_batch
        self._grace = expiry_grace
        self._backoff = backoff or Backoff(initial=period, factor=2.0, maximum=max(period, 900.0), jitter=0.1)
        self._failures = 0
        self._resume_at: float | None = None
        self.applied = 0
        self.flagged = 0
        self.expired = 0
        self.outages = 0
        self.unreadable = 0

    @property
    def backing_off_until(self) -> float | None:
        """The trio time before which ticks are skipped after an outage (None: not backing off)."""
        return self._resume_at

    async def tick(self) -> None:
        """One walk over the pending invoices, then expiry; skipped while backing off."""
        if self._resume_at is not None and trio.current_time() < self._resume_at:
            return
        complete = await self.check_pending()
        if complete:
            now = self._clock.now()
            expired = await self._db().run(
                expire_payment_intents, now=now - self._grace, limit=self._expire_batch
            )
            self.expired += expired
            if expired:
                _log.info("payment watcher expired %d unpaid intents", expired)

    async def check_pending(self) -> bool:
        """Walk the pending payments once; True when the walk reached the end without an outage.

        Each page: one short unit to read it, then ``getInvoices`` with no connection held, then
        one ``apply_payment`` unit per paid invoice.
        """
        deadline = trio.current_time() + self._tick_budget
        after_id = 0
        while True:
            page = await self._db().run(
                pending_payments, provider=PROVIDER, after_id=after_id, limit=self._batch
            )
            if not page:
                break
            after_id = page[-1].payment_id
            ids: list[int] = []
            for payment in page:
                if payment.external_id is None:
                    continue  # the invoice was never created (or not yet attached): it will expire
                if not payment.external_id.isdigit():
                    _log.error(
                        "payment %d has a non-numeric cryptopay invoice id; skipped", payment.payment_id
                    )
                    continue
                ids.append(int(payment.external_id))
            if ids and not await self._check_invoices(ids):
                return False
            self.heartbeat()
            if len(page) < self._batch:
                break
            if trio.current_time() >= deadline:
                _log.info("payment watcher: tick budget spent after payment %d; the rest next tick", after_id)
                return False
            await trio.lowlevel.checkpoint()
        if self._failures:
            _log.info("payment watcher: Crypto Pay answers again after %d failed ticks", self._failures)
        self._failures = 0
        self._resume_at = None
        return True

    async def _check_invoices(self, ids: list[int]) -> bool:
        unreadable: list[UnreadableItem] = []
        try:
            invoices = await self._client.get_invoices(ids, on_unreadable=unreadable.append)
        except (CryptoPayUnavailable, CryptoPayProtocolError) as exc:
            self._failures += 1
            self.outages += 1
            delay = self._backoff.delay(self._failures, self._jitter)
            if isinstance(exc, CryptoPayUnavailable) and exc.retry_after is not None:
                delay = max(delay, exc.retry_after)
            self._resume_at = trio.current_time() + delay
            _log.warning(
                "payment watcher: Crypto Pay not usable (%s: %s); %d payments stay pending, retry in %.1f s",
                exc.__class__.__name__,
                exc,
                len(ids),
                delay,
            )
            return False
        for item in unreadable:
            await self._report_unreadable(item)
        for invoice in invoices:
            if invoice.status != "paid":
                continue
            result = await apply_paid_invoice(
                self._db(),
                invoice,
                source="payment watcher",
                referral_policy=self._policy,
                balance_currency=self._currency,
                clock=self._clock,
            )
            if result.outcome is ApplyOutcome.APPLIED:
                self.applied += 1
            elif result.outcome is ApplyOutcome.FLAGGED:
                self.flagged += 1
        return True

    async def _report_unreadable(self, item: UnreadableItem) -> None:
        self.unreadable += 1
        new = await self._db().run(
            keep_provider_message,
            provider=PROVIDER,
            source="getInvoices",
            body=item.raw,
            reason=item.reason,
            now=self._clock.now(),
        )
        _log.error(
            "payment watcher: Crypto Pay invoice %s is unreadable (%s); skipped, the rest applied%s",
            "?" if item.invoice_id is None else item.invoice_id,
            item.reason,
            "; kept for an operator" if new else "",
        )
