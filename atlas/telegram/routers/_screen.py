"""What every user screen shares: :class:`Screen` (the presser, their language, the dependencies)
and :class:`ScreenMiddleware`, which builds it and turns domain refusals into localized answers.

Why a middleware and not a helper each handler calls: three things must happen around *every*
user handler and are easy to forget in one of thirty — knowing who the user is (registering them
if a button of an old chat is their first contact), refusing banned users, and answering a
:class:`~atlas.domain.DomainError` with its localized text. It is an *inner* middleware (it runs
only once a handler of its router has matched), so a router that does not handle an update costs
nothing.

Handlers run in trio tasks (see :mod:`atlas.telegram.dispatch`), so :meth:`Screen.run` is simply
``db.run`` and a payments client is awaited directly.

**One unit per screen.** Most screens show the user something besides the user row (their
subscription, the plans, their referral numbers). A handler that only *displays* such a read
declares it with ``flags=reads(read)``; the middleware then runs the read in the same unit of work
as the user lookup (or registration), and :meth:`Screen.read` hands the result over once. An
update of such a screen costs one transaction instead of two (a budget token, ``BEGIN``/``COMMIT``
and the pool's reset fewer). A handler that changes something first must not declare the read (it
would see the state from before its change); :meth:`Screen.read` without a declaration, or a
second time, simply runs the read as its own unit.

**Screens are shown in place.** :meth:`Screen.show` answers a button press by editing the message
the button was on (see :mod:`atlas.telegram.in_place` for when it deletes and sends instead); a
typed command gets a new message. One press is one screen: a second ``show`` in the same handler
sends a new message below it. :meth:`Screen.say` always sends a new message.

Every action is for ``callback.from_user.id`` / ``message.from_user.id`` — Telegram authenticates
that field; nothing in callback data can redirect an action to someone else (see
:mod:`atlas.telegram.callbacks`).
"""

from __future__ import annotations

import datetime as dt
import html
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from aiogram import BaseMiddleware, Bot
from aiogram.dispatcher.flags import get_flag
from aiogram.fsm.context import FSMContext
from aiogram.types import BufferedInputFile, CallbackQuery, InlineKeyboardMarkup, Message, TelegramObject
from aiogram.types import User as TgUser

from atlas.clock import Clock
from atlas.domain import DomainError, InsufficientBalance
from atlas.payments import CryptoPayClient
from atlas.storage import Database, Tx
from atlas.storage.units import UserView, get_user, register_user
from atlas.telegram.config import BotConfig
from atlas.telegram.formatting import format_money
from atlas.telegram.i18n import MissingParameter, bundled
from atlas.telegram.in_place import show_photo, show_text
from atlas.telegram.keyboards import back_to_menu

_log = logging.getLogger("atlas.telegram.routers")

T = TypeVar("T")

ERROR_PREFIX = "user.error."
"""Where the localized text of a domain error's ``code`` lives: ``user.error.<code>``."""

ScreenRead = Callable[[Tx, UserView, dt.datetime], Awaitable[T]]
"""A read a screen needs besides the user: ``async def read(tx, user, now) -> T`` (reads only)."""

SCREEN_READ_FLAG = "atlas_screen_read"


def reads(read: ScreenRead[Any]) -> dict[str, Any]:
    """Handler flags: do ``read`` in the user lookup's unit; the handler takes it with :meth:`Screen.read`."""
    return {SCREEN_READ_FLAG: read}


@dataclass(frozen=True, slots=True)
class _Preread:
    read: ScreenRead[Any]
    result: Any


