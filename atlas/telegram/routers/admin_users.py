"""Admin user lookup and actions: the user card, grant days, adjust balance, ban and unban.

Lookup takes a user id or a @username (``/find 123``, ``/find @name``, or the menu's button and
then the text). The card shows balance, subscription and flags, with action buttons.

Every action needs a reason, and the units refuse without one (``admin.invalid_input``, nothing
changed, nothing audited):

* grant days: ``<days> <reason>`` (negative days take time away);
* adjust balance: ``<amount> <reason>``, the amount in the balance currency with a sign
  (``+150``, ``-20.50``); idempotent per admin message (the key is the chat and message id, so a
  retried update cannot apply twice);
* ban / unban: ``<reason>``.

The same actions exist as commands for operators who prefer typing:
``/grant <user> <days> <reason>``, ``/adjust <user> <amount> <reason>``, ``/ban <user> <reason>``,
``/unban <user> <reason>``.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from aiogram import F, Router
from aiogram.filters import Command, CommandObject, StateFilter
from aiogram.fsm.context import FSMContext
from aiogram.types import CallbackQuery, InlineKeyboardButton, InlineKeyboardMarkup, Message

from atlas.clock import Clock
from atlas.domain import DomainError, parse_amount
from atlas.storage import Database
from atlas.storage.units import InvalidAdminInput, admin_adjust_balance, admin_grant_days, admin_set_banned
from atlas.storage.units.admin_views import UserCard, find_user, parse_user_query, user_card
from atlas.telegram.callbacks import AdminAction, AdminCb, AdminUserCb, UserAction
from atlas.telegram.config import BotConfig
from atlas.telegram.formatting import Money
from atlas.telegram.i18n import Translator
from atlas.telegram.routers.admin_common import (
    AdminInput,
    ask_for_input,
    back_markup,
    back_row,
    language,
    refusal,
    show,
    texts,
)

_PROMPTS: dict[UserAction, tuple[Any, str]] = {
    UserAction.GRANT: (AdminInput.grant, "admin.user.ask_grant"),
    UserAction.ADJUST: (AdminInput.adjust, "admin.user.ask_adjust"),
    UserAction.BAN: (AdminInput.ban, "admin.user.ask_ban"),
    UserAction.UNBAN: (AdminInput.unban, "admin.user.ask_unban"),
}


def _stamp(value: dt.datetime | None) -> dt.datetime | str:
    # A datetime is formatted by the translator, for the admin's language and the operator's zone.
    return "—" if value is None else value


def card_text(tr: Translator, lang: str, card: UserCard, currency: str) -> str:
    """The user card's text."""
    user, sub = card.user, card.subscription
    if sub is None:
        subscription = tr.t(lang, "admin.user.no_subscription")
    else:
        subscription = tr.t(
            lang,
            "admin.user.subscription",
            kind=sub.kind.value,
            status=sub.status.value,
            expires=_stamp(sub.expires_at),
            days=sub.days_left,
            auto_renew="on" if sub.auto_renew else "off",
        )
    flags = [
        flag
        for flag, on in (
            ("banned", user.banned_at is not None),
            ("bot_blocked", user.bot_blocked_at is not None),
            ("trial_used", user.trial_used_at is not None),
            ("paid", user.first_paid_at is not None),
        )
        if on
    ]
    return tr.t(
        lang,
        "admin.user.card",
        id=user.id,
        username=f"@{user.username}" if user.username else "—",
        name=user.first_name or "—",
        language=user.language,
        balance=Money(user.balance_minor, currency),
        subscription=subscription,
        flags=", ".join(flags) or "—",
        created=_stamp(user.created_at),
    )


def card_keyboard(tr: Translator, lang: str, card: UserCard) -> InlineKeyboardMarkup:
    """Action buttons under a card."""

    def button(key: str, action: UserAction) -> InlineKeyboardButton:
        return InlineKeyboardButton(
            text=tr.t(lang, f"admin.user.{key}"),
            callback_data=AdminUserCb(action=action, user_id=card.user.id).pack(),
        )

    ban = button("unban", UserAction.UNBAN) if card.user.banned_at else button("ban", UserAction.BAN)
    return InlineKeyboardMarkup(
        inline_keyboard=[
            [button("grant", UserAction.GRANT), button("adjust", UserAction.ADJUST)],
            [ban, button("refresh", UserAction.REFRESH)],
            back_row(tr, lang),
        ]
    )


async def show_card(
    message: Message,
    db: Database,
    clock: Clock,
    config: BotConfig,
    tr: Translator,
    lang: str,
    user_id: int,
    *,
    in_place: bool = False,
) -> None:
    """Show the card of ``user_id`` (or "not found"); ``in_place`` edits the pressed ``message``."""
    card = await db.run(user_card, user_id=user_id, now=clock.now())
    if card is None:
        await message.answer(parse_mode="HTML", text=tr.t(lang, "admin.user.not_found", query=str(user_id)))
        return
    text = card_text(tr, lang, card, config.currency)
    await show(message, text, card_keyboard(tr, lang, card), in_place=in_place)


def _split(text: str | None) -> tuple[str, str]:
    head, _, rest = (text or "").strip().partition(" ")
    return head, rest.strip()


