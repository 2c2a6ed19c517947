"""The emulator's state: chats, the update queue, queries, payments, and the change signal.

Everything here is touched only from trio tasks of one run (the HTTP handlers that Hypercorn runs
on trio, the webhook deliverer, and the test's own scripted users), and trio switches tasks only at
checkpoints, so no lock is needed: a method handler decides and mutates synchronously, then fires
:class:`Signal` so that anybody waiting (a long poll, a test awaiting the next message) re-checks.
"""

from __future__ import annotations

import copy
import secrets
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import trio

from atlas.clock import Clock
from atlas.testing.botapi._files import FileStore
from atlas.testing.botapi.errors import ApiError, NothingInTime, bad_request
from atlas.testing.botapi.faults import FaultTable
from atlas.testing.botapi.rates import RateLimits, RateMeter
from atlas.testing.botapi.records import (
    CallbackAnswer,
    Charge,
    ChatRecord,
    FileMeta,
    InvoiceRecord,
    PreCheckoutAnswer,
    Refund,
    ServedError,
    WebhookAttempt,
    WebhookConfig,
)

_T = TypeVar("_T")

_SETS_TEXT = frozenset({"message", "photo", "document", "edit_text"})

PRE_CHECKOUT_LIMIT = 10.0
"""Seconds Telegram gives a bot to answer a pre_checkout_query."""


class Signal:
    """"Something changed": waiters re-check their condition after every :meth:`fire`.

    A fresh ``trio.Event`` per generation, because an Event cannot be cleared (once it has
    happened it cannot un-happen); waking everybody is cheap at emulator scale.
    """

    def __init__(self) -> None:
        self._event = trio.Event()

    def fire(self) -> None:
        """Wake every current waiter."""
        self._event.set()
        self._event = trio.Event()

    async def wait(self) -> None:
        """Wait for the next :meth:`fire`. Cancellation leaves nothing behind."""
        await self._event.wait()


@dataclass
class ChatState:
    """One chat and everything the bot did to it: a private chat (chat id == user id), or a group
    (``group`` set: its ``Chat`` object; ``user`` is then the group's creator, for ``from``)."""

    user: dict[str, Any]
    """The user's ``User`` object as Telegram sends it in ``from``."""
    group: dict[str, Any] | None = None
    """A group's ``Chat`` object (``id`` negative, ``type`` ``supergroup``); None: a private chat."""
    blocked: bool = False
    next_message_id: int = 1
    messages: dict[int, dict[str, Any]] = field(default_factory=dict)
    """Current version of every message still in the chat (both sides), by message id."""
    log: list[ChatRecord] = field(default_factory=list)
    text_records: dict[int, ChatRecord] = field(default_factory=dict)
    """The record that last set each bot message's text or caption: the message objects keep only
    the plain text, and the web chat shows the HTML."""

    @property
    def chat_id(self) -> int:
        """The chat id, equal to the user id in a private chat."""
        if self.group is not None:
            return int(self.group["id"])
        return int(self.user["id"])

    def chat_json(self) -> dict[str, Any]:
        """The ``Chat`` object for this chat."""
        if self.group is not None:
            return dict(self.group)
        chat: dict[str, Any] = {"id": self.chat_id, "type": "private", "first_name": self.user["first_name"]}
        for key in ("last_name", "username"):
            if key in self.user:
                chat[key] = self.user[key]
        return chat

    def take_message_id(self) -> int:
        """Allocate the next message id; ids are per chat and shared by both sides, as in Telegram."""
        message_id = self.next_message_id
        self.next_message_id += 1
        return message_id


@dataclass
class PendingCallback:
    """A button press waiting for (or having got) ``answerCallbackQuery``."""

    query_id: str
    user_id: int
    data: str | None
    answer: CallbackAnswer | None = None


@dataclass
class PendingCheckout:
    """A pre_checkout_query waiting for ``answerPreCheckoutQuery``."""

    query_id: str
    user_id: int
    invoice: InvoiceRecord
    opened_at: float
    answer: PreCheckoutAnswer | None = None
    closed: bool = False
    """Set when the scripted payment gave up waiting: a later answer is too late."""


