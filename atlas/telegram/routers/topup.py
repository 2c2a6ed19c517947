"""Balance top-up through Crypto Pay (Stars cannot top up a fiat balance): amount buttons, then an
invoice. Amounts come from the configuration; a forged amount is checked by the unit's limits
(``InvalidAmount`` below ``ATLAS_MIN_TOPUP``, ``TooManyInvoices`` past the hourly limit) and
answered with its text.
"""

from __future__ import annotations

from aiogram import F, Router
from aiogram.types import CallbackQuery

from atlas.telegram import keyboards
from atlas.telegram.callbacks import MenuAction, MenuCb, TopupCb
from atlas.telegram.routers._invoices import send_crypto_invoice
from atlas.telegram.routers._screen import Screen, ScreenMiddleware


def build_router() -> Router:
    """The top-up router."""
    router = Router(name="user.topup")
    router.callback_query.middleware(ScreenMiddleware())

    @router.callback_query(MenuCb.filter(F.action == MenuAction.TOPUP))
    async def on_topup(callback: CallbackQuery, ui: Screen) -> None:
        await ui.ack()
        if ui.cryptopay is None:
            await ui.show(ui.t("user.pay.crypto_disabled"), keyboards.back_to_menu(ui.lang))
            return
        options = [(amount, ui.money(amount)) for amount in ui.config.topup_buttons]
        await ui.show(
            ui.t("user.topup.choose", balance=ui.money(ui.user.balance_minor)),
            keyboards.topup_amounts(ui.lang, options),
        )

    @router.callback_query(TopupCb.filter())
    async def on_amount(callback: CallbackQuery, callback_data: TopupCb, ui: Screen) -> None:
        await ui.ack()
        await send_crypto_invoice(
            ui,
            purpose="topup",
            amount_minor=callback_data.amount_minor,
            description=ui.t("user.topup.invoice_description", amount=ui.money(callback_data.amount_minor)),
        )

    return router
