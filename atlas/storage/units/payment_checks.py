"""Read-only checks around payments: the Stars pre-checkout verdict and a refund's target.

Both are short reads (one transaction, a few indexed rows, no locks held beyond the statement),
so the bot can afford them inside Telegram's 10-second pre-checkout window and before it calls
``refundStarPayment``. Neither changes anything; the decisions that change money stay in
:func:`~atlas.storage.units.apply.apply_payment` and :func:`~atlas.storage.units.admin.refund_payment`.
"""

from __future__ import annotations

import datetime as dt
import enum
from dataclasses import dataclass

from atlas.storage.tx import Tx
from atlas.storage.units._rows import check_now
from atlas.storage.units.errors import PaymentNotFound


class CheckoutVerdict(enum.StrEnum):
    """Why a Stars pre-checkout is accepted or refused; the values are locale key suffixes."""

    OK = "ok"
    UNKNOWN = "unknown"  # no Stars intent with this payload for this user
    NOT_PENDING = "not_pending"  # already paid, expired, flagged or refunded
    EXPIRED = "expired"  # still pending but past its expires_at
    NOT_SOLD = "not_sold"  # the plan was taken off sale after the invoice was sent
    PRICE_CHANGED = "price_changed"  # the invoice's total or currency is not the intent's
    BANNED = "banned"  # an admin banned the payer after the invoice was sent


async def check_stars_checkout(
    tx: Tx,
    *,
    payload: str,
    user_id: int,
    currency: str,
    total_amount: int,
    now: dt.datetime,
) -> CheckoutVerdict:
    """Decide whether Telegram may charge ``user_id`` ``total_amount`` ``currency`` for ``payload``.

    "Price unchanged" means the invoice asks exactly the quote recorded in the intent (a plan's
    catalogue price may change meanwhile: the intent's quote is what the user was shown and what
    applying it grants). Never raises for any input: an odd value is simply not ``OK``.
    """
    check_now(now)
    if not isinstance(payload, str) or not 1 <= len(payload) <= 128:
        return CheckoutVerdict.UNKNOWN
    row = await tx.fetchrow(
        """
        SELECT p.user_id, p.provider, p.status, p.amount_minor, p.currency, p.expires_at,
               pl.for_sale, u.banned_at
        FROM payments p
        JOIN users u ON u.id = p.user_id
        LEFT JOIN plans pl ON pl.code = p.plan_code
        WHERE p.payload = $1
        """,
        payload,
    )
    if row is None or row["provider"] != "stars" or row["user_id"] != user_id:
        return CheckoutVerdict.UNKNOWN
    if row["banned_at"] is not None:
        return CheckoutVerdict.BANNED
    if row["status"] != "pending":
        return CheckoutVerdict.NOT_PENDING
    if row["expires_at"] <= now:
        return CheckoutVerdict.EXPIRED
    if row["for_sale"] is False:
        return CheckoutVerdict.NOT_SOLD
    if currency != row["currency"] or isinstance(total_amount, bool) or total_amount != row["amount_minor"]:
        return CheckoutVerdict.PRICE_CHANGED
    return CheckoutVerdict.OK


@dataclass(frozen=True, slots=True)
class RefundTarget:
    """A payment as a provider-side refund needs it (who, which charge, in what state)."""

    payment_id: int
    user_id: int
    provider: str
    external_id: str | None
    status: str
    amount_minor: int
    currency: str
    credit_minor: int
    payer_balance_minor: int

    @property
    def balance_short(self) -> bool:
        """True when reversing the credit would take the payer's balance below zero (spent money)."""
        return self.credit_minor > self.payer_balance_minor


async def refund_target(tx: Tx, *, payment_id: int) -> RefundTarget:
    """Read the payment ``payment_id`` for a refund; :class:`PaymentNotFound` when there is none."""
    row = await tx.fetchrow(
        """
        SELECT p.id, p.user_id, p.provider, p.external_id, p.status, p.amount_minor, p.currency,
               p.credit_minor, u.balance_minor
        FROM payments p JOIN users u ON u.id = p.user_id WHERE p.id = $1
        """,
        payment_id,
    )
    if row is None:
        raise PaymentNotFound(payment_id)
    return RefundTarget(
        payment_id=row["id"],
        user_id=row["user_id"],
        provider=row["provider"],
        external_id=row["external_id"],
        status=row["status"],
        amount_minor=row["amount_minor"],
        currency=row["currency"],
        credit_minor=row["credit_minor"],
        payer_balance_minor=row["balance_minor"],
    )
