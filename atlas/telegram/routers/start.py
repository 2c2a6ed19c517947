"""``/start``: registration (with a referral deep link ``ref_<code>``), a greeting, the menu.

``/start`` is idempotent: a returning user is greeted again and their names refreshed; a referral
payload only counts on the very first ``/start`` (``register_user`` decides).
"""

from __future__ import annotations

from aiogram import Router
from aiogram.filters import CommandStart
from aiogram.types import Message

from atlas.telegram.routers._screen import Screen, ScreenMiddleware
from atlas.telegram.routers.menu import show_menu


def build_router() -> Router:
    """The ``/start`` router; its middleware registers the user with the deep-link payload."""
    router = Router(name="user.start")
    router.message.middleware(ScreenMiddleware(register=True))

    @router.message(CommandStart())
    async def on_start(message: Message, ui: Screen) -> None:
        await ui.show(ui.t("user.start.greeting", name=ui.user.first_name or ""))
        await show_menu(ui)

    return router
