"""The ledger: every balance change is a row with a unique idempotency key (contract 5).

:func:`post` writes the row and moves the cached ``users.balance_minor`` in the same transaction,
so ``balance = sum(ledger)`` per user always holds. The never-below-zero rule is decided by the
domain (:func:`atlas.domain.debit`) on the *locked* balance before anything is written, so a short
balance is :class:`~atlas.domain.InsufficientBalance` (a message to the user), not a CHECK
violation; the CHECK stays as the last line of defence.

Idempotency keys name what caused the change, so a repeat of the cause cannot move money twice:

==========================================  ===================================================
``payment:<id>``                             top-up credit of a payment
``payment:<id>:bonus``                       its promo bonus (top-up or plan)
``referral:payment:<id>``                    the referrer's reward for a payment
``referral:payment:<id>:reversal``           that reward taken back by a refund
``refund:payment:<id>``                      a top-up/bonus taken back by a refund
``purchase:<user>:<key>`` (``:bonus``)       a plan bought from the balance (and its bonus)
``renewal:<subscription>:<old expiry>``      an auto-renewal (the domain's key)
``admin:<user>:<key>``                       an admin adjustment
==========================================  ===================================================
"""

from __future__ import annotations

import datetime as dt
import enum

from atlas.domain import credit, debit
from atlas.storage.tx import Tx
from atlas.storage.units._rows import check_limit, check_user_id
from atlas.storage.units.records import LedgerEntry


class LedgerKind(enum.StrEnum):
    """The ``ledger.kind`` values."""

    TOPUP = "topup"
    PURCHASE = "purchase"
    RENEWAL = "renewal"
    REFUND = "refund"
    REFERRAL_REWARD = "referral_reward"
    PROMO_BONUS = "promo_bonus"
    ADMIN_ADJUST = "admin_adjust"


async def post(
    tx: Tx,
    *,
    user_id: int,
    balance_minor: int,
    amount_minor: int,
    kind: LedgerKind,
    reference: str,
    idempotency_key: str,
    now: dt.datetime,
) -> int | None:
    """Credit (``amount_minor > 0``) or debit (``< 0``) a user whose row the caller has locked.

    ``balance_minor`` is that locked row's balance. Returns the new balance, or None when the key
    was already posted (nothing changed). Raises :class:`~atlas.domain.InsufficientBalance` before
    writing anything when a debit is not covered; ``ValueError`` for a zero amount.
    """
    if amount_minor == 0:
        raise ValueError("a ledger entry moves money: amount_minor must not be 0")
    expected = (
        credit(balance_minor, amount_minor) if amount_minor > 0 else debit(balance_minor, -amount_minor)
    )
    entry = await tx.fetchval(
        """
        INSERT INTO ledger (user_id, amount_minor, kind, reference, idempotency_key, created_at)
        VALUES ($1, $2, $3, $4, $5, $6)
        ON CONFLICT (idempotency_key) DO NOTHING
        RETURNING id
        """,
        user_id,
        amount_minor,
        kind.value,
        reference,
        idempotency_key,
        now,
    )
    if entry is None:
        return None
    balance = await tx.fetchval(
        "UPDATE users SET balance_minor = balance_minor + $2 WHERE id = $1 RETURNING balance_minor",
        user_id,
        amount_minor,
    )
    if balance != expected:
        # The caller passed a balance that is not its locked row's: a bug that must not commit.
        raise AssertionError(f"user {user_id}: balance {balance} after posting, expected {expected}")
    return int(balance)


async def key_posted(tx: Tx, idempotency_key: str) -> int | None:
    """The amount posted under ``idempotency_key``, or None if nothing was."""
    value = await tx.fetchval("SELECT amount_minor FROM ledger WHERE idempotency_key = $1", idempotency_key)
    return None if value is None else int(value)


async def ledger_entries(
    tx: Tx, *, user_id: int, before_id: int | None = None, limit: int = 20
) -> list[LedgerEntry]:
    """A user's ledger, newest first, keyset-paged by ``before_id``."""
    check_user_id(user_id)
    rows = await tx.fetch(
        """
        SELECT id, user_id, amount_minor, kind, reference, created_at FROM ledger
        WHERE user_id = $1 AND ($2::bigint IS NULL OR id < $2)
        ORDER BY id DESC LIMIT $3
        """,
        user_id,
        before_id,
        check_limit(limit, most=1000),
    )
    return [
        LedgerEntry(
            id=row["id"],
            user_id=row["user_id"],
            amount_minor=row["amount_minor"],
            kind=row["kind"],
            reference=row["reference"],
            created_at=row["created_at"],
        )
        for row in rows
    ]
