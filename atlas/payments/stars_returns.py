"""Giving a Stars charge back when it applies to nothing: one protocol for the live path and the
reconcile.

A charge that ``apply_payment`` cannot apply — *flagged* (underpaid, overpaid, a second charge of
one invoice) or *unknown* (its payload matches no intent) — is the user's money for nothing. It is
refunded automatically, at once, from wherever it is seen first: the ``successful_payment``
handler (the normal path) or the ``stars_reconciler`` (a lost update). Both call
:func:`return_charge`, which is exactly-once across them and across crashes:

1. ``begin_provider_refund`` (a unit): the refund is recorded ``pending`` with its reason (the
   flagged payment keeps its ``status_reason`` too), keyed by the charge id. A second caller finds
   the record and, if it is already ``done``, does nothing;
2. ``refundStarPayment``, outside any unit of work; Telegram's ``CHARGE_ALREADY_REFUNDED`` counts as
   done (an earlier attempt got that far);
3. ``finish_provider_refund`` (a unit): the record is ``done``, the flagged payment ``refunded``,
   and the ``payment.returned`` notice is written to the outbox for the payer.

A crash or a transport error between 1 and 3 leaves the record ``pending``: the reconcile's next
tick finishes it (:func:`finish_return`). Telegram refusing for another reason (``CHARGE_NOT_FOUND``)
is :attr:`ReturnOutcome.REFUSED`: logged as an error, left ``pending`` for an operator. Transport
errors (``TelegramNetworkError``, 5xx) propagate: the caller decides whether that is an outage to
count (the reconcile) or a job left for the reconcile (the handler).
"""

from __future__ import annotations

import enum
import logging

from atlas.clock import Clock
from atlas.payments.stars_reconcile import StarsLedgerApi, StarsRefundRefused
from atlas.storage import Database
from atlas.storage.units.provider_records import (
    ProviderRefund,
    begin_provider_refund,
    finish_provider_refund,
)

_log = logging.getLogger("atlas.payments.stars_returns")

PROVIDER = "stars"


class ReturnOutcome(enum.Enum):
    """What :func:`return_charge` / :func:`finish_return` achieved."""

    RETURNED = "returned"
    """Telegram gave the Stars back (now or earlier) and the record is done, the notice written."""
    ALREADY_DONE = "already_done"
    """The refund was recorded done before this call: nothing was asked of Telegram."""
    REFUSED = "refused"
    """Telegram refused for a reason other than "already refunded"; the record stays pending."""


async def return_charge(
    db: Database,
    ledger: StarsLedgerApi,
    clock: Clock,
    *,
    external_id: str,
    user_id: int,
    amount_minor: int,
    reason: str,
) -> ReturnOutcome:
    """Give the Stars charge ``external_id`` back to ``user_id``, once (see the module docstring)."""
    refund: ProviderRefund = await db.run(
        begin_provider_refund,
        provider=PROVIDER,
        external_id=external_id,
        user_id=user_id,
        amount_minor=amount_minor,
        currency="XTR",
        reason=reason[:1000],
        now=clock.now(),
    )
    if refund.state != "pending":
        return ReturnOutcome.ALREADY_DONE
    return await finish_return(db, ledger, clock, refund)


async def finish_return(
    db: Database, ledger: StarsLedgerApi, clock: Clock, refund: ProviderRefund
) -> ReturnOutcome:
    """Ask Telegram for a recorded refund and record the answer (steps 2 and 3)."""
    try:
        answer = await ledger.refund(user_id=refund.user_id, charge_id=refund.external_id)
    except StarsRefundRefused as exc:
        _log.error(
            "stars refund of charge %s refused by Telegram; left for an operator: %s", refund.external_id, exc
        )
        return ReturnOutcome.REFUSED
    await db.run(finish_provider_refund, provider=PROVIDER, external_id=refund.external_id, now=clock.now())
    _log.warning(
        "stars charge %s of user %d (%d XTR) matched nothing Atlas could apply: refunded (%s)",
        refund.external_id,
        refund.user_id,
        refund.amount_minor,
        answer.value,
    )
    return ReturnOutcome.RETURNED
