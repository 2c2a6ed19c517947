"""Admin promo codes: create from a one-line definition, list page by page.

A definition is ``CODE KIND VALUE [option=value ...]``:

* ``KIND``: ``percent`` (VALUE 1..100), ``fixed`` / ``balance_bonus`` (VALUE in minor units of
  ``currency``), ``free_days`` (VALUE days);
* options: ``uses=N`` (total uses), ``per_user=N|none``, ``days=N`` (expires N days from now),
  ``currency=RUB`` (default: the balance currency, for amounts), ``cap=N`` (minor units, percent
  only), ``purpose=plan|topup|any``, ``plans=m1,m3``, ``new_only``.

Every check is the domain's (:class:`~atlas.domain.PromoCode`, ``validate_promo_definition``): a
bad definition is answered with the field, the value and why; nothing is created.
"""

from __future__ import annotations

import datetime as dt

from aiogram import F, Router
from aiogram.filters import Command, CommandObject, StateFilter
from aiogram.fsm.context import FSMContext
from aiogram.types import CallbackQuery, InlineKeyboardButton, InlineKeyboardMarkup, Message

from atlas.clock import Clock
from atlas.domain import Currency, DomainError, InvalidPromoDefinition, PromoCode, PromoKind, PromoPurpose
from atlas.storage import Database
from atlas.storage.units import create_promo_code, list_promo_codes
from atlas.telegram.callbacks import AdminAction, AdminCb, AdminPromoPageCb
from atlas.telegram.config import BotConfig
from atlas.telegram.formatting import format_day, format_money
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

PAGE = 10


def _count(field: str, text: str) -> int:
    if not text.isdigit() or len(text) > 12:
        raise InvalidPromoDefinition(field, text, "must be a whole number")
    return int(text)


def parse_promo_definition(text: str, *, default_currency: str, now: dt.datetime) -> PromoCode:
    """A :class:`PromoCode` from an admin's one-line definition (see the module docstring).

    Raises :class:`~atlas.domain.InvalidPromoDefinition` naming the field and the value.
    """
    parts = (text or "").split()
    if len(parts) < 3:
        raise InvalidPromoDefinition("definition", text or "", "expected CODE KIND VALUE [options]")
    code, kind_text, value_text, *options = parts
    try:
        kind = PromoKind(kind_text.lower())
    except ValueError:
        raise InvalidPromoDefinition(
            "kind", kind_text, "one of percent, fixed, free_days, balance_bonus"
        ) from None
    fields: dict[str, object] = {"code": code, "kind": kind, "value": _count("value", value_text)}
    currency: str | None = default_currency if kind in (PromoKind.FIXED, PromoKind.BALANCE_BONUS) else None
    for option in options:
        name, _, raw = option.partition("=")
        if name == "new_only" and not raw:
            fields["new_users_only"] = True
        elif name == "uses":
            fields["max_uses"] = _count("uses", raw)
        elif name == "per_user":
            fields["per_user_limit"] = None if raw == "none" else _count("per_user", raw)
        elif name == "days":
            fields["expires_at"] = now + dt.timedelta(days=_count("days", raw))
        elif name == "currency":
            currency = raw.upper()
        elif name == "cap":
            fields["cap_minor"] = _count("cap", raw)
            currency = currency or default_currency
        elif name == "purpose":
            try:
                fields["purpose"] = PromoPurpose(raw)
            except ValueError:
                raise InvalidPromoDefinition("purpose", raw, "one of plan, topup, any") from None
        elif name == "plans":
            fields["applies_to"] = frozenset(p for p in raw.split(",") if p)
        else:
            raise InvalidPromoDefinition("option", option, "unknown option")
    if currency is not None:
        try:
            fields["currency"] = Currency.of(currency)
        except (DomainError, ValueError) as exc:
            raise InvalidPromoDefinition("currency", currency, "unknown currency") from exc
    return PromoCode(**fields)  # type: ignore[arg-type]


def describe_promo(promo: PromoCode, tr: Translator, lang: str) -> str:
    """One line about a code for the list; amounts and the expiry day as ``lang`` writes them."""
    uses = f"{promo.uses_so_far}/{promo.max_uses if promo.max_uses is not None else '∞'}"
    expires = format_day(promo.expires_at, lang, tr.formats.timezone) if promo.expires_at else "—"
    if promo.kind in (PromoKind.FIXED, PromoKind.BALANCE_BONUS) and promo.currency is not None:
        value = format_money(promo.value, promo.currency.code, lang)
    elif promo.kind is PromoKind.PERCENT:
        value = f"{promo.value}%"
    else:
        value = str(promo.value)
    return f"{promo.code}: {promo.kind.value} {value}, {uses}, {promo.purpose.value}, {expires}"


