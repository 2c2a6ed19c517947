"""The admin screens: one router tree, reachable only by configured admin ids.

``build_admin_router()`` returns a parent router holding one sub-router per admin feature:

* :mod:`.admin` (here): ``/admin`` and the menu;
* :mod:`.admin_broadcast`: segment → text → preview → confirm (the broadcaster does the rest);
* :mod:`.admin_users`: lookup by id or @username, the user card, grant days, adjust balance,
  ban/unban (each with a reason, audited by the units);
* :mod:`.admin_promo`: create and list promo codes;
* :mod:`.admin_ops`: stats, latest crash reports, CSV export, maintenance mode;
* :mod:`.admin_support`: open support tickets, newest first, and a ticket's messages.

Every message and callback observer of every sub-router carries :class:`AdminFilter`, so for a
non-admin nothing here matches and the update goes on to the user screens and the fallback, which
answer it as any unknown command or outdated button (see :mod:`.admin_common`).

Where it goes in the ordered router list: after the maintenance router
(:func:`~atlas.telegram.routers.admin_ops.build_maintenance_router`, first: it answers every
non-admin update while maintenance is on) and before the user screens (its filters are narrower;
an admin's text typed in an admin input state must not be taken for a promo code, say).

Dependencies the handlers take by name: ``db`` (:class:`~atlas.storage.Database`), ``clock``,
``admin_ids`` (``frozenset[int]``), ``config`` (:class:`~atlas.telegram.config.BotConfig`, for the
balance currency), and optionally ``translator``, ``broadcaster`` (woken after a confirm),
``maintenance`` (:class:`~atlas.telegram.routers.admin_ops.MaintenanceGate`).
"""

from __future__ import annotations

from aiogram import F, Router
from aiogram.filters import Command
from aiogram.fsm.context import FSMContext
from aiogram.types import CallbackQuery, InlineKeyboardButton, InlineKeyboardMarkup, Message

from atlas.telegram.callbacks import AdminAction, AdminCb, MenuAction, MenuCb
from atlas.telegram.i18n import Translator
from atlas.telegram.routers.admin_broadcast import build_broadcast_router
from atlas.telegram.routers.admin_common import AdminFilter, language, show, texts
from atlas.telegram.routers.admin_ops import build_ops_router
from atlas.telegram.routers.admin_promo import build_promo_router
from atlas.telegram.routers.admin_support import build_tickets_router
from atlas.telegram.routers.admin_users import build_users_router

ADMIN_COMMANDS: tuple[str, ...] = (
    "admin", "stats", "crashes", "find", "grant", "adjust", "ban", "unban", "promo_new", "promos",
    "export_users", "export_payments", "maintenance", "broadcast", "tickets",
)  # fmt: skip
"""Every command an admin router answers (the non-admin test tries each)."""


def guard(router: Router) -> Router:
    """Put :class:`AdminFilter` on every observer an update can reach this router through."""
    router.message.filter(AdminFilter())
    router.callback_query.filter(AdminFilter())
    return router


def menu_keyboard(translator: Translator, lang: str) -> InlineKeyboardMarkup:
    """The admin menu's buttons."""

    def button(key: str, action: AdminAction) -> InlineKeyboardButton:
        return InlineKeyboardButton(
            text=translator.t(lang, f"admin.menu.{key}"), callback_data=AdminCb(action=action).pack()
        )

    return InlineKeyboardMarkup(
        inline_keyboard=[
            [button("stats", AdminAction.STATS), button("broadcast", AdminAction.BROADCAST)],
            [button("lookup", AdminAction.LOOKUP), button("promos", AdminAction.PROMOS)],
            [button("promo_new", AdminAction.PROMO_NEW), button("crashes", AdminAction.CRASHES)],
            [
                button("export_users", AdminAction.EXPORT_USERS),
                button("export_payments", AdminAction.EXPORT_PAYMENTS),
            ],
            [
                button("maintenance", AdminAction.MAINTENANCE),
                # The way out: the user menu (the admin is a user of the bot too).
                InlineKeyboardButton(
                    text=translator.t(lang, "admin.nav.user_menu"),
                    callback_data=MenuCb(action=MenuAction.MENU).pack(),
                ),
            ],
            [
                InlineKeyboardButton(
                    text=translator.t(lang, "support.admin.menu"),
                    callback_data=AdminCb(action=AdminAction.TICKETS).pack(),
                )
            ],
        ]
    )


def _build_menu_router() -> Router:
    router = Router(name="admin_menu")

    @router.message(Command("admin"))
    async def admin_menu(message: Message, state: FSMContext, translator: Translator | None = None) -> None:
        tr = texts(translator)
        lang = language(message.from_user, tr)
        await state.clear()
        await message.answer(
            parse_mode="HTML", text=tr.t(lang, "admin.menu.title"), reply_markup=menu_keyboard(tr, lang)
        )

    @router.callback_query(AdminCb.filter(F.action == AdminAction.MENU))
    async def admin_menu_button(
        callback: CallbackQuery, state: FSMContext, translator: Translator | None = None
    ) -> None:
        tr = texts(translator)
        lang = language(callback.from_user, tr)
        await state.clear()
        await callback.answer()
        if isinstance(callback.message, Message):
            title = tr.t(lang, "admin.menu.title")
            await show(callback.message, title, menu_keyboard(tr, lang), in_place=True)

    return router


def build_admin_router() -> Router:
    """The admin router tree (a fresh one per call: aiogram attaches a router to one parent only)."""
    root = Router(name="admin")
    for child in (
        _build_menu_router(),
        build_broadcast_router(),
        build_users_router(),
        build_promo_router(),
        build_ops_router(),
        build_tickets_router(),
    ):
        root.include_router(guard(child))
    return guard(root)