class EmulatorCore:
    """All mutable state of one emulated bot. Not public: use :class:`BotApiEmulator`."""

    def __init__(
        self,
        token: str,
        *,
        bot_username: str,
        bot_first_name: str,
        limits: RateLimits,
        enforce_limits: bool,
        pre_checkout_timeout: float,
        clock: Clock | None,
    ) -> None:
        self.token = token
        self.bot_id = int(token.split(":", 1)[0])
        self.bot_user: dict[str, Any] = {
            "id": self.bot_id, "is_bot": True, "first_name": bot_first_name, "username": bot_username,
        }
        self.enforce_limits = enforce_limits
        self.pre_checkout_timeout = pre_checkout_timeout
        self._clock = clock
        self.changed = Signal()
        self.chats: dict[int, ChatState] = {}
        self.updates: list[dict[str, Any]] = []
        self._next_update_id = 1
        self.allowed_updates: tuple[str, ...] | None = None
        self.webhook: WebhookConfig | None = None
        self.webhook_attempts: list[WebhookAttempt] = []
        self.webhook_last_error: tuple[int, str] | None = None
        self.poll_generation = 0
        self.waiting_polls = 0
        self.callbacks: dict[str, PendingCallback] = {}
        self.callback_answers: list[CallbackAnswer] = []
        self.checkouts: dict[str, PendingCheckout] = {}
        self.pre_checkout_answers: list[PreCheckoutAnswer] = []
        self.charges: dict[str, Charge] = {}
        self.refunds: list[Refund] = []
        self.star_transactions: list[dict[str, Any]] = []
        self.invoices: list[InvoiceRecord] = []
        self.invoice_links: dict[str, InvoiceRecord] = {}
        self.files: dict[str, FileMeta] = {}
        self.file_data = FileStore()
        """The uploaded bytes behind ``files`` (bounded), for the web chat."""
        self.commands: dict[tuple[str, str], list[dict[str, str]]] = {}
        self.faults = FaultTable()
        self.answer_latency: dict[str, float] = {}
        """Seconds (trio clock) each method's answer takes after the call arrived, by lower-case name."""
        self.rates = RateMeter(limits)
        self.served_errors: list[ServedError] = []
        self.calls: Counter[str] = Counter()
        self.record_listeners: list[Callable[[ChatRecord], None]] = []
        self._ids = 0
        # A random part keeps ids (charge ids above all) unique across emulator runs that share a
        # database, as in `atlas demo`; the counter keeps them unique within a run.
        self._run_tag = secrets.token_hex(3)

    # -- time and ids -------------------------------------------------------------------------

    @property
    def clock(self) -> Clock:
        """The business clock used for ``date`` fields (created on first use, inside trio)."""
        if self._clock is None:
            self._clock = Clock()
        return self._clock

    def now(self) -> float:
        """The trio clock: every ``time`` field and every rate measurement uses it."""
        return trio.current_time()

    def unix_now(self) -> int:
        """Unix seconds for ``date`` fields."""
        return int(self.clock.now().timestamp())

    def new_id(self, prefix: str) -> str:
        """A fresh opaque id (query ids, file ids, charge ids)."""
        self._ids += 1
        return f"{prefix}{self._run_tag}{self._ids:08d}"

    # -- chats ----------------------------------------------------------------------------------

    def add_chat(self, user: dict[str, Any]) -> ChatState:
        """Open the private chat of a new user."""
        chat = ChatState(user=user)
        self.chats[chat.chat_id] = chat
        return chat

    def add_group(self, group: dict[str, Any], creator: dict[str, Any]) -> ChatState:
        """Open a group chat the bot is a member of."""
        chat = ChatState(user=creator, group=group)
        self.chats[chat.chat_id] = chat
        return chat

    def chat(self, chat_id: int | str) -> ChatState:
        """The chat for a ``chat_id`` parameter (id or ``@username``); 400 ``chat not found`` otherwise."""
        if isinstance(chat_id, str):
            wanted = chat_id.removeprefix("@").lower()
            for chat in self.chats.values():
                if str(chat.user.get("username", "")).lower() == wanted:
                    return chat
            raise bad_request("chat not found")
        chat_state = self.chats.get(chat_id)
        if chat_state is None:
            raise bad_request("chat not found")
        return chat_state

    def writable_chat(self, chat_id: int | str) -> ChatState:
        """Like :meth:`chat`, and 403 when the user has blocked the bot."""
        chat = self.chat(chat_id)
        if chat.blocked:
            raise ApiError(403, "Forbidden: bot was blocked by the user")
        return chat

    def new_bot_message(self, chat: ChatState, reply_markup: dict[str, Any] | None) -> dict[str, Any]:
        """Create, store and return a message from the bot; Telegram echoes only inline keyboards."""
        message: dict[str, Any] = {
            "message_id": chat.take_message_id(),
            "from": dict(self.bot_user),
            "chat": chat.chat_json(),
            "date": self.unix_now(),
        }
        if reply_markup is not None and "inline_keyboard" in reply_markup:
            message["reply_markup"] = reply_markup
        chat.messages[message["message_id"]] = message
        return message

    def new_user_message(
        self, chat: ChatState, *, sender: dict[str, Any] | None = None, **content: Any
    ) -> dict[str, Any]:
        """Create and store a message from the chat's user, or ``sender`` in a group (text, ...)."""
        message: dict[str, Any] = {
            "message_id": chat.take_message_id(),
            "from": dict(sender or chat.user),
            "chat": chat.chat_json(),
            "date": self.unix_now(),
            **content,
        }
        chat.messages[message["message_id"]] = message
        return message

    def record(self, chat: ChatState, record: ChatRecord) -> None:
        """Append to a chat's log and wake waiters."""
        chat.log.append(record)
        if record.kind in _SETS_TEXT:
            chat.text_records[record.message_id] = record
        elif record.kind == "delete":
            chat.text_records.pop(record.message_id, None)
        for listener in self.record_listeners:
            listener(record)
        self.changed.fire()

    # -- updates --------------------------------------------------------------------------------

    def enqueue_update(self, kind: str, payload: dict[str, Any]) -> int:
        """Queue an update of ``kind`` (``message``, ``callback_query``, ...); return its update_id.

        The payload is deep-copied: the update must show the state at the time it happened, not
        later edits of the same message.
        """
        update_id = self._next_update_id
        self._next_update_id += 1
        self.updates.append({"update_id": update_id, kind: copy.deepcopy(payload)})
        chat_id = _chat_of_update(payload)
        if chat_id is not None:
            self.rates.note_update(chat_id, self.now())  # the bot's sends to it are replies now
        self.changed.fire()
        return update_id

    def confirm_updates_before(self, update_id: int) -> None:
        """Forget every queued update with an id lower than ``update_id`` (they were delivered)."""
        self.updates = [u for u in self.updates if u["update_id"] >= update_id]

    def drop_pending_updates(self) -> None:
        """Forget every queued update (``drop_pending_updates=True``)."""
        self.updates.clear()
        self.changed.fire()

    # -- waiting --------------------------------------------------------------------------------

    async def wait_for(self, probe: Callable[[], _T | None], within: float, what: str) -> _T:
        """Wait until ``probe()`` returns non-None; :class:`NothingInTime` after ``within`` seconds."""
        with trio.move_on_after(within):
            while True:
                found = probe()
                if found is not None:
                    return found
                await self.changed.wait()
        raise NothingInTime(f"{what}: nothing within {within} s")

    def served(self, method: str, chat_id: int | str | None, error: ApiError) -> None:
        """Remember an error answer (for ``served_429`` and friends)."""
        self.served_errors.append(
            ServedError(self.now(), method, chat_id, error.code, error.description, error.retry_after)
        )


def _chat_of_update(payload: dict[str, Any]) -> int | None:
    """The chat an update comes from: a message's chat, a pressed button's chat, else the sender's
    private chat (a pre-checkout query); None when the payload names none."""
    chat = payload.get("chat") or (payload.get("message") or {}).get("chat")
    if isinstance(chat, dict) and isinstance(chat.get("id"), int):
        return int(chat["id"])
    sender = payload.get("from")
    if isinstance(sender, dict) and isinstance(sender.get("id"), int):
        return int(sender["id"])
    return None