def build_users_router() -> Router:
    """The lookup and user-action router (guarded by the caller)."""
    router = Router(name="admin_users")

    async def lookup(
        message: Message, query_text: str, db: Database, clock: Clock, config: BotConfig, tr: Translator
    ) -> None:
        lang = language(message.from_user, tr)
        try:
            query = parse_user_query(query_text)
        except DomainError as exc:
            await message.answer(parse_mode="HTML", text=refusal(tr, lang, exc))
            return
        found = await db.run(find_user, query=query)
        if found is None:
            await message.answer(parse_mode="HTML", text=tr.t(lang, "admin.user.not_found", query=str(query)))
            return
        await show_card(message, db, clock, config, tr, lang, found.id)

    async def act(
        message: Message,
        action: UserAction,
        user_id: int,
        args: str,
        db: Database,
        clock: Clock,
        config: BotConfig,
        tr: Translator,
    ) -> bool:
        """Do ``action`` with the admin's ``args``; answer; True when it was done."""
        lang = language(message.from_user, tr)
        assert message.from_user is not None
        admin_id = message.from_user.id
        try:
            if action is UserAction.GRANT:
                days_text, reason = _split(args)
                if not days_text.lstrip("+-").isdigit():
                    raise InvalidAdminInput("days", days_text, "not_a_number")
                change = await db.run(
                    admin_grant_days,
                    admin_id=admin_id,
                    user_id=user_id,
                    days=int(days_text),
                    reason=reason,
                    now=clock.now(),
                )
                await message.answer(
                    parse_mode="HTML",
                    text=tr.t(lang, "admin.user.granted", id=user_id, expires=_stamp(change.expires_at)),
                )
            elif action is UserAction.ADJUST:
                amount_text, reason = _split(args)
                amount = parse_amount(
                    amount_text.lstrip("+"), exponent=config.money.exponent, allow_negative=True
                )
                balance = await db.run(
                    admin_adjust_balance,
                    admin_id=admin_id,
                    user_id=user_id,
                    amount_minor=amount,
                    reason=reason,
                    idempotency_key=f"msg:{message.chat.id}:{message.message_id}",
                    now=clock.now(),
                )
                shown = Money(balance.balance_minor, config.currency)
                await message.answer(
                    parse_mode="HTML", text=tr.t(lang, "admin.user.adjusted", id=user_id, balance=shown)
                )
            else:
                banned = action is UserAction.BAN
                await db.run(
                    admin_set_banned,
                    admin_id=admin_id,
                    user_id=user_id,
                    banned=banned,
                    reason=args.strip(),
                    now=clock.now(),
                )
                await message.answer(
                    parse_mode="HTML",
                    text=tr.t(lang, "admin.user.banned" if banned else "admin.user.unbanned", id=user_id),
                )
        except DomainError as exc:
            await message.answer(parse_mode="HTML", text=refusal(tr, lang, exc, config.currency))
            return False
        return True

    @router.message(Command("find"))
    async def find_command(
        message: Message,
        command: CommandObject,
        db: Database,
        clock: Clock,
        config: BotConfig,
        translator: Translator | None = None,
    ) -> None:
        await lookup(message, command.args or "", db, clock, config, texts(translator))

    @router.callback_query(AdminCb.filter(F.action == AdminAction.LOOKUP))
    async def lookup_button(
        callback: CallbackQuery, state: FSMContext, translator: Translator | None = None
    ) -> None:
        await ask_for_input(callback, state, translator, AdminInput.lookup, "admin.user.ask_query")

    @router.message(StateFilter(AdminInput.lookup), F.text)
    async def lookup_text(
        message: Message,
        state: FSMContext,
        db: Database,
        clock: Clock,
        config: BotConfig,
        translator: Translator | None = None,
    ) -> None:
        await state.clear()
        await lookup(message, message.text or "", db, clock, config, texts(translator))

    @router.callback_query(AdminUserCb.filter())
    async def card_button(
        callback: CallbackQuery,
        callback_data: AdminUserCb,
        state: FSMContext,
        db: Database,
        clock: Clock,
        config: BotConfig,
        translator: Translator | None = None,
    ) -> None:
        tr = texts(translator)
        lang = language(callback.from_user, tr)
        await callback.answer()
        if not isinstance(callback.message, Message):
            return
        if callback_data.action is UserAction.REFRESH:
            await show_card(
                callback.message, db, clock, config, tr, lang, callback_data.user_id, in_place=True
            )
            return
        input_state, prompt = _PROMPTS[callback_data.action]
        await state.set_state(input_state)
        await state.update_data(user_id=callback_data.user_id, action=callback_data.action.value)
        await show(
            callback.message,
            tr.t(lang, prompt, id=callback_data.user_id),
            back_markup(tr, lang),
            in_place=True,
        )

    @router.message(
        StateFilter(AdminInput.grant, AdminInput.adjust, AdminInput.ban, AdminInput.unban), F.text
    )
    async def action_text(
        message: Message,
        state: FSMContext,
        db: Database,
        clock: Clock,
        config: BotConfig,
        translator: Translator | None = None,
    ) -> None:
        tr = texts(translator)
        data = await state.get_data()
        action, user_id = UserAction(data["action"]), int(data["user_id"])
        if await act(message, action, user_id, message.text or "", db, clock, config, tr):
            await state.clear()
            await show_card(message, db, clock, config, tr, language(message.from_user, tr), user_id)

    for name, action in (
        ("grant", UserAction.GRANT),
        ("adjust", UserAction.ADJUST),
        ("ban", UserAction.BAN),
        ("unban", UserAction.UNBAN),
    ):

        def make(action: UserAction) -> Any:
            async def command_handler(
                message: Message,
                command: CommandObject,
                db: Database,
                clock: Clock,
                config: BotConfig,
                translator: Translator | None = None,
            ) -> None:
                tr = texts(translator)
                target, args = _split(command.args)
                if not target.isdigit():
                    await message.answer(
                        parse_mode="HTML",
                        text=tr.t(language(message.from_user, tr), f"admin.user.usage_{action.value}"),
                    )
                    return
                await act(message, action, int(target), args, db, clock, config, tr)

            return command_handler

        router.message(Command(name))(make(action))

    return router
