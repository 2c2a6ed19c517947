"""Creating invoices — only the creation side; paying, pre-checkout and applying are the payments
routers' and actors' business.

Stars: ``create_payment_intent(provider="stars")`` records a pending payment, then ``sendInvoice``
with ``currency="XTR"``, one price and the intent's payload.

Crypto Pay: ``create_payment_intent(provider="cryptopay")``, then ``createInvoice`` **outside any
unit of work** (contract 1: no connection is held across I/O), then ``attach_external_id`` in a
second short unit, then a message with the invoice URL. A failure between the steps leaves a
pending intent without an invoice, which expires on its own; the user is told to try again.
"""

from __future__ import annotations

import logging

from aiogram.types import LabeledPrice

from atlas.domain.money import format_amount
from atlas.payments import CryptoPayError
from atlas.storage.units import PaymentIntent, attach_external_id, create_payment_intent
from atlas.telegram import keyboards
from atlas.telegram.routers._screen import Screen

_log = logging.getLogger("atlas.telegram.routers.invoices")


async def send_stars_invoice(ui: Screen, *, plan_code: str, title: str) -> PaymentIntent:
    """Record a Stars intent for ``plan_code`` and send its invoice; domain errors propagate."""
    intent: PaymentIntent = await ui.run(
        create_payment_intent,
        user_id=ui.user.id,
        provider="stars",
        purpose="plan",
        currency="XTR",
        balance_currency=ui.config.currency,
        ttl=ui.config.payment_ttl,
        now=ui.clock.now(),
        plan_code=plan_code,
        invoices_per_hour=ui.config.invoices_per_hour,
    )
    await ui.bot.send_invoice(
        ui.chat_id,
        title=ui.t("user.pay.invoice_title", plan=title)[:32],
        description=ui.t("user.pay.invoice_description", plan=title, days=intent.days)[:255],
        payload=intent.payload,
        currency="XTR",
        prices=[LabeledPrice(label=title[:32] or plan_code, amount=intent.amount_minor)],
    )
    return intent


async def send_crypto_invoice(
    ui: Screen,
    *,
    purpose: str,
    description: str,
    plan_code: str | None = None,
    amount_minor: int | None = None,
) -> PaymentIntent | None:
    """Record a Crypto Pay intent, create its invoice, attach the invoice id, send the link.

    Returns None (after telling the user) when Crypto Pay is not configured or does not answer.
    Domain errors from the intent propagate before any I/O.
    """
    client = ui.cryptopay
    if client is None:
        await ui.show(ui.t("user.pay.crypto_disabled"), keyboards.back_to_menu(ui.lang))
        return None
    intent: PaymentIntent = await ui.run(
        create_payment_intent,
        user_id=ui.user.id,
        provider="cryptopay",
        purpose=purpose,
        currency=ui.config.currency,
        balance_currency=ui.config.currency,
        ttl=ui.config.payment_ttl,
        now=ui.clock.now(),
        plan_code=plan_code,
        amount_minor=amount_minor,
        min_topup_minor=ui.config.min_topup_minor,
        invoices_per_hour=ui.config.invoices_per_hour,
    )
    try:
        invoice = await client.create_invoice(
            amount=format_amount(intent.amount_minor, exponent=ui.config.money.exponent),
            fiat=intent.currency,
            accepted_assets=ui.config.crypto_assets,
            description=description[:1024],
            payload=intent.payload,
            expires_in=max(60, int(ui.config.payment_ttl.total_seconds())),
        )
    except CryptoPayError as exc:
        # An outage or a refusal of the provider, not the user's mistake and not our bug: the
        # intent expires unpaid; the user may simply try again.
        _log.warning("Crypto Pay invoice for payment %s failed: %s", intent.payment_id, exc)
        await ui.show(ui.t("user.pay.crypto_unavailable"), keyboards.back_to_menu(ui.lang))
        return None
    await ui.run(attach_external_id, payment_id=intent.payment_id, external_id=str(invoice.invoice_id))
    await ui.show(
        ui.t("user.pay.crypto_invoice", amount=ui.money(intent.amount_minor, intent.currency)),
        keyboards.url_button(ui.t("user.button.pay_open"), invoice.bot_invoice_url, ui.lang),
    )
    return intent
