"""Admin broadcast: choose a segment → type the text → preview → confirm (or cancel).

The text is taken as the admin typed it, formatting included (``message.html_text``: Telegram's
entities turned into HTML, everything else escaped), and stored in a ``draft`` broadcast. The
preview shows it exactly as users will get it plus the number of reachable users in the segment.
Confirm turns the preview message into the live progress message, marks the draft ``confirmed``
and wakes the broadcaster; a second tap on confirm (or on a stale preview) is refused by the unit
(``not_draft``) and changes nothing. Sending itself is the broadcaster's and the outbox sender's.
"""

from __future__ import annotations

from typing import Any

from aiogram import F, Router
from aiogram.filters import Command, StateFilter
from aiogram.fsm.context import FSMContext
from aiogram.types import CallbackQuery, InlineKeyboardButton, InlineKeyboardMarkup, Message

from atlas.clock import Clock
from atlas.domain import DomainError
from atlas.storage import Database
from atlas.storage.units.broadcasts import (
    cancel_broadcast,
    confirm_broadcast,
    create_broadcast,
    segment_size,
)
from atlas.telegram.callbacks import (
    AdminAction,
    AdminBroadcastCb,
    AdminCb,
    AdminSegmentCb,
    BroadcastAction,
    Segment,
)
from atlas.telegram.i18n import Translator
from atlas.telegram.routers.admin_common import (
    AdminInput,
    back_markup,
    back_row,
    language,
    refusal,
    show,
    texts,
)


def segment_keyboard(translator: Translator, lang: str) -> InlineKeyboardMarkup:
    """One button per segment, then back to the admin menu."""
    return InlineKeyboardMarkup(
        inline_keyboard=[
            *(
                [
                    InlineKeyboardButton(
                        text=translator.t(lang, f"admin.broadcast.segment_{segment.value}"),
                        callback_data=AdminSegmentCb(segment=segment).pack(),
                    )
                ]
                for segment in Segment
            ),
            back_row(translator, lang),
        ]
    )


def preview_keyboard(translator: Translator, lang: str, broadcast_id: int) -> InlineKeyboardMarkup:
    """Confirm / cancel under a preview."""
    return InlineKeyboardMarkup(
        inline_keyboard=[
            [
                InlineKeyboardButton(
                    text=translator.t(lang, "admin.broadcast.confirm"),
                    callback_data=AdminBroadcastCb(
                        action=BroadcastAction.CONFIRM, broadcast_id=broadcast_id
                    ).pack(),
                ),
                InlineKeyboardButton(
                    text=translator.t(lang, "admin.broadcast.cancel"),
                    callback_data=AdminBroadcastCb(
                        action=BroadcastAction.CANCEL, broadcast_id=broadcast_id
                    ).pack(),
                ),
            ]
        ]
    )


def build_broadcast_router() -> Router:
    """The broadcast flow's router (guarded by the caller)."""
    router = Router(name="admin_broadcast")

    async def ask_segment(message: Message, lang: str, tr: Translator, *, in_place: bool) -> None:
        await show(
            message,
            tr.t(lang, "admin.broadcast.choose_segment"),
            segment_keyboard(tr, lang),
            in_place=in_place,
        )

    @router.message(Command("broadcast"))
    async def broadcast_command(
        message: Message, state: FSMContext, translator: Translator | None = None
    ) -> None:
        tr = texts(translator)
        await state.clear()
        await ask_segment(message, language(message.from_user, tr), tr, in_place=False)

    @router.callback_query(AdminCb.filter(F.action == AdminAction.BROADCAST))
    async def broadcast_button(
        callback: CallbackQuery, state: FSMContext, translator: Translator | None = None
    ) -> None:
        tr = texts(translator)
        await state.clear()
        await callback.answer()
        if isinstance(callback.message, Message):
            await ask_segment(callback.message, language(callback.from_user, tr), tr, in_place=True)

    @router.callback_query(AdminSegmentCb.filter())
    async def segment_chosen(
        callback: CallbackQuery,
        callback_data: AdminSegmentCb,
        state: FSMContext,
        translator: Translator | None = None,
    ) -> None:
        tr = texts(translator)
        lang = language(callback.from_user, tr)
        await state.set_state(AdminInput.broadcast_text)
        await state.update_data(segment=callback_data.segment.value)
        await callback.answer()
        if isinstance(callback.message, Message):
            segment_name = tr.t(lang, f"admin.broadcast.segment_{callback_data.segment.value}")
            await show(
                callback.message,
                tr.t(lang, "admin.broadcast.enter_text", segment=segment_name),
                back_markup(tr, lang),
                in_place=True,
            )

    @router.message(StateFilter(AdminInput.broadcast_text), F.text)
    async def text_entered(
        message: Message,
        state: FSMContext,
        db: Database,
        clock: Clock,
        translator: Translator | None = None,
    ) -> None:
        tr = texts(translator)
        lang = language(message.from_user, tr)
        data: dict[str, Any] = await state.get_data()
        assert message.from_user is not None
        try:
            draft = await db.run(
                create_broadcast,
                admin_id=message.from_user.id,
                admin_language=lang,
                segment=str(data.get("segment", "")),
                text=message.html_text,
                now=clock.now(),
            )
        except DomainError as exc:
            await message.answer(parse_mode="HTML", text=refusal(tr, lang, exc))
            return
        await state.clear()
        size = await db.run(segment_size, segment=draft.segment, now=clock.now())
        segment_name = tr.t(lang, f"admin.broadcast.segment_{draft.segment}")
        await message.answer(
            parse_mode="HTML",
            text=tr.t(lang, "admin.broadcast.preview_header", segment=segment_name, count=size),
        )
        await message.answer(
            parse_mode="HTML", text=draft.text, reply_markup=preview_keyboard(tr, lang, draft.id)
        )

    @router.callback_query(AdminBroadcastCb.filter())
    async def preview_answered(
        callback: CallbackQuery,
        callback_data: AdminBroadcastCb,
        db: Database,
        clock: Clock,
        translator: Translator | None = None,
        broadcaster: Any = None,
    ) -> None:
        tr = texts(translator)
        lang = language(callback.from_user, tr)
        message = callback.message
        if not isinstance(message, Message):
            await callback.answer(tr.t(lang, "admin.broadcast.stale"))
            return
        admin_id = callback.from_user.id
        try:
            if callback_data.action is BroadcastAction.CANCEL:
                await db.run(
                    cancel_broadcast,
                    broadcast_id=callback_data.broadcast_id,
                    admin_id=admin_id,
                    now=clock.now(),
                )
                await callback.answer()
                await message.edit_text(
                    parse_mode="HTML",
                    text=tr.t(lang, "admin.broadcast.cancelled", id=callback_data.broadcast_id),
                )
                return
            await db.run(
                confirm_broadcast,
                broadcast_id=callback_data.broadcast_id,
                admin_id=admin_id,
                progress_chat_id=message.chat.id,
                progress_message_id=message.message_id,
                now=clock.now(),
            )
        except DomainError as exc:
            await callback.answer(refusal(tr, lang, exc), show_alert=True)
            return
        await callback.answer()
        await message.edit_text(
            parse_mode="HTML", text=tr.t(lang, "admin.broadcast.queued", id=callback_data.broadcast_id)
        )
        if broadcaster is not None:
            broadcaster.wake()

    return router
