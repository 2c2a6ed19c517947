"""One per-chat turn for every message a process sends: handler replies and outbox sends alike.

Telegram allows about one message per second in a chat, and counts every message: a handler's
reply, the second message of a two-message answer, an outbox notice. The outbox sender has always
kept its own sends one interval apart per chat (:class:`~atlas.telegram.pacing.ChatPacer`), but it
did not see the handlers' replies: a notice that came right after a reply was refused (429) and
requeued.

:class:`ChatGate` is a request middleware of the Bot's session, so that *every* call that puts a
new message into a chat passes it: a call waits while another send to the same chat is in the air
and — an outbox send, inside :func:`waits_for_chat_slots` — until one interval after the previous
one's answer (the :class:`ChatPacer` rule), then goes; its answer moves the chat's slot on. A
handler's reply does not wait for the slot (a user is not kept a second behind a notice, and a
two-message answer such as ``/start``'s keeps its timing; a second message too soon is refused and
waited out as before), but its answer holds the chat for the next notice: the outbox sender
reads the same pacer (:func:`chat_gate_of`), so a chat that just got a reply is not ready for a
notice either.

What it does not cover: another *process* of the fleet. With long polling every reply comes from
the polling process, with a webhook behind a load balancer from any; a notice sent by the elected
sender in one process and a reply sent by another in the same second still meet at Telegram (a
per-chat ledger in PostgreSQL would close that, at a statement per reply: on the hot path, where
issue 9 allows none; see docs/architecture.md, "One per-chat gate").

Cost: a dictionary look-up and an uncontended ``trio.Lock`` per message sent; chats whose slot has
passed are forgotten (the pacer prunes them, the locks go with their last holder).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from contextvars import ContextVar
from typing import TYPE_CHECKING

import trio
from aiogram.client.session.middlewares.base import BaseRequestMiddleware, NextRequestMiddlewareType
from aiogram.methods.base import TelegramType

from atlas.net.guard import ensure_no_connection_held
from atlas.telegram.pacing import ChatPacer

if TYPE_CHECKING:
    from aiogram import Bot
    from aiogram.methods import Response, TelegramMethod

MESSAGE_METHODS = frozenset(
    {
        "sendMessage", "sendPhoto", "sendDocument", "sendVideo", "sendAudio", "sendVoice",
        "sendAnimation", "sendVideoNote", "sendSticker", "sendMediaGroup", "sendLocation",
        "sendVenue", "sendContact", "sendPoll", "sendDice", "sendInvoice", "sendPaidMedia",
        "copyMessage", "copyMessages", "forwardMessage", "forwardMessages",
    }
)  # fmt: skip
"""Bot API methods that put a new message into a chat (edits, deletions and chat actions do not)."""


def chat_of(method: object) -> int | str | None:
    """The chat a message-creating call goes to, or None (not such a call, or no chat named)."""
    if getattr(method, "__api_method__", None) not in MESSAGE_METHODS:
        return None
    chat_id = getattr(method, "chat_id", None)
    return chat_id if isinstance(chat_id, int | str) and not isinstance(chat_id, bool) else None


class ChatGate(BaseRequestMiddleware):
    """Message-creating calls to one chat take turns, one :class:`ChatPacer` interval apart."""

    def __init__(self, pacer: ChatPacer | None = None) -> None:
        self.pacer = pacer or ChatPacer()
        self._turns: dict[int | str, trio.Lock] = {}
        self.waits = 0
        """How many calls waited for their chat (for tests and metrics)."""

    @asynccontextmanager
    async def turn(self, chat_id: int | str, *, wait_for_slot: bool = True) -> AsyncIterator[None]:
        """Wait for ``chat_id``'s turn, hold it for the call, then move the chat's slot on.

        ``wait_for_slot=False`` (a handler's reply) waits only for a send to the chat that is in
        the air, not for the chat's slot: a reply is never held a second behind a notice (one
        that comes too soon is refused and waited out, :mod:`atlas.telegram.throttling`), but its
        answer still holds the chat for the next notice. Cancelled while waiting: nothing is
        taken. The slot moves on however the call ends (an error answer is an answer too; a
        cancelled call may have arrived).
        """
        lock = self._turns.get(chat_id)
        if lock is None:
            lock = self._turns[chat_id] = trio.Lock()
        try:
            async with lock:
                key = chat_id if isinstance(chat_id, int) else None
                ready = self.pacer.ready_at(key) if key is not None and wait_for_slot else -1.0
                if ready > trio.current_time():
                    self.waits += 1
                    await trio.sleep_until(ready)
                try:
                    yield
                finally:
                    if key is not None:
                        self.pacer.note_answered(key, trio.current_time())
        finally:
            if not lock.locked() and lock.statistics().tasks_waiting == 0:
                self._turns.pop(chat_id, None)

    async def __call__(
        self,
        make_request: NextRequestMiddlewareType[TelegramType],
        bot: Bot,
        method: TelegramMethod[TelegramType],
    ) -> Response[TelegramType]:
        """Send ``method``, in its chat's turn when it creates a message.

        Contract 1 first, as in the session: a call made inside a unit of work (which runs on the
        storage loop, not in trio) raises ``ConnectionHeldAcrossIO`` before it waits for anything.
        """
        ensure_no_connection_held(f"Telegram {method.__api_method__}")
        chat_id = chat_of(method)
        if chat_id is None:
            return await make_request(bot, method)
        async with self.turn(chat_id, wait_for_slot=_takes_turns.get()):
            return await make_request(bot, method)


_takes_turns: ContextVar[bool] = ContextVar("chat_gate_takes_turns", default=False)


@contextmanager
def waits_for_chat_slots() -> Iterator[None]:
    """Message calls made inside this block wait for their chat's slot (the outbox sender's)."""
    token = _takes_turns.set(True)
    try:
        yield
    finally:
        _takes_turns.reset(token)


def chat_gate_of(bot: Bot) -> ChatGate | None:
    """The :class:`ChatGate` among ``bot``'s session middlewares (``make_bot`` adds one), or None."""
    session = getattr(bot, "session", None)
    for middleware in getattr(session, "middleware", ()):
        if isinstance(middleware, ChatGate):
            return middleware
    return None
