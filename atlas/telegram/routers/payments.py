"""Telegram Stars in the bot: the pre-checkout handshake and the successful payment.

``pre_checkout_query``: Telegram waits at most 10 s for ``answerPreCheckoutQuery``, then cancels
the payment. The handler does one short read (:func:`check_stars_checkout`: the intent exists, is
pending and not expired, the plan is still sold, the invoice asks exactly the intent's quote, the
user is not banned) bounded by ``CHECKOUT_DB_BUDGET`` seconds; when the database does not answer in
time (or is down) it answers ``ok=False`` with a localized "try again" rather than no answer: a
refused checkout costs the user nothing, a silent one leaves them staring at a spinner.

``successful_payment``: the money has moved; :func:`apply_payment` (provider ``stars``, external id
= ``telegram_payment_charge_id``, found by ``invoice_payload``) applies it once. The confirmation is
the ``payment.applied.*`` notice the unit writes to the outbox in the same transaction — no direct
message here, so a replayed update can never produce a second confirmation. A flagged payment (paid
amount differs, a second charge for one payload) or an unknown one (no intent has its payload) is
refunded at once (:mod:`atlas.payments.stars_returns`: recorded, ``refundStarPayment`` outside any
unit, the ``payment.returned`` notice), never held for a manual check. The
unit is retried a few times on database trouble; if it still fails the handler raises (apology and
crash report by the dispatcher's boundary) after an error log line naming the charge, so an
operator can apply it by hand.

Dependencies (``build_dispatcher(..., db=, clock=, referral_policy=, config=)``, or
``balance_currency=`` in place of ``config``): ``db`` is the :class:`~atlas.storage.Database`;
handlers run in the dispatcher's trio tasks and await ``db.run`` directly.
"""

from __future__ import annotations

import logging

import trio
from aiogram import F, Router
from aiogram.exceptions import TelegramNetworkError, TelegramRetryAfter, TelegramServerError
from aiogram.types import Message, PreCheckoutQuery

from atlas.clock import Clock
from atlas.domain import ReferralPolicy
from atlas.payments.stars_reconcile import BotStarsLedger
from atlas.payments.stars_returns import return_charge
from atlas.storage import BudgetExhausted, Database, DatabaseUnavailable, StorageError, TransactionConflict
from atlas.storage.units.apply import apply_payment
from atlas.storage.units.payment_checks import CheckoutVerdict, check_stars_checkout
from atlas.storage.units.records import ApplyOutcome, PaymentResult
from atlas.telegram.config import BotConfig
from atlas.telegram.i18n import t

_log = logging.getLogger("atlas.telegram.payments")

CHECKOUT_DB_BUDGET = 4.0
"""Seconds the pre-checkout check may spend on the database; the rest of the 10 s is for answering."""
APPLY_ATTEMPTS = 3
APPLY_RETRY_DELAY = 0.5
_RETRYABLE = (BudgetExhausted, DatabaseUnavailable, TransactionConflict, trio.TooSlowError)


async def _checkout_verdict(db: Database, budget: float, **kwargs: object) -> CheckoutVerdict | None:
    """Trio side: the verdict, or None when the database gave none within ``budget`` seconds."""
    with trio.move_on_after(budget):
        try:
            return await db.run(check_stars_checkout, **kwargs)  # type: ignore[arg-type]
        except (StorageError, trio.TooSlowError) as exc:
            _log.warning("pre-checkout check failed (%s); refusing the checkout", exc.__class__.__name__)
            return None
    _log.warning("pre-checkout check took over %.1f s; refusing the checkout", budget)
    return None


async def _apply_with_retries(db: Database, **kwargs: object) -> PaymentResult:
    """Trio side: apply_payment, retried on database trouble (the charge is already made)."""
    for attempt in range(1, APPLY_ATTEMPTS + 1):
        try:
            return await db.run(apply_payment, **kwargs)  # type: ignore[arg-type]
        except _RETRYABLE:
            if attempt == APPLY_ATTEMPTS:
                raise
            await trio.sleep(APPLY_RETRY_DELAY * attempt)
    raise AssertionError("unreachable")


