"""Scripted Telegram users: they type, press buttons, pay in Stars and block the bot.

Each action queues the update Telegram would send the bot (``message`` with ``bot_command``
entities, ``callback_query`` with the pressed message, ``pre_checkout_query`` then a
``successful_payment`` message) and returns at once, except :meth:`EmulatedUser.pay_stars`, which
waits (bounded) for the bot's answer to the pre-checkout query the way Telegram does.

What the bot did to the chat is read back through :meth:`EmulatedUser.chat_log` (everything) or
awaited record by record with :meth:`EmulatedUser.next_record` / :meth:`EmulatedUser.next_message`,
which keep a read cursor so that nothing the bot sent before the call is missed.
"""

from __future__ import annotations

import re
from typing import Any

from atlas.testing.botapi._chat_reader import ChatReader
from atlas.testing.botapi._core import PendingCallback
from atlas.testing.botapi._payments import STARS, complete_payment, open_pre_checkout
from atlas.testing.botapi.errors import NothingInTime, ScriptError
from atlas.testing.botapi.records import (
    CallbackAnswer,
    ChatRecord,
    InvoiceRecord,
    PaymentOutcome,
)

_COMMAND = re.compile(r"^/[A-Za-z0-9_]{1,32}$")


class EmulatedUser(ChatReader):
    """A user in a private chat with the bot (the chat id is the user id).

    Create one with :meth:`BotApiEmulator.add_user`. All methods are meant for the trio task of
    the test or demo script; none of them blocks except the ``async`` ones, each with a timeout
    that raises :class:`NothingInTime`.
    """

    _reader_name = "the chat of user"
    # What the chat received (chat_log, next_record, next_message, skip_received): ChatReader.

    # -- who ------------------------------------------------------------------------------------

    @property
    def id(self) -> int:
        """The user id, which is also the chat id."""
        return self._chat.chat_id

    @property
    def first_name(self) -> str:
        """The user's first name."""
        return str(self._chat.user["first_name"])

    @property
    def username(self) -> str | None:
        """The @username without the @, if any."""
        value = self._chat.user.get("username")
        return None if value is None else str(value)

    @property
    def language_code(self) -> str | None:
        """The IETF language tag of the user's client, if any."""
        value = self._chat.user.get("language_code")
        return None if value is None else str(value)

    def set_language(self, language_code: str | None) -> None:
        """Change the client's language: the ``from`` of every later update carries it (None: none)."""
        if language_code:
            self._chat.user["language_code"] = language_code
        else:
            self._chat.user.pop("language_code", None)

    def as_json(self) -> dict[str, Any]:
        """The ``User`` object Telegram puts into ``from``."""
        return dict(self._chat.user)

    # -- actions --------------------------------------------------------------------------------

    def send_text(self, text: str) -> int:
        """Type ``text`` into the chat; returns the update_id of the queued ``message`` update."""
        if not text:
            raise ValueError("text must be non-empty")
        message = self._core.new_user_message(self._chat, text=text)
        return self._core.enqueue_update("message", message)

    def send_command(self, command: str, payload: str | None = None) -> int:
        """Send ``/command [payload]`` with its ``bot_command`` entity; ``/start`` unblocks the bot.

        A deep link ``t.me/bot?start=ref42`` arrives exactly like this: ``/start ref42``.
        """
        if not _COMMAND.match(command):
            raise ValueError(f"command must look like /name (letters, digits, _), got {command!r}")
        if command == "/start":
            self._chat.blocked = False
        text = command if not payload else f"{command} {payload}"
        entities = [{"type": "bot_command", "offset": 0, "length": len(command)}]
        message = self._core.new_user_message(self._chat, text=text, entities=entities)
        return self._core.enqueue_update("message", message)

    def press(self, button: str) -> str:
        """Press the inline button labelled ``button`` (or with that callback_data); return the query id.

        The newest bot message in the chat that has such a button wins, as a user would press the
        button they see last. :class:`ScriptError` when there is none or it is not a callback button.
        """
        core, chat = self._core, self._chat
        for message_id in sorted(chat.messages, reverse=True):
            message = chat.messages[message_id]
            if message["from"]["id"] != core.bot_id:
                continue
            for row in message.get("reply_markup", {}).get("inline_keyboard", []):
                for candidate in row:
                    if button not in (candidate.get("text"), candidate.get("callback_data")):
                        continue
                    return self._queue_press(message, candidate)
        raise ScriptError(f"no inline button {button!r} in the chat of user {self.id}")

    def press_at(self, message_id: int, row: int, column: int) -> str:
        """Press the inline button at ``row``, ``column`` (from 0) of the bot message ``message_id``.

        What a person does on a screen, where two messages may carry the same label. Returns the
        query id; :class:`ScriptError` when there is no such message or button, or the button is
        not a callback button.
        """
        message = self._chat.messages.get(message_id)
        if message is None or message["from"]["id"] != self._core.bot_id:
            raise ScriptError(f"no bot message {message_id} in the chat of user {self.id}")
        rows = message.get("reply_markup", {}).get("inline_keyboard", [])
        if not (0 <= row < len(rows) and 0 <= column < len(rows[row])):
            raise ScriptError(f"message {message_id} has no button at row {row}, column {column}")
        return self._queue_press(message, rows[row][column])

    def _queue_press(self, message: dict[str, Any], button: dict[str, Any]) -> str:
        data = button.get("callback_data")
        if data is None:
            raise ScriptError(
                f"button {button.get('text')!r} of message {message['message_id']} has no callback_data; "
                f"its action is {sorted(k for k in button if k != 'text')}"
            )
        core, chat = self._core, self._chat
        query_id = core.new_id("CBQ")
        core.callbacks[query_id] = PendingCallback(query_id, self.id, data)
        core.enqueue_update("callback_query", {
            "id": query_id,
            "from": chat.user,
            "message": message,
            "chat_instance": f"ci{chat.chat_id}",
            "data": data,
        })
        return query_id

    async def callback_answer(self, query_id: str, within: float = 5.0) -> CallbackAnswer:
        """Wait for the bot's ``answerCallbackQuery`` to the press ``query_id``."""
        pending = self._core.callbacks.get(query_id)
        if pending is None or pending.user_id != self.id:
            raise ScriptError(f"query {query_id!r} is not a button press of user {self.id}")
        return await self._core.wait_for(lambda: pending.answer, within, f"answer to callback {query_id}")

    async def pay_stars(
        self,
        invoice: ChatRecord | InvoiceRecord | str,
        *,
        answer_timeout: float | None = None,
        deliver: bool = True,
    ) -> PaymentOutcome:
        """Pay a Stars invoice (an invoice record of this chat, an InvoiceRecord, or an invoice link).

        Queues the ``pre_checkout_query`` and waits up to ``answer_timeout`` (default: the
        emulator's ``pre_checkout_timeout``, 10 s like Telegram) for ``answerPreCheckoutQuery``.
        On ``ok=True`` in time, issues a charge and queues the ``successful_payment`` message. A
        missing, late or negative answer gives an outcome with ``ok=False`` and the reason; a late
        answer is then refused with 400, as on Telegram. ``deliver=False``: the user is charged but
        the ``successful_payment`` never reaches the bot (only ``getStarTransactions`` shows it).
        """
        record = self._resolve_invoice(invoice)
        core = self._core
        pending = open_pre_checkout(core, self._chat, record)
        timeout = core.pre_checkout_timeout if answer_timeout is None else answer_timeout
        try:
            answer = await core.wait_for(lambda: pending.answer, timeout, f"answer to {pending.query_id}")
        except NothingInTime:
            pending.closed = True
            return PaymentOutcome(
                ok=False, query_id=pending.query_id, answer=None, charge=None,
                reason=f"the bot did not answer the pre_checkout_query within {timeout} s",
            )
        if not answer.in_time:
            late = f"answered after {answer.elapsed:.3f} s"
            return PaymentOutcome(False, pending.query_id, answer, None, late)
        if not answer.ok:
            declined = f"declined: {answer.error_message}"
            return PaymentOutcome(False, pending.query_id, answer, None, declined)
        charge = complete_payment(core, self._chat, pending, deliver=deliver)
        return PaymentOutcome(True, pending.query_id, answer, charge, None)

    def _resolve_invoice(self, invoice: ChatRecord | InvoiceRecord | str) -> InvoiceRecord:
        if isinstance(invoice, str):
            found = self._core.invoice_links.get(invoice)
            if found is None:
                raise ScriptError(f"{invoice!r} is not an invoice link this emulator created")
            record = found
        elif isinstance(invoice, ChatRecord):
            if invoice.invoice is None:
                raise ScriptError(f"record {invoice.kind} #{invoice.message_id} is not an invoice")
            record = invoice.invoice
        else:
            record = invoice
        if record.chat_id is not None and record.chat_id != self.id:
            raise ScriptError(f"the invoice was sent to chat {record.chat_id}, not to user {self.id}")
        if record.currency != STARS:
            raise ScriptError(f"only Stars (XTR) invoices can be paid here, got {record.currency}")
        return record

    def block_bot(self) -> None:
        """Block the bot: every send, edit or delete in this chat answers 403 until unblocked."""
        self._chat.blocked = True

    def unblock_bot(self) -> None:
        """Unblock the bot (``/start`` does this too)."""
        self._chat.blocked = False

    @property
    def blocked(self) -> bool:
        """Whether the user has blocked the bot."""
        return self._chat.blocked
