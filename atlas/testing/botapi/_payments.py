"""Telegram Stars: invoices, the pre-checkout handshake, successful payments and refunds.

The Stars flow as Telegram runs it: the bot sends an invoice (``currency="XTR"``, exactly one
price, no provider token); the user pays; Telegram sends the bot a ``pre_checkout_query`` that must
be answered within 10 s; on ``ok=True`` the user's chat gets a ``successful_payment`` service
message whose ``telegram_payment_charge_id`` is the idempotency key (and the key for
``refundStarPayment``). Validation failures are answered like Telegram's, e.g.
``Bad Request: STARS_INVOICE_INVALID``; nothing is recorded for a refused invoice.

The bot's Stars history (``getStarTransactions``, oldest first, ``offset``/``limit`` 1..100 paging):
every charge is an incoming transaction whose ``id`` is its ``telegram_payment_charge_id`` and whose
``source`` is the paying user (with the ``invoice_payload``); every refund is an outgoing one with
the same ``id`` and the user as ``receiver``. A charge is in the history even when its
``successful_payment`` never reached the bot (:func:`complete_payment` with ``deliver=False``).
"""

from __future__ import annotations

import re
from typing import Any

from atlas.testing.botapi._core import PRE_CHECKOUT_LIMIT, ChatState, EmulatorCore, PendingCheckout
from atlas.testing.botapi._params import Params
from atlas.testing.botapi._registry import api_method
from atlas.testing.botapi._validate import validate_inline_markup
from atlas.testing.botapi.errors import bad_request, query_too_old
from atlas.testing.botapi.records import Charge, ChatRecord, InvoiceRecord, PreCheckoutAnswer, Refund

STARS = "XTR"
SUBSCRIPTION_PERIOD = 2592000
"""The only subscription period Telegram accepts: 30 days."""
MAX_SUBSCRIPTION_STARS = 10000
_CURRENCY = re.compile(r"^[A-Z]{3}$")
_STARS_FORBIDDEN_FLAGS = (
    "need_name", "need_phone_number", "need_email", "need_shipping_address",
    "send_phone_number_to_provider", "send_email_to_provider", "is_flexible",
)


def _invoice_fields(p: Params) -> tuple[str, str, str, str, tuple[tuple[str, int], ...]]:
    """Check what sendInvoice and createInvoiceLink share: title, description, payload, currency, prices."""
    title = p.get_str("title") or ""
    if not 1 <= len(title) <= 32:
        raise bad_request("INVOICE_TITLE_INVALID")
    description = p.get_str("description") or ""
    if not 1 <= len(description) <= 255:
        raise bad_request("INVOICE_DESCRIPTION_INVALID")
    payload = p.get_str("payload") or ""
    if not 1 <= len(payload.encode("utf-8")) <= 128:
        raise bad_request("INVOICE_PAYLOAD_INVALID")
    currency = p.get_str("currency") or ""
    if not _CURRENCY.match(currency):
        raise bad_request("CURRENCY_INVALID")
    raw_prices = p.get_json("prices")
    if not isinstance(raw_prices, list):
        raise bad_request("can't parse prices JSON object")
    prices: list[tuple[str, int]] = []
    for item in raw_prices:
        if not isinstance(item, dict) or not isinstance(item.get("label"), str) or not item["label"]:
            raise bad_request("can't parse prices JSON object")
        amount = item.get("amount")
        if not isinstance(amount, int) or isinstance(amount, bool):
            raise bad_request("can't parse prices JSON object")
        prices.append((item["label"], amount))
    if not prices or sum(amount for _, amount in prices) <= 0:
        raise bad_request("CURRENCY_TOTAL_AMOUNT_INVALID")
    if currency == STARS:
        if len(prices) != 1 or p.get_str("provider_token"):
            raise bad_request("STARS_INVOICE_INVALID")
        if p.get_int("max_tip_amount") or p.get_json("suggested_tip_amounts"):
            raise bad_request("STARS_INVOICE_INVALID")
        if any(p.get_bool(flag) for flag in _STARS_FORBIDDEN_FLAGS):
            raise bad_request("STARS_INVOICE_INVALID")
    elif not p.get_str("provider_token"):
        raise bad_request("PAYMENT_PROVIDER_INVALID")
    return title, description, payload, currency, tuple(prices)


