"""Payment intents: created before an invoice, found again when the provider says it was paid.

An intent (a ``payments`` row in ``pending``) fixes everything at quote time: the amount and
currency to be paid, the balance credit, the days of access, the promo code. Applying it
(:mod:`atlas.storage.units.apply`) does exactly that, whatever changed meanwhile (a new price, a
code that ran out): the user was shown, and paid, that quote.

Providers: ``cryptopay`` (fiat-priced invoices; ``external_id`` is the invoice id, attached with
:func:`attach_external_id` after ``createInvoice`` returns) and ``stars`` (currency ``XTR``; the
``external_id`` is ``telegram_payment_charge_id``, known only when paid; the intent is found by its
``payload``). Top-ups are in the balance currency only, so never in Stars.
"""

from __future__ import annotations

import datetime as dt
import enum
import secrets

from atlas.domain import (
    MAX_AMOUNT_MINOR,
    Currency,
    UnsupportedCurrency,
    check_amount,
    quote_plan,
    quote_topup,
)
from atlas.storage.tx import Tx
from atlas.storage.units._rows import check_limit, check_now, check_user_id, lock_user, status_count
from atlas.storage.units.errors import (
    NothingToPay,
    PaymentConflict,
    PaymentNotFound,
    TooManyInvoices,
    UserBanned,
)
from atlas.storage.units.plans import load_plan
from atlas.storage.units.promo import quote_with_promo
from atlas.storage.units.records import PaymentIntent, PendingPayment

MIN_TTL = dt.timedelta(minutes=1)
MAX_TTL = dt.timedelta(days=31)  # Crypto Pay's expires_in ceiling
MAX_EXTERNAL_ID = 256
INVOICE_WINDOW = dt.timedelta(hours=1)


class Provider(enum.StrEnum):
    """Payment providers; the values are what ``payments.provider`` stores."""

    CRYPTOPAY = "cryptopay"
    STARS = "stars"


class Purpose(enum.StrEnum):
    """What a payment buys."""

    TOPUP = "topup"
    PLAN = "plan"


def new_payload() -> str:
    """An unguessable invoice payload: 24 random bytes, URL-safe (32 chars, within Stars' 128 bytes)."""
    return secrets.token_urlsafe(24)


def check_external_id(external_id: str) -> str:
    """A provider's id: 1-256 printable characters (``ValueError`` otherwise)."""
    if not isinstance(external_id, str) or not 1 <= len(external_id) <= MAX_EXTERNAL_ID:
        raise ValueError(f"external_id must be 1..{MAX_EXTERNAL_ID} chars, got {external_id!r}")
    if not external_id.isprintable():
        raise ValueError(f"external_id must be printable, got {external_id!r}")
    return external_id


