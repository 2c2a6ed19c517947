"""The trial: once per user, ever (``start_trial`` refuses a second one with a domain error).

The press is answered with the "my subscription" screen, in place: the links are what the user
needs next. The confirmation itself ("your trial is on until …") is the ``trial.started`` notice
the unit writes to the outbox — said once, not once here and once there.
"""

from __future__ import annotations

from aiogram import F, Router
from aiogram.types import CallbackQuery

from atlas.storage.units import start_trial
from atlas.telegram.callbacks import MenuAction, MenuCb
from atlas.telegram.routers._screen import Screen, ScreenMiddleware
from atlas.telegram.routers.subscription import show_subscription


def build_router() -> Router:
    """The trial router."""
    router = Router(name="user.trial")
    router.callback_query.middleware(ScreenMiddleware())

    @router.callback_query(MenuCb.filter(F.action == MenuAction.TRIAL))
    async def on_trial(callback: CallbackQuery, ui: Screen) -> None:
        view = await ui.run(
            start_trial, user_id=ui.user.id, trial_days=ui.config.trial_days, now=ui.clock.now()
        )
        await ui.ack(ui.t("user.ux.trial_started", days=ui.config.trial_days))
        await show_subscription(ui, view)

    return router
