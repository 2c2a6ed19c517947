"""What a plan costs *this* user right now: the plans for sale, each quoted with their promo code.

A user who typed a 7-day promo code must see "37 days" on the plan screen, not only on the
invoice; a 20 % code must show the discounted price on every pay button. So the plan screens read
:func:`plan_offers`: every plan quoted in each of its currencies (the balance currency and Stars)
by the same domain rule the payment units use (:func:`~atlas.domain.promo.quote_plan`), with the
user's live promo session.

This is a display: it reads the code without locking its row (the purchase locks and re-checks
it), and a code that does not fit a plan (another plan, expired, used up) just leaves that plan at
its list price — the refusal, if any, comes with the purchase, as before.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass

from atlas.domain import Currency, Plan, PromoCode, PromoError
from atlas.domain.promo import Quote, quote_plan
from atlas.storage import Tx
from atlas.storage.units import UserView, plans_for_sale
from atlas.storage.units.promo import find_promo, promo_session_code, user_promo_uses


@dataclass(frozen=True, slots=True)
class PlanOffer:
    """One plan and its quotes by currency code (``"RUB"``, ``"XTR"``), promo included."""

    plan: Plan
    quotes: Mapping[str, Quote]

    def quote(self, currency: str) -> Quote | None:
        """The quote in ``currency``, None when the plan has no price in it."""
        return self.quotes.get(currency)

    @property
    def days(self) -> int:
        """Days of access this purchase gives (the plan's, plus a promo's free days)."""
        return max((q.days for q in self.quotes.values()), default=self.plan.duration_days)

    @property
    def promo_code(self) -> str | None:
        """The promo code that changes these terms, None when none does."""
        for quote in self.quotes.values():
            if quote.promo_code is not None and (quote.discount_minor or quote.bonus_days):
                return quote.promo_code
        return None


async def plan_offers(tx: Tx, user: UserView, now: dt.datetime) -> list[PlanOffer]:
    """A screen read: every plan for sale, quoted for ``user`` with their promo session at ``now``."""
    plans = await plans_for_sale(tx)
    code = await promo_session_code(tx, user_id=user.id, now=now)
    promo = None if code is None else await find_promo(tx, code, lock=False)
    uses = 0 if promo is None else await user_promo_uses(tx, code=promo.code, user_id=user.id)
    is_new = user.first_paid_at is None
    return [
        PlanOffer(
            plan,
            {
                money.code: _quote(plan, money, promo, uses=uses, is_new=is_new, now=now)
                for money in plan.currencies
            },
        )
        for plan in plans
    ]


def _quote(
    plan: Plan, money: Currency, promo: PromoCode | None, *, uses: int, is_new: bool, now: dt.datetime
) -> Quote:
    """The plan's quote with ``promo`` when the code fits it, else at its list price."""
    if promo is not None:
        try:
            return quote_plan(plan, money, promo, user_uses=uses, user_is_new=is_new, now=now)
        except PromoError:
            # The code does not fit this plan (another plan, used up, expired): the list price
            # stands, and the purchase itself will say why if the user insists on the code.
            return quote_plan(plan, money, None, user_uses=0, user_is_new=is_new, now=now)
    return quote_plan(plan, money, None, user_uses=0, user_is_new=is_new, now=now)
