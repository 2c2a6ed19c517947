"""Admin: support tickets — the open ones, newest first, page by page, and one ticket's messages.

``/tickets`` or the menu's "🆘 Support tickets": up to :data:`PAGE` open tickets (a button each),
"Older ▶️" for the next page (keyset on the ticket id: ``id < last shown``, no OFFSET), and a way
back to the admin menu. A ticket's screen shows its latest :data:`MESSAGES` messages, each clipped
to :data:`CLIP` characters so the screen fits one Telegram message, and a way back to the list.
Guarded by the caller (:func:`atlas.telegram.routers.admin.guard`).
"""

from __future__ import annotations

import datetime as dt
import html

from aiogram import F, Router
from aiogram.filters import Command
from aiogram.types import CallbackQuery, InlineKeyboardButton, InlineKeyboardMarkup, Message

from atlas.storage import Database
from atlas.storage.units.support import Author, TicketSummary, list_open_tickets, ticket_with_messages
from atlas.telegram.callbacks import AdminAction, AdminCb, AdminTicketCb, AdminTicketPageCb
from atlas.telegram.i18n import Markup, Translator
from atlas.telegram.routers.admin_common import language, show, texts

PAGE = 10
MESSAGES = 10
CLIP = 300


def _when(value: dt.datetime) -> str:
    return value.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")


def _clip(text: str) -> str:
    return text if len(text) <= CLIP else text[: CLIP - 1] + "…"


def _name(ticket: TicketSummary) -> str:
    return ticket.first_name or str(ticket.user_id)


def _button(text: str, data: str) -> list[InlineKeyboardButton]:
    return [InlineKeyboardButton(text=text, callback_data=data)]


async def show_page(
    message: Message, before: int | None, db: Database, tr: Translator, lang: str, *, in_place: bool
) -> None:
    """Show one page of open tickets with ids below ``before`` (None: the newest); ``in_place``
    edits the pressed ``message`` (see :func:`~atlas.telegram.routers.admin_common.show`)."""
    tickets = await db.run(list_open_tickets, before=before, limit=PAGE + 1)
    page, more = tickets[:PAGE], len(tickets) > PAGE
    rows = [
        _button(
            tr.t(
                lang,
                "support.admin.line",
                ticket=t.id,
                name=_name(t),
                messages=t.messages,
                updated=_when(t.updated_at),
            ),
            AdminTicketCb(ticket_id=t.id).pack(),
        )
        for t in page
    ]
    if more:
        rows.append(_button(tr.t(lang, "support.admin.next"), AdminTicketPageCb(before=page[-1].id).pack()))
    rows.append(_button(tr.t(lang, "support.admin.back_menu"), AdminCb(action=AdminAction.MENU).pack()))
    title = tr.t(lang, "support.admin.title" if page else "support.admin.empty")
    await show(message, title, InlineKeyboardMarkup(inline_keyboard=rows), in_place=in_place)


async def show_ticket(message: Message, ticket_id: int, db: Database, tr: Translator, lang: str) -> None:
    """Show one ticket with its latest messages, oldest first, in place of the pressed ``message``."""
    view = await db.run(ticket_with_messages, ticket_id=ticket_id, limit=MESSAGES)
    back = InlineKeyboardMarkup(
        inline_keyboard=[_button(tr.t(lang, "support.admin.back_list"), AdminTicketPageCb().pack())]
    )
    if view is None:
        await show(message, tr.t(lang, "support.admin.not_found"), back, in_place=True)
        return
    lines: list[str] = []
    if view.earlier:
        lines.append(tr.t(lang, "support.admin.earlier", count=view.earlier))
    for m in view.messages:
        key = "support.admin.from_user" if m.author is Author.USER else "support.admin.from_agent"
        header = tr.t(lang, key, name=m.author_name or str(m.author_id), time=_when(m.created_at))
        lines.append(f"{header}\n{html.escape(_clip(m.text), quote=False)}")
    s = view.summary
    text = tr.t(
        lang,
        "support.admin.ticket",
        ticket=s.id,
        state=tr.t(lang, f"support.admin.state_{view.status}"),
        name=_name(s),
        username=f"@{s.username}" if s.username else "",
        user_id=s.user_id,
        created=_when(s.created_at),
        # Each line is rendered HTML already (locale texts, escaped user text): not escaped again.
        messages=Markup("\n\n".join(lines)),
    )
    await show(message, text, back, in_place=True)


def build_tickets_router() -> Router:
    """The support tickets router (guarded by the caller)."""
    router = Router(name="admin_support")

    @router.message(Command("tickets"))
    async def tickets_command(message: Message, db: Database, translator: Translator | None = None) -> None:
        tr = texts(translator)
        await show_page(message, None, db, tr, language(message.from_user, tr), in_place=False)

    @router.callback_query(AdminCb.filter(F.action == AdminAction.TICKETS))
    async def tickets_button(
        callback: CallbackQuery, db: Database, translator: Translator | None = None
    ) -> None:
        tr = texts(translator)
        await callback.answer()
        if isinstance(callback.message, Message):
            await show_page(callback.message, None, db, tr, language(callback.from_user, tr), in_place=True)

    @router.callback_query(AdminTicketPageCb.filter())
    async def tickets_page(
        callback: CallbackQuery,
        callback_data: AdminTicketPageCb,
        db: Database,
        translator: Translator | None = None,
    ) -> None:
        tr = texts(translator)
        await callback.answer()
        if isinstance(callback.message, Message):
            before = callback_data.before or None
            await show_page(callback.message, before, db, tr, language(callback.from_user, tr), in_place=True)

    @router.callback_query(AdminTicketCb.filter())
    async def ticket_screen(
        callback: CallbackQuery,
        callback_data: AdminTicketCb,
        db: Database,
        translator: Translator | None = None,
    ) -> None:
        tr = texts(translator)
        await callback.answer()
        if isinstance(callback.message, Message):
            await show_ticket(
                callback.message, callback_data.ticket_id, db, tr, language(callback.from_user, tr)
            )

    return router
