"""Telegram Stars reconciliation: the bot's Stars history as plain values, and what to do with each.

A Stars charge reaches Atlas through the ``successful_payment`` update. An update can be lost (the
process was down past Telegram's retention, a crash between intake and apply, a webhook refused
too often), and the user has then paid for nothing. ``getStarTransactions`` is the bot's own
history (oldest first, ``offset``/``limit`` 1..100): every charge is there, its ``id`` is the
``telegram_payment_charge_id``. The ``stars_reconciler`` actor walks it and, per charge:

=====================================================  ========================================
``apply_payment`` says (``external_id`` = charge id)   the reconcile
=====================================================  ========================================
applied now (the update was lost)                      done: the user gets what they paid for
already applied (the update arrived), or refunded      nothing
unknown (no intent has its payload)                    refund it (``refundStarPayment``), tell
flagged (underpaid, a second charge of one invoice)    the user; the flagged payment is marked
                                                       ``refunded``
=====================================================  ========================================

Exactly once: applying is idempotent on ``UNIQUE(provider, external_id)``; a refund is recorded
(``provider_refunds``, primary key ``(provider, external_id)``) before Telegram is asked, and done
after; a crash between the two is finished by the next pass, and Telegram's
``CHARGE_ALREADY_REFUNDED`` counts as done. Refunds already in the history (``receiver`` set) are
never refunded or applied again.

This module is the boundary with aiogram: :class:`StarsLedgerApi` is what the actor needs, and
:class:`BotStarsLedger` provides it through the Bot (every call outside any unit of work).
"""

from __future__ import annotations

import datetime as dt
import enum
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from aiogram import Bot
from aiogram.exceptions import TelegramBadRequest
from aiogram.types import StarTransaction as AiogramStarTransaction
from aiogram.types import TransactionPartnerUser

from atlas.storage.units.records import ApplyOutcome

ALREADY_REFUNDED = "CHARGE_ALREADY_REFUNDED"
MAX_PAGE = 100


@dataclass(frozen=True, slots=True)
class StarTransaction:
    """One entry of the bot's Stars history.

    ``incoming``: a user paid the bot (``user_id``, ``payload`` set); otherwise money left the bot
    (a refund has the charge's own ``id`` and the user as receiver) or came from elsewhere
    (``user_id`` None: ads revenue, Fragment).
    """

    id: str
    amount: int
    date: dt.datetime
    incoming: bool
    user_id: int | None
    payload: str | None


class RefundAnswer(enum.Enum):
    """How Telegram answered ``refundStarPayment``."""

    REFUNDED = "refunded"
    ALREADY_REFUNDED = "already_refunded"


class StarsRefundRefused(Exception):
    """Telegram refused the refund for another reason (``CHARGE_NOT_FOUND``...): an operator looks."""


class StarsLedgerApi(Protocol):
    """What the reconcile needs from Telegram."""

    async def transactions(self, *, offset: int, limit: int) -> Sequence[StarTransaction]:
        """One page of the bot's Stars history, oldest first."""

    async def refund(self, *, user_id: int, charge_id: str) -> RefundAnswer:
        """Give a charge back; :class:`StarsRefundRefused` if Telegram says no."""


class BotStarsLedger:
    """:class:`StarsLedgerApi` through the aiogram ``Bot`` (trio side, via the asyncio bridge).

    Telegram's transport errors (``TelegramNetworkError``, 5xx, 429) pass through unchanged.
    """

    def __init__(self, bot: Bot) -> None:
        self._bot = bot

    async def transactions(self, *, offset: int, limit: int) -> Sequence[StarTransaction]:
        """One page of ``getStarTransactions`` as :class:`StarTransaction` values."""
        if not 1 <= limit <= MAX_PAGE or offset < 0:
            raise ValueError(f"offset must be >= 0 and limit in 1..{MAX_PAGE}, got {offset}, {limit}")
        page = await self._bot.get_star_transactions(offset=offset, limit=limit)
        return [star_transaction(item) for item in page.transactions]

    async def refund(self, *, user_id: int, charge_id: str) -> RefundAnswer:
        """``refundStarPayment``; ``CHARGE_ALREADY_REFUNDED`` is an answer, not an error."""
        try:
            await self._bot.refund_star_payment(user_id=user_id, telegram_payment_charge_id=charge_id)
        except TelegramBadRequest as exc:
            if ALREADY_REFUNDED in exc.message:
                return RefundAnswer.ALREADY_REFUNDED
            raise StarsRefundRefused(f"charge {charge_id}: {exc.message}") from exc
        return RefundAnswer.REFUNDED


def star_transaction(item: AiogramStarTransaction) -> StarTransaction:
    """aiogram's ``StarTransaction`` as a plain value."""
    source = item.source if isinstance(item.source, TransactionPartnerUser) else None
    receiver = item.receiver if isinstance(item.receiver, TransactionPartnerUser) else None
    date = item.date if item.date.tzinfo is not None else item.date.replace(tzinfo=dt.UTC)
    return StarTransaction(
        id=item.id,
        amount=item.amount,
        date=date,
        incoming=item.receiver is None and source is not None,
        user_id=source.user.id if source is not None else receiver.user.id if receiver is not None else None,
        payload=source.invoice_payload if source is not None else None,
    )


class Verdict(enum.Enum):
    """What the reconcile does with one incoming charge after ``apply_payment``."""

    SETTLED = "settled"
    REFUND = "refund"


VERDICTS: dict[ApplyOutcome, Verdict] = {
    ApplyOutcome.APPLIED: Verdict.SETTLED,
    ApplyOutcome.ALREADY_APPLIED: Verdict.SETTLED,
    ApplyOutcome.UNKNOWN: Verdict.REFUND,
    ApplyOutcome.FLAGGED: Verdict.REFUND,
}
"""The module docstring's table, as data: every outcome has a row."""