@api_method("sendInvoice", sends=True)
async def send_invoice(core: EmulatorCore, p: Params) -> dict[str, Any]:
    """Send an invoice message to a chat."""
    chat = core.writable_chat(p.chat_id())
    title, description, payload, currency, prices = _invoice_fields(p)
    markup = validate_inline_markup(p.get_json("reply_markup"))
    message = core.new_bot_message(chat, markup)
    invoice = InvoiceRecord(
        title=title, description=description, payload=payload, currency=currency, prices=prices,
        chat_id=chat.chat_id, message_id=message["message_id"], link=None,
    )
    message["invoice"] = {
        "title": title, "description": description, "start_parameter": p.get_str("start_parameter") or "",
        "currency": currency, "total_amount": invoice.total_amount,
    }
    core.invoices.append(invoice)
    core.record(chat, ChatRecord(
        kind="invoice", chat_id=chat.chat_id, message_id=message["message_id"], time=core.now(),
        date=message["date"], reply_markup=markup, invoice=invoice,
    ))
    return message


@api_method("createInvoiceLink")
async def create_invoice_link(core: EmulatorCore, p: Params) -> str:
    """Create a payment link; ``subscription_period`` (30 days, Stars only, ≤10000) makes it recurring."""
    title, description, payload, currency, prices = _invoice_fields(p)
    period = p.get_int("subscription_period")
    if period is not None:
        if period != SUBSCRIPTION_PERIOD or currency != STARS:
            raise bad_request("SUBSCRIPTION_PERIOD_INVALID")
        if sum(amount for _, amount in prices) > MAX_SUBSCRIPTION_STARS:
            raise bad_request("SUBSCRIPTION_PRICE_INVALID")
    link = f"https://t.me/${core.new_id('EMUINV')}"
    invoice = InvoiceRecord(
        title=title, description=description, payload=payload, currency=currency, prices=prices,
        chat_id=None, message_id=None, link=link, subscription_period=period,
    )
    core.invoices.append(invoice)
    core.invoice_links[link] = invoice
    core.changed.fire()
    return link


@api_method("answerPreCheckoutQuery")
async def answer_pre_checkout_query(core: EmulatorCore, p: Params) -> bool:
    """Answer a pre_checkout_query once. A late answer is recorded (with its delay) and refused."""
    query_id = p.need_str("pre_checkout_query_id")
    ok = p.get_bool("ok", required=True)
    error_message = p.get_str("error_message")
    if not ok and not error_message:
        raise bad_request("ERROR_MESSAGE_EMPTY")
    pending = core.checkouts.get(query_id)
    if pending is None or pending.answer is not None:
        raise query_too_old()
    elapsed = core.now() - pending.opened_at
    in_time = elapsed <= PRE_CHECKOUT_LIMIT and not pending.closed
    answer = PreCheckoutAnswer(
        query_id=query_id, user_id=pending.user_id, ok=ok, error_message=error_message,
        elapsed=elapsed, in_time=in_time,
    )
    pending.answer = answer
    core.pre_checkout_answers.append(answer)
    core.changed.fire()
    if not in_time:
        raise query_too_old()
    return True


@api_method("refundStarPayment")
async def refund_star_payment(core: EmulatorCore, p: Params) -> bool:
    """Refund a charge this emulator issued to this user, once."""
    user_id = p.need_int("user_id")
    charge_id = p.need_str("telegram_payment_charge_id")
    charge = core.charges.get(charge_id)
    if charge is None or charge.user_id != user_id:
        raise bad_request("CHARGE_NOT_FOUND")
    if any(refund.telegram_payment_charge_id == charge_id for refund in core.refunds):
        raise bad_request("CHARGE_ALREADY_REFUNDED")
    core.refunds.append(Refund(telegram_payment_charge_id=charge_id, user_id=user_id, time=core.now()))
    core.star_transactions.append({
        "id": charge_id, "amount": charge.total_amount, "date": core.unix_now(),
        "receiver": {"type": "user", "transaction_type": "invoice_payment", "user": _user_of(core, user_id)},
    })
    core.changed.fire()
    return True