def build_promo_router() -> Router:
    """The promo router (guarded by the caller)."""
    router = Router(name="admin_promo")

    async def create(
        message: Message, definition: str, db: Database, clock: Clock, config: BotConfig, tr: Translator
    ) -> bool:
        lang = language(message.from_user, tr)
        assert message.from_user is not None
        try:
            promo = parse_promo_definition(definition, default_currency=config.currency, now=clock.now())
            created = await db.run(
                create_promo_code,
                admin_id=message.from_user.id,
                promo=promo,
                reason="created in the bot",
                now=clock.now(),
            )
        except DomainError as exc:
            await message.answer(parse_mode="HTML", text=refusal(tr, lang, exc))
            return False
        await message.answer(
            parse_mode="HTML",
            text=tr.t(lang, "admin.promo.created", line=describe_promo(created, tr, lang)),
            reply_markup=back_markup(tr, lang),
        )
        return True

    async def show_page(
        message: Message, after: str | None, db: Database, tr: Translator, lang: str, *, in_place: bool
    ) -> None:
        codes = await db.run(list_promo_codes, after=after, limit=PAGE + 1)
        page, more = codes[:PAGE], len(codes) > PAGE
        if not page:
            await show(message, tr.t(lang, "admin.promo.empty"), back_markup(tr, lang), in_place=in_place)
            return
        lines = "\n".join(describe_promo(p, tr, lang) for p in page)
        rows = [back_row(tr, lang)]
        if more:
            rows.insert(
                0,
                [
                    InlineKeyboardButton(
                        text=tr.t(lang, "admin.promo.next"),
                        callback_data=AdminPromoPageCb(after=page[-1].code).pack(),
                    )
                ],
            )
        await show(
            message,
            tr.t(lang, "admin.promo.list", lines=lines),
            InlineKeyboardMarkup(inline_keyboard=rows),
            in_place=in_place,
        )

    @router.message(Command("promo_new"))
    async def promo_new_command(
        message: Message,
        command: CommandObject,
        db: Database,
        clock: Clock,
        config: BotConfig,
        translator: Translator | None = None,
    ) -> None:
        await create(message, command.args or "", db, clock, config, texts(translator))

    @router.callback_query(AdminCb.filter(F.action == AdminAction.PROMO_NEW))
    async def promo_new_button(
        callback: CallbackQuery, state: FSMContext, translator: Translator | None = None
    ) -> None:
        await ask_for_input(callback, state, translator, AdminInput.promo, "admin.promo.ask")

    @router.message(StateFilter(AdminInput.promo), F.text)
    async def promo_text(
        message: Message,
        state: FSMContext,
        db: Database,
        clock: Clock,
        config: BotConfig,
        translator: Translator | None = None,
    ) -> None:
        if await create(message, message.text or "", db, clock, config, texts(translator)):
            await state.clear()

    @router.message(Command("promos"))
    async def promos_command(message: Message, db: Database, translator: Translator | None = None) -> None:
        tr = texts(translator)
        await show_page(message, None, db, tr, language(message.from_user, tr), in_place=False)

    @router.callback_query(AdminCb.filter(F.action == AdminAction.PROMOS))
    async def promos_button(
        callback: CallbackQuery, db: Database, translator: Translator | None = None
    ) -> None:
        tr = texts(translator)
        await callback.answer()
        if isinstance(callback.message, Message):
            await show_page(callback.message, None, db, tr, language(callback.from_user, tr), in_place=True)

    @router.callback_query(AdminPromoPageCb.filter())
    async def promos_page(
        callback: CallbackQuery,
        callback_data: AdminPromoPageCb,
        db: Database,
        translator: Translator | None = None,
    ) -> None:
        tr = texts(translator)
        await callback.answer()
        if isinstance(callback.message, Message):
            await show_page(
                callback.message,
                callback_data.after or None,
                db,
                tr,
                language(callback.from_user, tr),
                in_place=True,
            )

    return router