async def on_pre_checkout(query: PreCheckoutQuery, db: Database, clock: Clock) -> None:
    """Validate the intent behind the invoice and answer within Telegram's 10 s."""
    language = query.from_user.language_code
    verdict = await _checkout_verdict(
        db,
        CHECKOUT_DB_BUDGET,
        payload=query.invoice_payload,
        user_id=query.from_user.id,
        currency=query.currency,
        total_amount=query.total_amount,
        now=clock.now(),
    )
    if verdict is CheckoutVerdict.OK:
        await query.answer(ok=True)
        return
    key = "pay.checkout.busy" if verdict is None else f"pay.checkout.{verdict.value}"
    if verdict is not None:
        _log.info("pre-checkout of user %d refused: %s", query.from_user.id, verdict.value)
    await query.answer(ok=False, error_message=t(language, key))


async def on_successful_payment(
    message: Message,
    db: Database,
    clock: Clock,
    referral_policy: ReferralPolicy,
    config: BotConfig | None = None,
    balance_currency: str | None = None,
) -> None:
    """Apply the Stars payment once; the outbox notice confirms it (see the module docstring).

    The balance currency comes from ``balance_currency`` or else ``config.currency``.
    """
    payment = message.successful_payment
    assert payment is not None  # the filter guarantees it
    currency = balance_currency or (config.currency if config is not None else None)
    if currency is None:
        raise RuntimeError("the payments router needs a 'config' or 'balance_currency' dependency")
    user_id = message.from_user.id if message.from_user is not None else message.chat.id
    try:
        result = await _apply_with_retries(
            db,
            provider="stars",
            external_id=payment.telegram_payment_charge_id,
            payload=payment.invoice_payload,
            paid_amount_minor=payment.total_amount,
            paid_currency=payment.currency,
            referral_policy=referral_policy,
            balance_currency=currency,
            now=clock.now(),
        )
    except _RETRYABLE:
        _log.error(
            "stars charge %s of user %d (%d %s) NOT applied: the database failed; apply it by hand",
            payment.telegram_payment_charge_id,
            user_id,
            payment.total_amount,
            payment.currency,
        )
        raise
    if result.outcome is ApplyOutcome.APPLIED:
        _log.info(
            "stars charge %s applied: payment %s of user %d (%s)",
            payment.telegram_payment_charge_id,
            result.payment_id,
            user_id,
            result.purpose,
        )
    elif result.outcome is ApplyOutcome.ALREADY_APPLIED:
        _log.debug("stars charge %s already applied", payment.telegram_payment_charge_id)
    else:
        _log.error(
            "stars charge %s of user %d (%d %s) %s, not applied: %s; refunding it",
            payment.telegram_payment_charge_id,
            user_id,
            payment.total_amount,
            payment.currency,
            result.outcome.value,
            result.reason,
        )
        await _give_back(message, db, clock, user_id, result)


async def _give_back(
    message: Message, db: Database, clock: Clock, user_id: int, result: PaymentResult
) -> None:
    """Refund a charge that applies to nothing, now (the user is told by the ``payment.returned``
    notice). Telegram unreachable: the refund stays recorded and the reconcile finishes it."""
    payment = message.successful_payment
    assert payment is not None and message.bot is not None
    reason = f"{result.outcome.value}" + (f" ({result.reason})" if result.reason else "")
    try:
        await return_charge(
            db,
            BotStarsLedger(message.bot),
            clock,
            external_id=payment.telegram_payment_charge_id,
            user_id=user_id,
            amount_minor=payment.total_amount,
            reason=f"at payment: {reason}",
        )
    except (TelegramNetworkError, TelegramServerError, TelegramRetryAfter) as exc:
        _log.warning(
            "stars refund of charge %s not confirmed (%s); the reconcile finishes it",
            payment.telegram_payment_charge_id,
            exc.__class__.__name__,
        )


def build_router() -> Router:
    """The payments router: ``pre_checkout_query`` and messages carrying ``successful_payment``.

    Place it before the user screens' catch-all message handlers: a ``successful_payment`` service
    message must never reach a fallback.
    """
    router = Router(name="payments")
    router.pre_checkout_query.register(on_pre_checkout)
    router.message.register(on_successful_payment, F.successful_payment)
    return router
