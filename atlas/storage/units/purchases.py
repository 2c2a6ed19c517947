"""Buying a plan from the balance (the predecessor's ``finalize_balance_purchase``).

One transaction: the debit (ledger ``purchase``), the access (:func:`grant_paid_time`), a promo's
balance bonus and its redemption, and the notice. Any refusal (unknown plan, not for sale, no price
in the currency, a promo error, a short balance) is raised before anything is written, and the
transaction is rolled back anyway: nothing changes.

Idempotent on the caller's ``idempotency_key`` (the bot derives it from the button press): the
debit's ledger key is ``purchase:<user>:<key>``, so a double tap or a redelivered update charges
once. A free quote (a 100% code) has no debit; its promo redemption, which has the same reference,
marks it done instead. A balance purchase earns no referral reward: the money already earned one
(or not, by policy) when it was paid in as a top-up.
"""

from __future__ import annotations

import datetime as dt

from atlas.domain import Currency, UnsupportedCurrency, quote_plan
from atlas.storage.tx import Tx
from atlas.storage.units import ledger
from atlas.storage.units._rows import check_now, check_user_id, lock_subscription, lock_user
from atlas.storage.units.errors import UserBanned
from atlas.storage.units.ledger import LedgerKind
from atlas.storage.units.outbox import enqueue_message
from atlas.storage.units.plans import load_plan
from atlas.storage.units.promo import quote_with_promo, redeem_promo
from atlas.storage.units.records import PurchaseResult
from atlas.storage.units.subscriptions import grant_paid_time

MAX_IDEMPOTENCY_KEY = 100


def check_idempotency_key(key: str) -> str:
    """A caller-chosen key: 1-100 printable characters (``ValueError`` otherwise: a caller's bug)."""
    if not isinstance(key, str) or not 1 <= len(key) <= MAX_IDEMPOTENCY_KEY or not key.isprintable():
        raise ValueError(f"idempotency_key must be 1..{MAX_IDEMPOTENCY_KEY} printable chars, got {key!r}")
    return key


async def buy_plan_from_balance(
    tx: Tx,
    *,
    user_id: int,
    plan_code: str,
    currency: str,
    promo_code: str | None,
    idempotency_key: str,
    now: dt.datetime,
) -> PurchaseResult:
    """Pay for ``plan_code`` from the balance (kept in ``currency``) and grant its days.

    ``promo_code`` None uses the user's live promo session, if any. Raises
    :class:`~atlas.domain.UnknownPlan`, :class:`~atlas.domain.PlanNotForSale`,
    :class:`~atlas.domain.UnsupportedCurrency`, :class:`~atlas.domain.InsufficientBalance`, a
    :class:`~atlas.domain.PromoError`, :class:`UserBanned` or :class:`UnknownUser`; nothing changes
    then. A repeated key returns ``already_done=True`` and changes nothing.
    """
    check_user_id(user_id)
    check_now(now)
    reference = f"purchase:{user_id}:{check_idempotency_key(idempotency_key)}"
    user = await lock_user(tx, user_id)
    sub = await lock_subscription(tx, user_id)
    charged = await ledger.key_posted(tx, reference)
    if charged is not None or await _free_purchase_done(tx, reference):
        return PurchaseResult(
            user_id=user_id,
            plan_code=plan_code,
            charged_minor=-(charged or 0),
            currency=currency,
            days=0,
            expires_at=sub["expires_at"] if sub is not None else now,
            balance_minor=user["balance_minor"],
            promo_code=None,
            already_done=True,
        )
    if user["banned_at"] is not None:
        raise UserBanned(user_id)
    money = Currency.of(currency)
    if money.is_stars:
        raise UnsupportedCurrency(money.code, "the balance is not kept in Telegram Stars")
    plan = await load_plan(tx, plan_code)
    is_new = user["first_paid_at"] is None
    quote, promo = await quote_with_promo(
        tx,
        user_id=user_id,
        promo_code=promo_code,
        now=now,
        quote=lambda p, uses: quote_plan(plan, money, p, user_uses=uses, user_is_new=is_new, now=now),
    )
    balance: int = user["balance_minor"]
    if quote.total_minor > 0:
        posted = await ledger.post(
            tx,
            user_id=user_id,
            balance_minor=balance,
            amount_minor=-quote.total_minor,
            kind=LedgerKind.PURCHASE,
            reference=f"plan:{plan.code}",
            idempotency_key=reference,
            now=now,
        )
        assert posted is not None  # the key was checked under the user's lock
        balance = posted
    row = await grant_paid_time(tx, user=user, sub=sub, days=quote.days, plan_code=plan.code, now=now)
    if quote.balance_bonus_minor > 0:
        posted = await ledger.post(
            tx,
            user_id=user_id,
            balance_minor=balance,
            amount_minor=quote.balance_bonus_minor,
            kind=LedgerKind.PROMO_BONUS,
            reference=f"promo:{quote.promo_code}",
            idempotency_key=f"{reference}:bonus",
            now=now,
        )
        assert posted is not None
        balance = posted
    if promo is not None:
        await redeem_promo(tx, promo=promo, user_id=user_id, payment_id=None, reference=reference, now=now)
    await enqueue_message(
        tx,
        chat_id=user_id,
        kind="purchase.done",
        payload={
            "plan": plan.code,
            "days": quote.days,
            "charged_minor": quote.total_minor,
            "currency": money.code,
            "expires_at": row["expires_at"],
        },
        dedupe_key=reference,
        now=now,
    )
    return PurchaseResult(
        user_id=user_id,
        plan_code=plan.code,
        charged_minor=quote.total_minor,
        currency=money.code,
        days=quote.days,
        expires_at=row["expires_at"],
        balance_minor=balance,
        promo_code=quote.promo_code,
    )


async def _free_purchase_done(tx: Tx, reference: str) -> bool:
    found = await tx.fetchval("SELECT 1 FROM promo_redemptions WHERE reference = $1", reference)
    return found is not None
