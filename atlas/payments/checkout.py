"""Opening a Crypto Pay invoice for a payment intent (the user pressed "pay with crypto").

Order: the intent (a ``pending`` payment with its unguessable payload) is recorded first, by the
caller, in its own unit; then ``createInvoice`` runs with no connection held, priced exactly at the
intent's quote and carrying its payload; then a second short unit attaches the invoice id. If the
process dies between the two, the invoice is still found when paid, by its payload
(:mod:`atlas.payments.apply_flow`), so no paid invoice is ever orphaned by this window.
"""

from __future__ import annotations

from collections.abc import Sequence

from atlas.clock import Clock
from atlas.domain import Currency, format_amount
from atlas.payments.cryptopay import MAX_EXPIRES_IN, CryptoPayClient
from atlas.payments.cryptopay_types import Invoice
from atlas.storage import Database
from atlas.storage.units.payments import attach_external_id
from atlas.storage.units.records import PaymentIntent


async def open_cryptopay_invoice(
    db: Database,
    client: CryptoPayClient,
    intent: PaymentIntent,
    *,
    clock: Clock,
    accepted_assets: Sequence[str],
    description: str | None = None,
) -> Invoice:
    """Create the fiat invoice of a ``cryptopay`` intent and attach its id; return the invoice.

    The invoice expires with the intent (at least one second from now). Raises ``ValueError`` for a
    non-Crypto-Pay intent; the client's errors (``CryptoPayUnavailable`` ...) pass through and the
    intent then simply expires unpaid.
    """
    if intent.provider != "cryptopay":
        raise ValueError(f"intent {intent.payment_id} is a {intent.provider} payment, not cryptopay")
    currency = Currency.of(intent.currency)
    remaining = int((intent.expires_at - clock.now()).total_seconds())
    invoice = await client.create_invoice(
        amount=format_amount(intent.amount_minor, exponent=currency.exponent),
        fiat=currency.code,
        accepted_assets=accepted_assets,
        description=description,
        payload=intent.payload,
        expires_in=max(1, min(MAX_EXPIRES_IN, remaining)),
    )
    await db.run(attach_external_id, payment_id=intent.payment_id, external_id=str(invoice.invoice_id))
    return invoice
