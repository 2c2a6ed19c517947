"""The one path by which a paid Crypto Pay invoice becomes an applied payment.

The webhook route and the ``payment_watcher`` actor both call :func:`apply_paid_invoice`, so they
cannot disagree about how an invoice maps to a payment, how its amount is converted, or what is
logged. Exactly-once is the unit's job (:func:`~atlas.storage.units.apply.apply_payments`: one
conditional ``pending → applied`` per ``(provider, external_id)``); racing callers simply get
``ALREADY_APPLIED``. Concurrent invoices are applied together, in one transaction per batch, by the
database's payment combiner (:func:`apply_combined`, :mod:`atlas.storage.combiner`): each caller
still gets its own outcome.

Mapping: the payment is found by ``("cryptopay", str(invoice_id))``, else by the invoice's
``payload`` (the intent's unguessable payload, which we put on the invoice). The second look-up
covers an invoice paid, and reported, before ``attach_external_id`` committed.

Amount: the invoice is priced in fiat; its ``amount`` (a Decimal from the wire) is turned into
minor units by the domain's exact parser (:func:`atlas.domain.parse_amount`, the currency's own
exponent). An amount that cannot be exact in minor units (``"10.005"`` USD), or a crypto-priced
invoice, can never equal an intent, so it is passed on as a mismatch and the intent is flagged —
never rounded into a match.

What was actually paid (``paid_asset``, ``paid_amount``, ``paid_fiat_rate``, ``paid_usd_rate``,
``fee_asset``, ``fee_amount``; exact decimals) is stored with the payment in the same statement,
whether it applies or is flagged (:func:`paid_details`).

Logging (one line per outcome, ``source`` says who asked): applied → info; already applied → debug
(duplicates are normal); unknown → warning; flagged → error (an admin must look). No secrets and no
body dumps: ids, amounts and the reason only.
"""

from __future__ import annotations

import logging

from atlas.clock import Clock
from atlas.domain import Currency, DomainError, ReferralPolicy, parse_amount
from atlas.payments.cryptopay_types import Invoice
from atlas.storage import Database, combiner_for
from atlas.storage.units.apply import PaymentToApply, apply_payments
from atlas.storage.units.records import ApplyOutcome, PaidDetails, PaymentResult

_log = logging.getLogger("atlas.payments.apply")

PROVIDER = "cryptopay"
PAYMENT_BATCH = 32
"""The most payments one transaction of the combiner applies."""
INEXACT_AMOUNT = -1
"""What an invoice amount that has no exact minor-unit value is reported as: it matches no intent."""


def invoice_amount_minor(invoice: Invoice) -> tuple[int, str]:
    """The ``(amount_minor, currency)`` an invoice asks for, exactly.

    A fiat invoice gives its fiat amount in the fiat's minor units. A crypto invoice (Atlas never
    creates one) gives its asset code, and an amount that needs rounding gives
    :data:`INEXACT_AMOUNT`: both then differ from every intent and flag it.
    """
    if invoice.currency_type != "fiat" or invoice.fiat is None:
        return INEXACT_AMOUNT, (invoice.asset or "?")[:16]
    try:
        currency = Currency.of(invoice.fiat)
        return parse_amount(format(invoice.amount, "f"), exponent=currency.exponent), currency.code
    except DomainError:
        return INEXACT_AMOUNT, invoice.fiat[:16]


def paid_details(invoice: Invoice) -> PaidDetails:
    """What the invoice says was paid, as the payment stores it."""
    return PaidDetails(
        asset=invoice.paid_asset,
        amount=invoice.paid_amount,
        fiat_rate=invoice.paid_fiat_rate,
        usd_rate=invoice.paid_usd_rate,
        fee_asset=invoice.fee_asset,
        fee_amount=invoice.fee_amount,
    )


async def apply_paid_invoice(
    db: Database,
    invoice: Invoice,
    *,
    source: str,
    referral_policy: ReferralPolicy,
    balance_currency: str,
    clock: Clock,
) -> PaymentResult:
    """Apply a paid ``invoice`` once; return what :func:`apply_payment` decided, after logging it.

    ``clock`` gives the business time of the application. Raises only what
    ``db.run`` raises (``BudgetExhausted``, ``DatabaseUnavailable``, ``TransactionConflict``,
    ``trio.TooSlowError``): then nothing was recorded and the caller must let the provider retry.
    Cancellation likewise leaves the payment as it was (the transaction rolls back).
    """
    if invoice.status != "paid":
        raise ValueError(f"invoice {invoice.invoice_id} is {invoice.status}, not paid")
    amount_minor, currency = invoice_amount_minor(invoice)
    request = PaymentToApply.of(
        provider=PROVIDER,
        external_id=str(invoice.invoice_id),
        payload=invoice.payload or None,
        paid_amount_minor=amount_minor,
        paid_currency=currency,
        referral_policy=referral_policy,
        balance_currency=balance_currency,
        now=clock.now(),
        paid=paid_details(invoice),
    )
    result = await apply_combined(db, request)
    _log_outcome(result, invoice, source, amount_minor, currency)
    return result


async def apply_combined(db: Database, request: PaymentToApply) -> PaymentResult:
    """Apply ``request`` in the next batch of ``db``'s payment combiner; return its own outcome.

    Raises what ``db.run`` raises (then nothing of this request was recorded, unless the error
    came after ``COMMIT``); a cancelled caller's request may still be applied once its batch has
    started (:mod:`atlas.storage.combiner`), which is safe: applying is idempotent per charge.
    """
    combiner = combiner_for(db, apply_payments, max_batch=PAYMENT_BATCH, max_in_flight=2)
    result: PaymentResult = await combiner.submit(request)
    return result


def _log_outcome(
    result: PaymentResult, invoice: Invoice, source: str, amount_minor: int, currency: str
) -> None:
    shown = f"{invoice.amount} {invoice.fiat or invoice.asset}"
    if result.outcome is ApplyOutcome.APPLIED:
        _log.info(
            "cryptopay invoice %d applied by %s: payment %s of user %s (%s, %s)",
            invoice.invoice_id,
            source,
            result.payment_id,
            result.user_id,
            result.purpose,
            shown,
        )
    elif result.outcome is ApplyOutcome.ALREADY_APPLIED:
        _log.debug(
            "cryptopay invoice %d already applied (payment %s), %s",
            invoice.invoice_id,
            result.payment_id,
            source,
        )
    elif result.outcome is ApplyOutcome.UNKNOWN:
        _log.warning(
            "cryptopay invoice %d (%s) reported by %s matches no payment of ours: ignored",
            invoice.invoice_id,
            shown,
            source,
        )
    else:
        _log.error(
            "cryptopay invoice %d reported by %s FLAGGED, not applied: payment %s of user %s, %s "
            "(invoice says %s = %d minor %s)",
            invoice.invoice_id,
            source,
            result.payment_id,
            result.user_id,
            result.reason,
            shown,
            amount_minor,
            currency,
        )