async def create_payment_intent(
    tx: Tx,
    *,
    user_id: int,
    provider: str,
    purpose: str,
    currency: str,
    balance_currency: str,
    ttl: dt.timedelta,
    now: dt.datetime,
    plan_code: str | None = None,
    amount_minor: int | None = None,
    promo_code: str | None = None,
    min_topup_minor: int = 1,
    max_topup_minor: int = MAX_AMOUNT_MINOR,
    invoices_per_hour: int | None = None,
) -> PaymentIntent:
    """Quote a plan (``plan_code``) or a top-up (``amount_minor``) and record a pending payment.

    ``promo_code`` None uses the user's live promo session. Raises (and records nothing):
    :class:`~atlas.domain.InvalidAmount` (negative, zero, below ``min_topup_minor``, above
    ``max_topup_minor``), :class:`~atlas.domain.UnknownPlan`, :class:`~atlas.domain.PlanNotForSale`,
    :class:`~atlas.domain.UnsupportedCurrency` (Stars for a top-up, fiat through Stars, a plan not
    priced in it), a :class:`~atlas.domain.PromoError`, :class:`NothingToPay` (a free quote: use
    ``buy_plan_from_balance``), :class:`UserBanned`, :class:`TooManyInvoices` (the user already
    has ``invoices_per_hour`` intents created within the hour before ``now``; None: no limit).
    Wrong argument combinations are ``ValueError``.

    The user's row is locked before counting, so two concurrent requests of one user cannot both
    squeeze under the limit.
    """
    check_user_id(user_id)
    check_now(now)
    chosen = Provider(provider)
    goal = Purpose(purpose)
    if not MIN_TTL <= ttl <= MAX_TTL:
        raise ValueError(f"ttl must be in [{MIN_TTL}, {MAX_TTL}], got {ttl}")
    money = Currency.of(currency)
    if (chosen is Provider.STARS) != money.is_stars:
        raise UnsupportedCurrency(money.code, f"{chosen.value} payments are not made in {money.code}")
    if invoices_per_hour is not None and (isinstance(invoices_per_hour, bool) or invoices_per_hour < 1):
        raise ValueError(f"invoices_per_hour must be a positive int or None, got {invoices_per_hour!r}")
    user = await lock_user(tx, user_id)
    if user["banned_at"] is not None:
        raise UserBanned(user_id)
    if invoices_per_hour is not None:
        recent = await tx.fetchval(
            "SELECT count(*) FROM (SELECT 1 FROM payments WHERE user_id = $1 AND created_at > $2 "
            "LIMIT $3) AS recent",
            user_id,
            now - INVOICE_WINDOW,
            invoices_per_hour,
        )
        if recent >= invoices_per_hour:
            raise TooManyInvoices(user_id, invoices_per_hour)
    is_new = user["first_paid_at"] is None
    if goal is Purpose.PLAN:
        if plan_code is None or amount_minor is not None:
            raise ValueError("a plan payment takes plan_code and no amount_minor (the plan has the price)")
        plan = await load_plan(tx, plan_code)
        quote, _ = await quote_with_promo(
            tx,
            user_id=user_id,
            promo_code=promo_code,
            now=now,
            quote=lambda p, uses: quote_plan(plan, money, p, user_uses=uses, user_is_new=is_new, now=now),
        )
        if quote.is_free:
            raise NothingToPay(plan.code)
        amount, credit, bonus_days, days = (
            quote.total_minor,
            quote.balance_bonus_minor,
            quote.bonus_days,
            quote.days,
        )
        promo_used, plan_stored = quote.promo_code, plan.code
    else:
        if plan_code is not None or amount_minor is None:
            raise ValueError("a top-up takes amount_minor and no plan_code")
        if money != Currency.of(balance_currency):
            raise UnsupportedCurrency(money.code, f"top-ups are made in {balance_currency}")
        # The amount is the user's own typing: refuse it before looking at any promo code.
        check_amount(amount_minor, money, min_minor=min_topup_minor, max_minor=max_topup_minor)
        topup, _ = await quote_with_promo(
            tx,
            user_id=user_id,
            promo_code=promo_code,
            now=now,
            quote=lambda p, uses: quote_topup(
                amount_minor,
                money,
                p,
                user_uses=uses,
                user_is_new=is_new,
                now=now,
                min_minor=min_topup_minor,
                max_minor=max_topup_minor,
            ),
        )
        amount, credit, bonus_days, days = topup.amount_minor, topup.credit_minor, 0, 0
        promo_used, plan_stored = topup.promo_code, None
    payload = new_payload()
    row = await tx.fetchrow(
        """
        INSERT INTO payments (user_id, provider, payload, purpose, plan_code, amount_minor, currency,
                              credit_minor, bonus_days, days, promo_code, status, created_at, expires_at)
        VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, 'pending', $12, $13)
        RETURNING id, expires_at
        """,
        user_id,
        chosen.value,
        payload,
        goal.value,
        plan_stored,
        amount,
        money.code,
        credit,
        bonus_days,
        days,
        promo_used,
        now,
        now + ttl,
    )
    assert row is not None
    return PaymentIntent(
        payment_id=row["id"],
        user_id=user_id,
        provider=chosen.value,
        purpose=goal.value,
        payload=payload,
        amount_minor=amount,
        currency=money.code,
        credit_minor=credit,
        bonus_days=bonus_days,
        days=days,
        plan_code=plan_stored,
        promo_code=promo_used,
        expires_at=row["expires_at"],
    )


async def attach_external_id(tx: Tx, *, payment_id: int, external_id: str) -> None:
    """Record the provider's id of a payment's invoice (idempotent for the same id).

    Raises :class:`PaymentNotFound`, or :class:`PaymentConflict` when the payment already has
    another external id (``reason="external_id"``) or another payment has this one
    (``reason="external_id_taken"``).
    """
    check_external_id(external_id)
    row = await tx.fetchrow("SELECT provider, external_id FROM payments WHERE id = $1 FOR UPDATE", payment_id)
    if row is None:
        raise PaymentNotFound(payment_id)
    if row["external_id"] == external_id:
        return
    if row["external_id"] is not None:
        raise PaymentConflict(payment_id, "external_id")
    taken = await tx.fetchval(
        "SELECT id FROM payments WHERE provider = $1 AND external_id = $2", row["provider"], external_id
    )
    if taken is not None:
        raise PaymentConflict(payment_id, "external_id_taken")
    await tx.execute("UPDATE payments SET external_id = $2 WHERE id = $1", payment_id, external_id)


async def expire_payment_intents(tx: Tx, *, now: dt.datetime, limit: int) -> int:
    """Mark at most ``limit`` pending payments past their ``expires_at`` as expired; return how many.

    Claimed with ``SKIP LOCKED``, so it never waits on an ``apply_payment`` in flight. An expired
    intent that is paid after all is still applied (the user paid): see ``apply_payment``.
    """
    status = await tx.execute(
        """
        UPDATE payments SET status = 'expired' WHERE id IN (
            SELECT id FROM payments WHERE status = 'pending' AND expires_at <= $1
            ORDER BY id LIMIT $2 FOR UPDATE SKIP LOCKED
        )
        """,
        check_now(now),
        check_limit(limit),
    )
    return status_count(status)


async def pending_payments(tx: Tx, *, provider: str, after_id: int, limit: int) -> list[PendingPayment]:
    """Pending payments of ``provider`` with id > ``after_id`` (keyset), oldest first, for the watcher."""
    rows = await tx.fetch(
        """
        SELECT id, user_id, provider, external_id, payload, created_at, expires_at FROM payments
        WHERE provider = $1 AND status = 'pending' AND id > $2
        ORDER BY id LIMIT $3
        """,
        Provider(provider).value,
        after_id,
        check_limit(limit, most=1000),
    )
    return [
        PendingPayment(
            payment_id=row["id"],
            user_id=row["user_id"],
            provider=row["provider"],
            external_id=row["external_id"],
            payload=row["payload"],
            created_at=row["created_at"],
            expires_at=row["expires_at"],
        )
        for row in rows
    ]
