"""Promo codes: the "promo code" button asks for a code (an FSM state), or ``/promo CODE``.

``remember_promo`` checks the code for this user and remembers it for the next purchase; a wrong,
expired or used-up code is its domain error's text, and nothing is remembered.
"""

from __future__ import annotations

from aiogram import F, Router
from aiogram.filters import Command, CommandObject, StateFilter
from aiogram.fsm.context import FSMContext
from aiogram.fsm.state import State, StatesGroup
from aiogram.types import CallbackQuery, Message

from atlas.domain import PromoCode
from atlas.storage.units import remember_promo
from atlas.telegram import keyboards
from atlas.telegram.callbacks import MenuAction, MenuCb
from atlas.telegram.routers._screen import Screen, ScreenMiddleware

MAX_TYPED = 64
"""Longer text is not a promo code; the unit would say so too, but not worth a transaction."""


class PromoStates(StatesGroup):
    """Waiting for the user to type a code."""

    waiting = State()


async def _remember(ui: Screen, typed: str) -> None:
    promo: PromoCode = await ui.run(
        remember_promo,
        user_id=ui.user.id,
        code=typed[:MAX_TYPED],
        ttl=ui.config.promo_ttl,
        now=ui.clock.now(),
    )
    await ui.show(
        ui.t("user.promo.accepted", code=promo.code),
        keyboards.main_menu(ui.lang, trial_available=ui.user.trial_used_at is None),
    )


def build_router() -> Router:
    """The promo router."""
    router = Router(name="user.promo")
    router.message.middleware(ScreenMiddleware(keep_state=True))
    router.callback_query.middleware(ScreenMiddleware(keep_state=True))

    @router.callback_query(MenuCb.filter(F.action == MenuAction.PROMO))
    async def on_promo_button(callback: CallbackQuery, ui: Screen, state: FSMContext) -> None:
        await ui.ack()
        await state.set_state(PromoStates.waiting)
        await ui.show(ui.t("user.promo.ask"), keyboards.back_to_menu(ui.lang))

    @router.message(Command("promo"))
    async def on_promo_command(
        message: Message, command: CommandObject, ui: Screen, state: FSMContext
    ) -> None:
        await state.clear()
        if not command.args or not command.args.strip():
            await state.set_state(PromoStates.waiting)
            await ui.show(ui.t("user.promo.ask"), keyboards.back_to_menu(ui.lang))
            return
        await _remember(ui, command.args.strip())

    # Commands typed while we wait are commands, not codes: they go on to their own routers.
    @router.message(StateFilter(PromoStates.waiting), F.text, ~F.text.startswith("/"))
    async def on_typed_code(message: Message, ui: Screen, state: FSMContext) -> None:
        await state.clear()  # one attempt per prompt: a refusal must not trap the user in the state
        await _remember(ui, (message.text or "").strip())

    return router
