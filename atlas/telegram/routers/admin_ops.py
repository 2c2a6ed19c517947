"""Admin operations: stats, latest crash reports, CSV export, maintenance mode.

**CSV export** never runs on the scheduler's hot path as one big step: the rows are read with
keyset-paginated units (:func:`~atlas.storage.units.admin_views.export_users_page`, 1000 rows per
short transaction), each page is rendered to CSV bytes in a worker thread
(``trio.to_thread.run_sync``), and the file is sent with ``sendDocument``. At most
``EXPORT_MAX_ROWS`` rows are exported; the caption says when the file was cut there.

**Maintenance mode** is a row in the ``maintenance`` table (migration 0006), switched by an admin
(audited). :func:`build_maintenance_router` comes right after the payments router (a Stars charge must
never be taken by maintenance) and before everything else: while maintenance is on it answers every
other update from a non-admin with the operator's message (``errors.maintenance``) and nothing else
runs; admins pass through and keep working. The state
is read through a :class:`MaintenanceGate` (the dependency ``maintenance``), which caches it for a
few seconds so that the switch costs no query per update; the admin's own switch updates the cache
at once, other processes see it within the TTL.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import trio
from aiogram import Bot, F, Router
from aiogram.filters import Command, CommandObject, Filter, StateFilter
from aiogram.fsm.context import FSMContext
from aiogram.types import (
    BufferedInputFile,
    CallbackQuery,
    InlineKeyboardButton,
    InlineKeyboardMarkup,
    Message,
    TelegramObject,
    User,
)

from atlas.clock import Clock
from atlas.domain import DomainError
from atlas.storage import Database, StorageError
from atlas.storage.crash_reports import latest_crash_reports
from atlas.storage.tx import Tx
from atlas.storage.units import stats
from atlas.storage.units.admin_views import (
    PAYMENT_EXPORT_HEADER,
    USER_EXPORT_HEADER,
    ExportRow,
    MaintenanceState,
    export_payments_page,
    export_users_page,
    get_maintenance,
    set_maintenance,
)
from atlas.telegram.callbacks import AdminAction, AdminCb, AdminStatsCb, StatsPeriod
from atlas.telegram.formatting import Money
from atlas.telegram.i18n import Translator
from atlas.telegram.routers.admin_common import (
    AdminInput,
    ask_for_input,
    back_markup,
    back_row,
    is_admin,
    language,
    refusal,
    show,
    texts,
)

_log = logging.getLogger("atlas.telegram.routers.admin")

EXPORT_PAGE = 1000
EXPORT_MAX_ROWS = 1_000_000
CRASHES_SHOWN = 5
PERIODS: dict[StatsPeriod, dt.timedelta] = {
    StatsPeriod.DAY: dt.timedelta(days=1),
    StatsPeriod.WEEK: dt.timedelta(days=7),
    StatsPeriod.MONTH: dt.timedelta(days=30),
}

PageUnit = Callable[..., Awaitable[list[ExportRow]]]


# ---------------------------------------------------------------------------------------------
# CSV export (trio side)


def render_csv_chunk(rows: Sequence[ExportRow], header: Sequence[str] | None) -> bytes:
    """CSV bytes of ``rows`` (with ``header`` first when given); datetimes as ISO 8601."""
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    if header is not None:
        writer.writerow(header)
    for row in rows:
        writer.writerow(
            ["" if v is None else v.isoformat() if isinstance(v, dt.datetime) else v for v in row]
        )
    return buffer.getvalue().encode("utf-8")


async def build_csv(
    db: Database, page_unit: PageUnit, header: Sequence[str], *, max_rows: int = EXPORT_MAX_ROWS
) -> tuple[bytes, int, bool]:
    """Page through ``page_unit`` by id and render CSV off the event loop.

    Returns (file bytes, rows written, cut at ``max_rows``). Runs on the trio side; cancellation
    abandons the file (nothing was changed anywhere).
    """
    chunks = [await trio.to_thread.run_sync(render_csv_chunk, [], header)]
    after, written = 0, 0
    while written < max_rows:
        rows = await db.run(page_unit, after_id=after, limit=min(EXPORT_PAGE, max_rows - written))
        if not rows:
            break
        chunks.append(await trio.to_thread.run_sync(render_csv_chunk, rows, None))
        written += len(rows)
        after = int(rows[-1][0])  # type: ignore[call-overload]
        if len(rows) < EXPORT_PAGE:
            break
    cut = written >= max_rows
    return b"".join(chunks), written, cut


# ---------------------------------------------------------------------------------------------
# Maintenance


class MaintenanceGate:
    """The maintenance switch as the bot sees it: read from the table, cached for ``ttl`` seconds.

    Used by aiogram filters, in the dispatcher's trio tasks; the time is ``trio.current_time()``
    (so trio's ``MockClock`` drives the TTL in tests). A failed read keeps the last known state
    (off at first): the bot stays usable rather than locking everyone out on a database hiccup.
    """

    def __init__(self, db: Database, *, ttl: float = 5.0) -> None:
        if not ttl > 0:
            raise ValueError(f"ttl must be positive, got {ttl!r}")
        self._db = db
        self._ttl = ttl
        self._state = MaintenanceState(False, "", None, None)
        self._read_at: float | None = None
        self._refreshing = False

    async def current(self) -> MaintenanceState:
        """The switch, refreshed from the table when older than ``ttl``.

        One refresh at a time: while it runs, other updates get the state as last read (at most one
        TTL old) instead of each reading the table again — under load every update in flight
        would otherwise refresh the moment the cache expired.
        """
        now = trio.current_time()
        fresh = self._read_at is not None and now - self._read_at < self._ttl
        if fresh or self._refreshing:
            return self._state
        self._refreshing = True
        try:
            self._state = await self._db.run(_read_maintenance)
        except StorageError as exc:
            _log.warning("maintenance switch unreadable (%s); keeping enabled=%s", exc, self._state.enabled)
        finally:
            self._refreshing = False
            self._read_at = now
        return self._state

    def remember(self, state: MaintenanceState) -> None:
        """Adopt a state just written by this process (no wait for the TTL)."""
        self._state = state
        self._read_at = trio.current_time()


async def _read_maintenance(tx: Tx) -> MaintenanceState:
    return await get_maintenance(tx)


class MaintenanceOn(Filter):
    """Passes a non-admin's update while maintenance is on; passes the message text to the handler."""

    async def __call__(
        self,
        event: TelegramObject,
        event_from_user: User | None = None,
        admin_ids: frozenset[int] | None = None,
        maintenance: MaintenanceGate | None = None,
    ) -> bool | dict[str, str]:
        """``{"maintenance_message": ...}`` when the update must get the maintenance answer."""
        if maintenance is None or is_admin(event_from_user, admin_ids):
            return False
        state = await maintenance.current()
        return {"maintenance_message": state.message} if state.enabled else False


def build_maintenance_router() -> Router:
    """The router that answers non-admins during maintenance; put it first after the payments router."""
    router = Router(name="maintenance")
    router.message.filter(MaintenanceOn())
    router.callback_query.filter(MaintenanceOn())

    @router.message()
    async def maintenance_message(
        message: Message, maintenance_message: str, translator: Translator | None = None
    ) -> None:
        tr = texts(translator)
        await message.answer(
            parse_mode="HTML",
            text=tr.t(language(message.from_user, tr), "errors.maintenance", message=maintenance_message),
        )

    @router.callback_query()
    async def maintenance_callback(
        callback: CallbackQuery, maintenance_message: str, translator: Translator | None = None
    ) -> None:
        tr = texts(translator)
        text = tr.t(language(callback.from_user, tr), "errors.maintenance", message=maintenance_message)
        await callback.answer(text[:200], show_alert=True)

    return router


# ---------------------------------------------------------------------------------------------
# The router


def _period_keyboard(tr: Translator, lang: str) -> InlineKeyboardMarkup:
    return InlineKeyboardMarkup(
        inline_keyboard=[
            [
                InlineKeyboardButton(
                    text=tr.t(lang, f"admin.stats.period_{p.value}"),
                    callback_data=AdminStatsCb(period=p).pack(),
                )
                for p in StatsPeriod
            ],
            back_row(tr, lang),
        ]
    )


def build_ops_router() -> Router:
    """Stats, crashes, export and maintenance (guarded by the caller)."""
    router = Router(name="admin_ops")

    async def show_stats(
        message: Message,
        period: StatsPeriod,
        db: Database,
        clock: Clock,
        tr: Translator,
        lang: str,
        *,
        in_place: bool,
    ) -> None:
        result = await db.run(stats, now=clock.now(), period=PERIODS[period])
        revenue = (
            ", ".join(
                tr.t(lang, "admin.nav.amount", amount=Money(amount, code))
                for code, amount in sorted(result.revenue.items())
            )
            or "0"
        )
        await show(
            message,
            tr.t(
                lang,
                "admin.stats.text",
                period=tr.t(lang, f"admin.stats.period_{period.value}"),
                users=result.users,
                new_users=result.new_users,
                active=result.active,
                trial=result.trial,
                paid=result.paid,
                banned=result.banned,
                revenue=revenue,
            ),
            _period_keyboard(tr, lang),
            in_place=in_place,
        )

    @router.message(Command("stats"))
    async def stats_command(
        message: Message, db: Database, clock: Clock, translator: Translator | None = None
    ) -> None:
        tr = texts(translator)
        await show_stats(
            message, StatsPeriod.DAY, db, clock, tr, language(message.from_user, tr), in_place=False
        )

    @router.callback_query(AdminCb.filter(F.action == AdminAction.STATS))
    async def stats_button(
        callback: CallbackQuery, db: Database, clock: Clock, translator: Translator | None = None
    ) -> None:
        tr = texts(translator)
        await callback.answer()
        if isinstance(callback.message, Message):
            await show_stats(
                callback.message,
                StatsPeriod.DAY,
                db,
                clock,
                tr,
                language(callback.from_user, tr),
                in_place=True,
            )

    @router.callback_query(AdminStatsCb.filter())
    async def stats_period(
        callback: CallbackQuery,
        callback_data: AdminStatsCb,
        db: Database,
        clock: Clock,
        translator: Translator | None = None,
    ) -> None:
        tr = texts(translator)
        await callback.answer()
        if isinstance(callback.message, Message):
            await show_stats(
                callback.message,
                callback_data.period,
                db,
                clock,
                tr,
                language(callback.from_user, tr),
                in_place=True,
            )

    async def show_crashes(
        message: Message, db: Database, tr: Translator, lang: str, *, in_place: bool
    ) -> None:
        reports = await db.run(latest_crash_reports, limit=CRASHES_SHOWN)
        if not reports:
            await show(message, tr.t(lang, "admin.crashes.none"), back_markup(tr, lang), in_place=in_place)
            return
        lines = "\n\n".join(
            tr.t(
                lang,
                "admin.crashes.item",
                kind=r.kind,
                time=r.occurred_at,
                path=r.path,
                error=f"{r.exc_type or ''}: {(r.message or '')[:300]}",
            )
            for r in reports
        )
        await show(
            message,
            tr.t(lang, "admin.crashes.title", count=len(reports)) + "\n\n" + lines,
            back_markup(tr, lang),
            in_place=in_place,
        )

    @router.message(Command("crashes"))
    async def crashes_command(message: Message, db: Database, translator: Translator | None = None) -> None:
        tr = texts(translator)
        await show_crashes(message, db, tr, language(message.from_user, tr), in_place=False)

    @router.callback_query(AdminCb.filter(F.action == AdminAction.CRASHES))
    async def crashes_button(
        callback: CallbackQuery, db: Database, translator: Translator | None = None
    ) -> None:
        tr = texts(translator)
        await callback.answer()
        if isinstance(callback.message, Message):
            await show_crashes(callback.message, db, tr, language(callback.from_user, tr), in_place=True)

    async def export(
        message: Message,
        what: str,
        db: Database,
        bot: Bot,
        clock: Clock,
        tr: Translator,
        lang: str,
        *,
        in_place: bool,
    ) -> None:
        unit, header = (
            (export_users_page, USER_EXPORT_HEADER)
            if what == "users"
            else (export_payments_page, PAYMENT_EXPORT_HEADER)
        )
        await show(message, tr.t(lang, "admin.export.started"), back_markup(tr, lang), in_place=in_place)
        data, rows, cut = await build_csv(db, unit, header)
        name = f"{what}-{clock.now().strftime('%Y%m%d-%H%M%S')}.csv"
        caption = tr.t(lang, "admin.export.cut" if cut else "admin.export.done", rows=rows)
        await bot.send_document(message.chat.id, BufferedInputFile(data, filename=name), caption=caption)

    for command, action, what in (
        ("export_users", AdminAction.EXPORT_USERS, "users"),
        ("export_payments", AdminAction.EXPORT_PAYMENTS, "payments"),
    ):

        def make(what: str) -> tuple[Any, Any]:
            async def export_command(
                message: Message, db: Database, bot: Bot, clock: Clock, translator: Translator | None = None
            ) -> None:
                tr = texts(translator)
                await export(
                    message, what, db, bot, clock, tr, language(message.from_user, tr), in_place=False
                )

            async def export_button(
                callback: CallbackQuery,
                db: Database,
                bot: Bot,
                clock: Clock,
                translator: Translator | None = None,
            ) -> None:
                tr = texts(translator)
                await callback.answer()
                if isinstance(callback.message, Message):
                    await export(
                        callback.message,
                        what,
                        db,
                        bot,
                        clock,
                        tr,
                        language(callback.from_user, tr),
                        in_place=True,
                    )

            return export_command, export_button

        on_command, on_button = make(what)
        router.message(Command(command))(on_command)
        router.callback_query(AdminCb.filter(F.action == action))(on_button)

    async def switch(
        message: Message,
        admin: User,
        enabled: bool,
        text: str,
        db: Database,
        clock: Clock,
        tr: Translator,
        gate: MaintenanceGate | None,
        *,
        in_place: bool = False,
    ) -> None:
        lang = language(admin, tr)
        try:
            state = await db.run(
                set_maintenance, admin_id=admin.id, enabled=enabled, message=text, now=clock.now()
            )
        except DomainError as exc:
            await message.answer(parse_mode="HTML", text=refusal(tr, lang, exc))
            return
        if gate is not None:
            gate.remember(state)
        await show(
            message,
            tr.t(lang, "admin.maintenance.on" if enabled else "admin.maintenance.off"),
            back_markup(tr, lang),
            in_place=in_place,
        )

    @router.message(Command("maintenance"))
    async def maintenance_command(
        message: Message,
        command: CommandObject,
        db: Database,
        clock: Clock,
        translator: Translator | None = None,
        maintenance: MaintenanceGate | None = None,
    ) -> None:
        tr = texts(translator)
        head, _, rest = (command.args or "").strip().partition(" ")
        if head not in ("on", "off"):
            await message.answer(
                parse_mode="HTML", text=tr.t(language(message.from_user, tr), "admin.maintenance.usage")
            )
            return
        assert message.from_user is not None
        await switch(message, message.from_user, head == "on", rest.strip(), db, clock, tr, maintenance)

    @router.callback_query(AdminCb.filter(F.action == AdminAction.MAINTENANCE))
    async def maintenance_button(
        callback: CallbackQuery, db: Database, translator: Translator | None = None
    ) -> None:
        tr = texts(translator)
        lang = language(callback.from_user, tr)
        await callback.answer()
        if not isinstance(callback.message, Message):
            return
        state = await db.run(_read_maintenance)
        action = AdminAction.MAINTENANCE_OFF if state.enabled else AdminAction.MAINTENANCE_ON
        markup = InlineKeyboardMarkup(
            inline_keyboard=[
                [
                    InlineKeyboardButton(
                        text=tr.t(lang, f"admin.maintenance.button_{'off' if state.enabled else 'on'}"),
                        callback_data=AdminCb(action=action).pack(),
                    )
                ],
                back_row(tr, lang),
            ]
        )
        status = tr.t(
            lang, "admin.maintenance.status_on" if state.enabled else "admin.maintenance.status_off"
        )
        await show(callback.message, status, markup, in_place=True)

    @router.callback_query(AdminCb.filter(F.action == AdminAction.MAINTENANCE_ON))
    async def maintenance_on_button(
        callback: CallbackQuery, state: FSMContext, translator: Translator | None = None
    ) -> None:
        await ask_for_input(callback, state, translator, AdminInput.maintenance, "admin.maintenance.ask")

    @router.message(StateFilter(AdminInput.maintenance), F.text)
    async def maintenance_text(
        message: Message,
        state: FSMContext,
        db: Database,
        clock: Clock,
        translator: Translator | None = None,
        maintenance: MaintenanceGate | None = None,
    ) -> None:
        await state.clear()
        assert message.from_user is not None
        await switch(
            message, message.from_user, True, message.text or "", db, clock, texts(translator), maintenance
        )

    @router.callback_query(AdminCb.filter(F.action == AdminAction.MAINTENANCE_OFF))
    async def maintenance_off_button(
        callback: CallbackQuery,
        db: Database,
        clock: Clock,
        translator: Translator | None = None,
        maintenance: MaintenanceGate | None = None,
    ) -> None:
        await callback.answer()
        if isinstance(callback.message, Message):
            # The button's message is the bot's; the admin is the presser.
            await switch(
                callback.message,
                callback.from_user,
                False,
                "",
                db,
                clock,
                texts(translator),
                maintenance,
                in_place=True,
            )

    return router
