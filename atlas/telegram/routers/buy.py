"""Plans and buying: the plan list, one plan's payment methods, and buying from the balance,
with Telegram Stars or through Crypto Pay (invoice creation only).

Prices and days are the user's own (:mod:`._offers`): with a promo code in their session, the list
and the plan screen already show the adjusted terms (a 7-day code: 37 days; a 20 % code: the
lower price on each pay button), with the list terms beside them. The list shows every price a
plan has: the balance currency and Telegram Stars.

A balance purchase is idempotent on the button press (``cb:<callback query id>``): a redelivered
update charges once. Not enough money is a refusal with its own screen and a top-up button.
"""

from __future__ import annotations

from aiogram import F, Router
from aiogram.types import CallbackQuery

from atlas.domain import InsufficientBalance
from atlas.domain.money import XTR
from atlas.storage.units import buy_plan_from_balance
from atlas.telegram import keyboards
from atlas.telegram.callbacks import BuyCb, MenuAction, MenuCb, PayMethod, PlanCb
from atlas.telegram.routers._invoices import send_crypto_invoice, send_stars_invoice
from atlas.telegram.routers._offers import PlanOffer, plan_offers
from atlas.telegram.routers._screen import Screen, ScreenMiddleware, reads


def _price(ui: Screen, offer: PlanOffer) -> str | None:
    """The price in the balance currency, promo applied; None when the plan has none."""
    quote = offer.quote(ui.config.currency)
    return None if quote is None else ui.money(quote.total_minor, ui.config.currency)


def _stars(ui: Screen, offer: PlanOffer) -> int | None:
    """The Stars price, promo applied; None when the plan has none or Stars are off."""
    quote = offer.quote(XTR.code)
    return None if quote is None or not ui.config.stars_enabled else quote.total_minor


def _prices(ui: Screen, offer: PlanOffer) -> str:
    """Every price of the plan, for the list: ``"100 ₽ · 50 ⭐"``."""
    stars = _stars(ui, offer)
    shown = [_price(ui, offer), None if stars is None else ui.money(stars, XTR.code)]
    return " · ".join(price for price in shown if price is not None)


def _terms(ui: Screen, offer: PlanOffer) -> str:
    """The plan screen's text: title, days and the balance; the promo's change when there is one."""
    text = ui.t(
        "user.buy.plan",
        title=offer.plan.title(ui.lang),
        days=offer.days,
        balance=ui.money(ui.user.balance_minor),
    )
    if offer.promo_code is None:
        return text
    base = offer.plan.prices.get(ui.config.money)
    list_price = (
        ui.money(base) if base is not None else ui.money(offer.plan.stars_price or 0, XTR.code)
    )
    return text + "\n\n" + ui.t(
        "user.ux.promo_terms",
        code=offer.promo_code,
        days=offer.days,
        price=_prices(ui, offer),
        base_days=offer.plan.duration_days,
        base_price=list_price,
    )


async def _offer(ui: Screen, code: str) -> PlanOffer | None:
    """The offer of plan ``code`` if it is for sale now; None after telling the user the button is old."""
    for offer in await ui.read(plan_offers):
        if offer.plan.code == code:
            return offer
    await ui.show(ui.t("user.buy.plan_gone"), keyboards.back_to_menu(ui.lang))
    return None


def build_router() -> Router:
    """The plans-and-buying router."""
    router = Router(name="user.buy")
    router.callback_query.middleware(ScreenMiddleware())

    # Every handler here reads the catalogue before it changes anything (the catalogue itself is
    # never changed by a purchase), so each declares it: it runs in the user lookup's unit.
    @router.callback_query(MenuCb.filter(F.action == MenuAction.PLANS), flags=reads(plan_offers))
    async def on_plans(callback: CallbackQuery, ui: Screen) -> None:
        await ui.ack()
        offers = await ui.read(plan_offers)
        options = [
            (
                offer.plan.code,
                ui.t(
                    "user.buy.plan_button",
                    title=offer.plan.title(ui.lang),
                    days=offer.days,
                    price=_prices(ui, offer),
                ),
            )
            for offer in offers
        ]
        text = ui.t(
            "user.buy.plans" if options else "user.buy.no_plans", balance=ui.money(ui.user.balance_minor)
        )
        await ui.show(text, keyboards.plans(ui.lang, options))

    @router.callback_query(PlanCb.filter(), flags=reads(plan_offers))
    async def on_plan(callback: CallbackQuery, callback_data: PlanCb, ui: Screen) -> None:
        await ui.ack()
        offer = await _offer(ui, callback_data.plan)
        if offer is None:
            return
        await ui.show(
            _terms(ui, offer),
            keyboards.pay_methods(
                ui.lang,
                offer.plan.code,
                balance_price=_price(ui, offer),
                stars_price=_stars(ui, offer),
                crypto=ui.cryptopay is not None,
            ),
        )

    @router.callback_query(BuyCb.filter(), flags=reads(plan_offers))
    async def on_buy(callback: CallbackQuery, callback_data: BuyCb, ui: Screen) -> None:
        await ui.ack()
        offer = await _offer(ui, callback_data.plan)
        if offer is None:
            return
        plan = offer.plan
        title = plan.title(ui.lang)
        if callback_data.method is PayMethod.BALANCE:
            try:
                result = await ui.run(
                    buy_plan_from_balance,
                    user_id=ui.user.id,
                    plan_code=plan.code,
                    currency=ui.config.currency,
                    promo_code=None,
                    idempotency_key=f"cb:{callback.id}"[:100],
                    now=ui.clock.now(),
                )
            except InsufficientBalance as short:
                await ui.show(ui.refusal(short), keyboards.insufficient_balance(ui.lang))
                return
            await ui.show(
                ui.t(
                    "user.buy.done",
                    title=title,
                    charged=ui.money(result.charged_minor, result.currency),
                    expires_at=result.expires_at,
                    balance=ui.money(result.balance_minor, result.currency),
                ),
                keyboards.subscription_entry(ui.lang),
            )
        elif callback_data.method is PayMethod.STARS:
            if not ui.config.stars_enabled:
                await ui.show(ui.t("user.pay.stars_disabled"), keyboards.back_to_menu(ui.lang))
                return
            await send_stars_invoice(ui, plan_code=plan.code, title=title)
        else:
            await send_crypto_invoice(
                ui,
                purpose="plan",
                plan_code=plan.code,
                description=ui.t("user.pay.invoice_description", plan=title, days=offer.days),
            )

    return router
