"""What every admin router shares: the admin filter, refusals, texts, input states.

**Who is an admin.** The dependency ``admin_ids`` (a ``frozenset[int]`` of Telegram user ids, from
the runtime's settings) is the whole truth; :class:`AdminFilter` checks ``event_from_user.id``
against it (Telegram authenticates that field; callback data and text are never trusted for it).
The filter sits on every message and callback observer of every admin router, so a non-admin's
update is *not handled* there: it falls through to the next routers exactly like an unknown command
or a stale button, and gets the same answer. No admin text, no "access denied" that would tell a
prober the command exists.

**Reaching the database.** Handlers run in trio tasks (inside aiogram, fed by
:mod:`atlas.telegram.dispatch`) and await ``db.run`` directly. A
:class:`~atlas.domain.DomainError` a unit raises is an admin's mistake: :func:`refusal` turns it
into a text and nothing has changed.
"""

from __future__ import annotations

from typing import ParamSpec, TypeVar

from aiogram.filters import Filter
from aiogram.fsm.context import FSMContext
from aiogram.fsm.state import State, StatesGroup
from aiogram.types import (
    CallbackQuery,
    InlineKeyboardButton,
    InlineKeyboardMarkup,
    Message,
    TelegramObject,
    User,
)

from atlas.domain import DomainError, InsufficientBalance
from atlas.telegram.callbacks import AdminAction, AdminCb
from atlas.telegram.formatting import Money
from atlas.telegram.i18n import Translator, bundled
from atlas.telegram.in_place import show_text

P = ParamSpec("P")
T = TypeVar("T")


class AdminFilter(Filter):
    """Passes only updates from a user whose id is in the ``admin_ids`` dependency.

    Without an ``admin_ids`` dependency nobody is an admin (fail closed).
    """

    async def __call__(
        self,
        event: TelegramObject,
        event_from_user: User | None = None,
        admin_ids: frozenset[int] | None = None,
    ) -> bool:
        """True for an admin's update."""
        return event_from_user is not None and admin_ids is not None and event_from_user.id in admin_ids


def is_admin(user: User | None, admin_ids: frozenset[int] | None) -> bool:
    """The same check as :class:`AdminFilter`, for code that is not a filter."""
    return user is not None and admin_ids is not None and user.id in admin_ids


class AdminInput(StatesGroup):
    """FSM states: what the admin's next text message means."""

    broadcast_text = State()
    lookup = State()
    grant = State()
    adjust = State()
    ban = State()
    unban = State()
    promo = State()
    maintenance = State()


async def show(
    message: Message, text: str, markup: InlineKeyboardMarkup | None = None, *, in_place: bool
) -> None:
    """Answer with an admin screen: ``in_place`` (a button press on the bot's ``message``) edits that
    message (see :mod:`atlas.telegram.in_place`); otherwise (a typed command, ``message`` is the
    admin's) a new message is sent to its chat."""
    bot = message.bot
    if bot is None:
        raise RuntimeError("an admin screen needs a message bound to its Bot")
    await show_text(bot, message.chat.id, text, markup, replace=message if in_place else None)


def back_row(translator: Translator, lang: str) -> list[InlineKeyboardButton]:
    """The "back to the admin menu" row every admin screen ends with."""
    return [
        InlineKeyboardButton(
            text=translator.t(lang, "admin.nav.back"), callback_data=AdminCb(action=AdminAction.MENU).pack()
        )
    ]


def back_markup(translator: Translator, lang: str) -> InlineKeyboardMarkup:
    """Only the "back to the admin menu" button."""
    return InlineKeyboardMarkup(inline_keyboard=[back_row(translator, lang)])


async def ask_for_input(
    callback: CallbackQuery,
    state: FSMContext,
    translator: Translator | None,
    awaiting: State,
    question_key: str,
) -> None:
    """A button that asks the admin to type something: enter ``awaiting`` and ask the question,
    in place of the pressed screen, with a way back (which also leaves the input state)."""
    tr = texts(translator)
    lang = language(callback.from_user, tr)
    await state.set_state(awaiting)
    await callback.answer()
    if isinstance(callback.message, Message):
        await show(callback.message, tr.t(lang, question_key), back_markup(tr, lang), in_place=True)


def language(user: User | None, translator: Translator) -> str:
    """The admin's language, from their client (admins are few; no query for it)."""
    return translator.language_for(user.language_code if user is not None else None)


def texts(translator: Translator | None) -> Translator:
    """The translator given as a dependency, else the shipped one."""
    return translator or bundled()


def refusal(translator: Translator, lang: str, exc: DomainError, currency: str | None = None) -> str:
    """The admin-facing text of a refusal: ``admin.error.<code>`` if the locale has it, else the
    generic ``admin.error.refused`` with the error's detail (admins are operators: the detail,
    which names the field and the value, is what they need). The amounts of a balance refusal
    (minor units) are shown as money in ``currency`` (default: the translator's balance currency),
    never as the raw integer."""
    key = "admin.error." + exc.code.replace(".", "_")
    params: dict[str, object] = dict(exc.params)
    if isinstance(exc, InsufficientBalance):
        code = currency or translator.formats.currency
        for name in ("balance", "required", "shortfall"):
            params[name] = Money(int(exc.params[name]), code)
    reason = exc.params.get("reason")
    for candidate in ((f"{key}_{reason}",) if isinstance(reason, str) else ()) + (key,):
        if translator.has(candidate):
            try:
                return translator.t(lang, candidate, **params)
            except LookupError:
                break
    return translator.t(lang, "admin.error.refused", detail=exc.detail)