@dataclass(slots=True)
class Screen:
    """The user an update is from, in their language, with what handlers need to answer them.

    ``callback`` is the button press being handled (None for a message); :meth:`ack` answers it
    once, and the middleware answers it silently if the handler did not. ``cryptopay`` is the
    optional dependency of that name (None: Crypto Pay is not configured).
    """

    db: Database
    clock: Clock
    config: BotConfig
    bot: Bot
    user: UserView
    chat_id: int
    callback: CallbackQuery | None = None
    cryptopay: CryptoPayClient | None = None
    acked: bool = False
    preread: _Preread | None = None
    shown: bool = False

    @property
    def lang(self) -> str:
        """The user's language (``users.language``)."""
        return self.user.language

    def t(self, key: str, /, **params: object) -> str:
        """The text ``key`` in the user's language."""
        return bundled().t(self.lang, key, **params)

    def money(self, amount_minor: int, currency: str | None = None) -> str:
        """An amount in minor units of ``currency`` (default: the balance's) as the user's language
        writes it: ``"199 ₽"``, ``"RUB 199.00"`` (see :mod:`atlas.telegram.formatting`)."""
        return format_money(amount_minor, currency or self.config.currency, self.lang)

    async def run(self, unit: Callable[..., Awaitable[T]], /, **kwargs: Any) -> T:
        """Run a unit of work through ``db.run``; domain errors propagate."""
        return await self.db.run(unit, **kwargs)

    async def read(self, read: ScreenRead[T]) -> T:
        """The result of ``read`` for this user: the one done with the user lookup, if the handler
        declared it (``flags=reads(read)``) and nobody took it yet; else a unit run now."""
        preread, self.preread = self.preread, None
        if preread is not None and preread.read is read:
            result: T = preread.result
            return result
        return await self.db.run(run_screen_read, read=read, user=self.user, now=self.clock.now())

    def _to_replace(self) -> Message | None:
        """The pressed message, the first time a screen is shown for this press; else None."""
        if self.shown or self.callback is None:
            return None
        self.shown = True
        message = self.callback.message
        return message if isinstance(message, Message) else None

    async def show(self, text: str, keyboard: InlineKeyboardMarkup | None = None) -> None:
        """Show the screen ``text`` (HTML): in place of the pressed message for a button press,
        as a new message otherwise (see the module docstring)."""
        replace = self._to_replace()
        self.shown = True
        await show_text(self.bot, self.chat_id, text, keyboard, replace=replace)

    async def show_photo(
        self, photo: BufferedInputFile, caption: str, keyboard: InlineKeyboardMarkup | None = None
    ) -> None:
        """Show a photo screen, replacing the pressed message (deleted: a text cannot become a photo)."""
        replace = self._to_replace()
        self.shown = True
        await show_photo(self.bot, self.chat_id, photo, caption, keyboard, replace=replace)

    async def say(self, text: str, keyboard: InlineKeyboardMarkup | None = None) -> Message:
        """Send ``text`` (HTML) to the user's chat as a new message, whatever was pressed."""
        return await self.bot.send_message(
            self.chat_id, text, parse_mode="HTML", reply_markup=keyboard, disable_web_page_preview=True
        )

    async def ack(self, text: str | None = None, *, alert: bool = False) -> None:
        """Answer the button press (stop its spinner), at most once; no-op for messages."""
        if self.callback is None or self.acked:
            return
        self.acked = True
        await self.callback.answer(text, show_alert=alert)

    def refusal(self, error: DomainError) -> str:
        """The localized text of a domain error (its ``code``), money params formatted."""
        params: dict[str, object] = dict(error.params)
        if isinstance(error, InsufficientBalance):
            for name in ("balance", "required", "shortfall"):
                params[name] = self.money(int(error.params[name]))
        translator = bundled()
        key = ERROR_PREFIX + error.code
        if not translator.has(key):
            _log.warning("no text for domain error %s; answering with the generic refusal", error.code)
            return self.t("errors.generic")
        try:
            return translator.t(self.lang, key, **params)
        except MissingParameter:
            _log.warning("domain error %s lacks a parameter its text needs", error.code)
            return self.t("errors.generic")


def start_payload(event: TelegramObject) -> str | None:
    """The deep-link parameter of a ``/start <payload>`` message, else None."""
    if not isinstance(event, Message) or not event.text:
        return None
    command, _, rest = event.text.partition(" ")
    if command.split("@", 1)[0] != "/start":
        return None
    return rest.strip() or None


