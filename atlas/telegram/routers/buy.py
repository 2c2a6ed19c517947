"""Plans and buying: the plan list, one plan's payment methods, and buying from the balance,
with Telegram Stars or through Crypto Pay (invoice creation only).

A balance purchase is idempotent on the button press (``cb:<callback query id>``): a redelivered
update charges once. Not enough money is a refusal with its own screen and a top-up button.
"""

from __future__ import annotations

import datetime as dt

from aiogram import F, Router
from aiogram.types import CallbackQuery

from atlas.domain import Currency, InsufficientBalance, Plan
from atlas.storage import Tx
from atlas.storage.units import UserView, buy_plan_from_balance, plans_for_sale
from atlas.telegram import keyboards
from atlas.telegram.callbacks import BuyCb, MenuAction, MenuCb, PayMethod, PlanCb
from atlas.telegram.routers._invoices import send_crypto_invoice, send_stars_invoice
from atlas.telegram.routers._screen import Screen, ScreenMiddleware, reads
from atlas.telegram.routers.subscription import format_time


def _price(ui: Screen, plan: Plan) -> str | None:
    minor = plan.prices.get(Currency(ui.config.currency))
    return None if minor is None else ui.money(minor)


async def plans_on_sale(tx: Tx, user: UserView, now: dt.datetime) -> list[Plan]:
    """The screen read of this router: the plans for sale (see :func:`._screen.reads`)."""
    return await plans_for_sale(tx)


async def _plan(ui: Screen, code: str) -> Plan | None:
    """The plan ``code`` if it is for sale now; None after telling the user the button is old."""
    for plan in await ui.read(plans_on_sale):
        if plan.code == code:
            return plan
    await ui.say(ui.t("user.buy.plan_gone"), keyboards.back_to_menu(ui.lang))
    return None


def build_router() -> Router:
    """The plans-and-buying router."""
    router = Router(name="user.buy")
    router.callback_query.middleware(ScreenMiddleware())

    # Every handler here reads the catalogue before it changes anything (the catalogue itself is
    # never changed by a purchase), so each declares it: it runs in the user lookup's unit.
    @router.callback_query(MenuCb.filter(F.action == MenuAction.PLANS), flags=reads(plans_on_sale))
    async def on_plans(callback: CallbackQuery, ui: Screen) -> None:
        await ui.ack()
        plans = await ui.read(plans_on_sale)
        options = [
            (
                plan.code,
                ui.t(
                    "user.buy.plan_button",
                    title=plan.title(ui.lang),
                    days=plan.duration_days,
                    price=_price(ui, plan) or f"{plan.stars_price} ⭐",
                ),
            )
            for plan in plans
        ]
        text = ui.t(
            "user.buy.plans" if options else "user.buy.no_plans", balance=ui.money(ui.user.balance_minor)
        )
        await ui.say(text, keyboards.plans(ui.lang, options))

    @router.callback_query(PlanCb.filter(), flags=reads(plans_on_sale))
    async def on_plan(callback: CallbackQuery, callback_data: PlanCb, ui: Screen) -> None:
        await ui.ack()
        plan = await _plan(ui, callback_data.plan)
        if plan is None:
            return
        price = _price(ui, plan)
        await ui.say(
            ui.t(
                "user.buy.plan",
                title=plan.title(ui.lang),
                days=plan.duration_days,
                balance=ui.money(ui.user.balance_minor),
            ),
            keyboards.pay_methods(
                ui.lang,
                plan.code,
                balance_price=price,
                stars_price=plan.stars_price if ui.config.stars_enabled else None,
                crypto=ui.cryptopay is not None,
            ),
        )

    @router.callback_query(BuyCb.filter(), flags=reads(plans_on_sale))
    async def on_buy(callback: CallbackQuery, callback_data: BuyCb, ui: Screen) -> None:
        await ui.ack()
        plan = await _plan(ui, callback_data.plan)
        if plan is None:
            return
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
                await ui.say(ui.refusal(short), keyboards.insufficient_balance(ui.lang))
                return
            await ui.say(
                ui.t(
                    "user.buy.done",
                    title=title,
                    charged=ui.money(result.charged_minor, result.currency),
                    expires_at=format_time(result.expires_at),
                    balance=ui.money(result.balance_minor, result.currency),
                ),
                keyboards.subscription_entry(ui.lang),
            )
        elif callback_data.method is PayMethod.STARS:
            if not ui.config.stars_enabled:
                await ui.say(ui.t("user.pay.stars_disabled"), keyboards.back_to_menu(ui.lang))
                return
            await send_stars_invoice(ui, plan_code=plan.code, title=title)
        else:
            await send_crypto_invoice(
                ui,
                purpose="plan",
                plan_code=plan.code,
                description=ui.t("user.pay.invoice_description", plan=title, days=plan.duration_days),
            )

    return router
