"""The trial: once per user, ever (``start_trial`` refuses a second one with a domain error)."""

from __future__ import annotations

from aiogram import F, Router
from aiogram.types import CallbackQuery

from atlas.storage.units import start_trial
from atlas.telegram import keyboards
from atlas.telegram.callbacks import MenuAction, MenuCb
from atlas.telegram.routers._screen import Screen, ScreenMiddleware
from atlas.telegram.routers.subscription import format_time


def build_router() -> Router:
    """The trial router."""
    router = Router(name="user.trial")
    router.callback_query.middleware(ScreenMiddleware())

    @router.callback_query(MenuCb.filter(F.action == MenuAction.TRIAL))
    async def on_trial(callback: CallbackQuery, ui: Screen) -> None:
        await ui.ack()
        view = await ui.run(
            start_trial, user_id=ui.user.id, trial_days=ui.config.trial_days, now=ui.clock.now()
        )
        await ui.say(
            ui.t("user.trial.started", days=ui.config.trial_days, expires_at=format_time(view.expires_at)),
            keyboards.subscription_entry(ui.lang),
        )

    return router