class ScreenMiddleware(BaseMiddleware):
    """Puts a :class:`Screen` into the handler's data as ``ui``; answers refusals and banned users.

    ``register`` (the ``/start`` router): always run ``register_user`` with the deep-link payload —
    it is idempotent and refreshes the user's names. Otherwise a user is read, and registered
    without a referral only when unknown (their first contact is an old button). Unless
    ``keep_state`` (the promo router, whose prompt *is* a state), an update handled here ends any
    conversation state: a user who asked for the promo prompt and then went elsewhere should not
    have their next message taken for a code. A
    :class:`DomainError` from the handler is answered with its localized text (the unit rolled
    back: nothing changed); anything else propagates to the dispatcher's error boundary.
    """

    def __init__(self, *, register: bool = False, keep_state: bool = False) -> None:
        self._register = register
        self._keep_state = keep_state

    async def __call__(
        self,
        handler: Callable[[TelegramObject, dict[str, Any]], Awaitable[Any]],
        event: TelegramObject,
        data: dict[str, Any],
    ) -> Any:
        sender: TgUser | None = getattr(event, "from_user", None)
        if sender is None or sender.is_bot:
            return None  # channel posts and the like: no user to answer
        callback = event if isinstance(event, CallbackQuery) else None
        read: ScreenRead[Any] | None = get_flag(data, SCREEN_READ_FLAG)
        user, preread = await _user(
            data["db"], data["clock"], sender, start_payload(event), self._register, read
        )
        ui = Screen(
            db=data["db"],
            clock=data["clock"],
            config=data["config"],
            bot=data["bot"],
            user=user,
            chat_id=sender.id,  # private chats: the chat is the user
            callback=callback,
            cryptopay=data.get("cryptopay"),
            preread=preread,
        )
        if ui.user.banned_at is not None:
            await ui.ack()
            await ui.show(ui.t("errors.banned", support=ui.config.support or "—"))
            return None
        state = data.get("state")
        if not self._keep_state and isinstance(state, FSMContext):
            await state.clear()
        data["ui"] = ui
        try:
            return await handler(event, data)
        except DomainError as error:
            await ui.ack()
            await ui.show(ui.refusal(error), _menu_button(ui))
            return None
        finally:
            if ui.callback is not None and not ui.acked:
                await ui.ack()


async def _user(
    db: Database,
    clock: Clock,
    sender: TgUser,
    payload: str | None,
    register: bool,
    read: ScreenRead[Any] | None,
) -> tuple[UserView, _Preread | None]:
    """The user (read, or registered when unknown) and the screen's declared read: one unit."""
    now = clock.now()
    if not register:
        found: tuple[UserView, _Preread | None] | None = await db.run(
            get_user_for_screen, user_id=sender.id, read=read, now=now
        )
        if found is not None:
            return found
    return await db.run(
        register_user_for_screen,
        read=read,
        user_id=sender.id,
        username=sender.username,
        first_name=sender.first_name,
        language=sender.language_code,
        start_payload=payload,
        now=now,
    )


async def get_user_for_screen(
    tx: Tx, *, user_id: int, read: ScreenRead[Any] | None, now: dt.datetime
) -> tuple[UserView, _Preread | None] | None:
    user = await get_user(tx, user_id=user_id)
    if user is None:
        return None
    return user, await _preread(tx, read, user, now)


async def register_user_for_screen(
    tx: Tx,
    *,
    read: ScreenRead[Any] | None,
    user_id: int,
    username: str | None,
    first_name: str | None,
    language: str | None,
    start_payload: str | None,
    now: dt.datetime,
) -> tuple[UserView, _Preread | None]:
    registration = await register_user(
        tx,
        user_id=user_id,
        username=username,
        first_name=first_name,
        language=language,
        start_payload=start_payload,
        now=now,
    )
    user: UserView = registration.user
    return user, await _preread(tx, read, user, now)


async def _preread(tx: Tx, read: ScreenRead[Any] | None, user: UserView, now: dt.datetime) -> _Preread | None:
    # A banned user gets no screen: nothing to read for them.
    if read is None or user.banned_at is not None:
        return None
    return _Preread(read, await read(tx, user, now))


async def run_screen_read(tx: Tx, *, read: ScreenRead[T], user: UserView, now: dt.datetime) -> T:
    return await read(tx, user, now)


def _menu_button(ui: Screen) -> InlineKeyboardMarkup:
    return back_to_menu(ui.lang)


def code(text: str) -> str:
    """``text`` as HTML ``<code>`` (escaped): a link or key the user copies with one tap."""
    return f"<code>{html.escape(text, quote=False)}</code>"