MAX_TRANSACTIONS_PAGE = 100


@api_method("getStarTransactions")
async def get_star_transactions(core: EmulatorCore, p: Params) -> dict[str, Any]:
    """The bot's Stars transactions, oldest first: ``offset`` skips, ``limit`` (1..100, default 100)."""
    offset = p.get_int("offset")
    limit = p.get_int("limit")
    offset = 0 if offset is None else offset
    limit = MAX_TRANSACTIONS_PAGE if limit is None else limit
    if offset < 0:
        raise bad_request("OFFSET_INVALID")
    if not 1 <= limit <= MAX_TRANSACTIONS_PAGE:
        raise bad_request("LIMIT_INVALID")
    return {"transactions": [dict(t) for t in core.star_transactions[offset : offset + limit]]}


def _user_of(core: EmulatorCore, user_id: int) -> dict[str, Any]:
    chat = core.chats.get(user_id)
    return dict(chat.user) if chat is not None else {"id": user_id, "is_bot": False, "first_name": "User"}


def record_charge(
    core: EmulatorCore, *, user_id: int, currency: str, total_amount: int, invoice_payload: str
) -> Charge:
    """Issue a Stars charge and put it in the bot's history (no update is sent by this alone)."""
    charge = Charge(
        telegram_payment_charge_id=core.new_id("stxEMU"),
        provider_payment_charge_id=core.new_id("prvEMU"),
        user_id=user_id,
        currency=currency,
        total_amount=total_amount,
        invoice_payload=invoice_payload,
        time=core.now(),
    )
    core.charges[charge.telegram_payment_charge_id] = charge
    core.star_transactions.append({
        "id": charge.telegram_payment_charge_id, "amount": total_amount, "date": core.unix_now(),
        "source": {
            "type": "user", "transaction_type": "invoice_payment", "user": _user_of(core, user_id),
            "invoice_payload": invoice_payload,
        },
    })
    core.changed.fire()
    return charge


# -- the user's side of the flow (driven by EmulatedUser.pay_stars) ---------------------------------


def open_pre_checkout(core: EmulatorCore, chat: ChatState, invoice: InvoiceRecord) -> PendingCheckout:
    """Queue the ``pre_checkout_query`` for the user of ``chat`` paying ``invoice``."""
    pending = PendingCheckout(
        query_id=core.new_id("PCQ"), user_id=chat.chat_id, invoice=invoice, opened_at=core.now(),
    )
    core.checkouts[pending.query_id] = pending
    core.enqueue_update("pre_checkout_query", {
        "id": pending.query_id,
        "from": chat.user,
        "currency": invoice.currency,
        "total_amount": invoice.total_amount,
        "invoice_payload": invoice.payload,
    })
    return pending


def complete_payment(
    core: EmulatorCore, chat: ChatState, pending: PendingCheckout, *, deliver: bool = True
) -> Charge:
    """Issue the charge and queue the ``successful_payment`` message in the user's chat.

    ``deliver=False`` plays the update that never reached the bot: the user is charged (the charge
    is in ``getStarTransactions``) but no ``successful_payment`` is queued.
    """
    invoice = pending.invoice
    charge = record_charge(
        core, user_id=chat.chat_id, currency=invoice.currency, total_amount=invoice.total_amount,
        invoice_payload=invoice.payload,
    )
    if not deliver:
        return charge
    payment: dict[str, Any] = {
        "currency": charge.currency,
        "total_amount": charge.total_amount,
        "invoice_payload": charge.invoice_payload,
        "telegram_payment_charge_id": charge.telegram_payment_charge_id,
        "provider_payment_charge_id": charge.provider_payment_charge_id,
    }
    if invoice.subscription_period is not None:
        payment["subscription_expiration_date"] = core.unix_now() + invoice.subscription_period
        payment["is_recurring"] = True
        payment["is_first_recurring"] = True
    message = core.new_user_message(chat, successful_payment=payment)
    core.enqueue_update("message", message)
    return charge
