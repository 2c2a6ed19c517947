"""Telegram Stars: sending an intent's invoice, and an admin refund that corrects the ledger.

Both functions are trio code, like ``db.run`` and the Bot's session (httpx on trio); an aiogram
handler (itself running in a trio task) awaits them directly.

The refund's order — Telegram first, then the database — and why:

1. read the payment (a short unit): it must be a ``stars`` payment with a charge id, ``applied``,
   and its credit must still be on the payer's balance; otherwise :class:`RefundRefused` and
   nothing is done anywhere (a second refund of the same payment ends here: it is ``refunded``);
2. ``refundStarPayment`` outside any unit. Telegram's ``CHARGE_ALREADY_REFUNDED`` counts as done
   (an earlier attempt got that far); any other refusal or no answer raises
   :class:`StarsRefundFailed` and our database is unchanged;
3. ``refund_payment`` (one unit): the ledger debit, the days taken back, the referral reward
   reversed, the audit row and the user's notice, all or nothing.

Database first was rejected: if Telegram then refused, the ledger would say "refunded" for Stars the
user never got back, and nothing would know to undo it. With Telegram first, the one bad window is
"Telegram refunded, the database step failed": :class:`StarsLedgerNotCorrected` says so, and
calling :func:`refund_stars_payment` again finishes the job (step 2 sees CHARGE_ALREADY_REFUNDED).

Errors::

    RefundRefused (atlas.storage.units)  a DomainError, ``refund.refused``: not applied / already
                                         refunded / not Stars / money spent; nothing done
    StarsRefundError
    ├── StarsRefundFailed                Telegram did not refund (refused, or no answer); nothing
    │                                    changed here; safe to retry
    └── StarsLedgerNotCorrected          Telegram refunded, our database step failed; retry
"""

from __future__ import annotations

import logging

import trio
from aiogram import Bot
from aiogram.exceptions import TelegramAPIError, TelegramBadRequest, TelegramNetworkError
from aiogram.types import LabeledPrice

from atlas.clock import Clock
from atlas.storage import Database, StorageError
from atlas.storage.units.admin import refund_payment
from atlas.storage.units.errors import RefundRefused
from atlas.storage.units.payment_checks import refund_target
from atlas.storage.units.records import PaymentIntent, RefundResult

_log = logging.getLogger("atlas.payments.stars")

STARS = "XTR"
ALREADY_REFUNDED = "CHARGE_ALREADY_REFUNDED"


class StarsRefundError(Exception):
    """A Stars refund that did not complete; ``payment_id`` names it."""

    def __init__(self, payment_id: int, message: str) -> None:
        super().__init__(f"payment {payment_id}: {message}")
        self.payment_id = payment_id


class StarsRefundFailed(StarsRefundError):
    """Telegram did not refund the charge (an error answer or none); our database is unchanged."""


class StarsLedgerNotCorrected(StarsRefundError):
    """Telegram refunded the charge but recording it failed; call the refund again to finish."""


async def send_stars_invoice(
    bot: Bot, *, chat_id: int, intent: PaymentIntent, title: str, description: str, label: str
) -> int:
    """Send the invoice of a Stars intent (``XTR``, one price, the intent's payload); return its message id.

    Raises ``ValueError`` for an intent that is not in Stars; aiogram's errors pass through.
    """
    if intent.currency != STARS or intent.provider != "stars":
        raise ValueError(
            f"intent {intent.payment_id} is {intent.provider}/{intent.currency}, not a Stars intent"
        )
    message = await bot.send_invoice(
        chat_id=chat_id,
        title=title[:32],
        description=description[:255],
        payload=intent.payload,
        currency=STARS,
        prices=[LabeledPrice(label=label[:32] or title[:32], amount=intent.amount_minor)],
    )
    return int(message.message_id)


async def refund_stars_payment(
    db: Database, bot: Bot, *, payment_id: int, admin_id: int, reason: str, clock: Clock
) -> RefundResult:
    """Refund a Stars payment at Telegram, then reverse it in the ledger; see the module docstring.

    Idempotent under retries: after :class:`StarsLedgerNotCorrected` (or a crash between the two
    steps) call it again. Cancellation between the steps is the same case.
    """
    target = await db.run(refund_target, payment_id=payment_id)
    if target.provider != "stars":
        raise RefundRefused(payment_id, "not_stars")
    if target.external_id is None:
        raise RefundRefused(payment_id, "no_charge")
    if target.status != "applied":
        raise RefundRefused(payment_id, "not_applied")
    if target.balance_short:
        raise RefundRefused(payment_id, "balance_short")
    try:
        await bot.refund_star_payment(
            user_id=target.user_id, telegram_payment_charge_id=target.external_id
        )
    except TelegramBadRequest as exc:
        if ALREADY_REFUNDED not in exc.message:
            raise StarsRefundFailed(payment_id, f"Telegram refused the refund: {exc.message}") from exc
        _log.warning("stars payment %d was already refunded at Telegram; correcting the ledger", payment_id)
    except (TelegramNetworkError, TelegramAPIError) as exc:
        raise StarsRefundFailed(payment_id, f"Telegram did not refund: {exc.__class__.__name__}") from exc
    try:
        result = await db.run(
            refund_payment, payment_id=payment_id, admin_id=admin_id, reason=reason, now=clock.now()
        )
    except (StorageError, RefundRefused, trio.TooSlowError) as exc:
        _log.error(
            "stars payment %d refunded at Telegram but the ledger is NOT corrected (%s); retry the refund",
            payment_id,
            exc.__class__.__name__,
        )
        raise StarsLedgerNotCorrected(payment_id, f"ledger not corrected: {exc}") from exc
    _log.info(
        "stars payment %d of user %d refunded by admin %d: %d %s",
        payment_id,
        target.user_id,
        admin_id,
        target.amount_minor,
        target.currency,
    )
    return result
