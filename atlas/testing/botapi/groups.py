"""Scripted group chats: a supergroup the bot is a member of, and members who post and reply there.

What the bot receives follows Telegram's *privacy mode* (on by default for every bot, and what
``getMe`` reports as ``can_read_all_group_messages: false``): a member's message reaches the bot only
when it is a command or a reply to one of the bot's own messages. With ``privacy=False`` (the bot
made a group admin, or privacy turned off in @BotFather) every message does. A reply carries the
replied-to message as ``reply_to_message``, as Telegram sends it (one level, no nesting).
"""

from __future__ import annotations

import copy
from typing import Any

from atlas.testing.botapi._chat_reader import ChatReader
from atlas.testing.botapi._core import ChatState, EmulatorCore, PendingCallback
from atlas.testing.botapi.errors import ScriptError
from atlas.testing.botapi.users import EmulatedUser


class EmulatedGroup(ChatReader):
    """A supergroup with the bot in it. Create one with :meth:`BotApiEmulator.add_group`."""

    _reader_name = "group"

    def __init__(self, core: EmulatorCore, chat: ChatState, *, privacy: bool) -> None:
        super().__init__(core, chat)
        self.privacy = privacy

    @property
    def id(self) -> int:
        """The group's chat id (negative)."""
        return self._chat.chat_id

    def post(self, member: EmulatedUser, text: str, *, reply_to: int | None = None) -> int | None:
        """``member`` writes ``text`` (a reply to message ``reply_to`` if given); return the message id.

        A text starting with ``/`` carries a ``bot_command`` entity. Whether the bot gets an update
        follows the privacy mode (see the module docstring); the message is in the chat either way.
        :class:`ScriptError` when ``reply_to`` is not a message of this chat.
        """
        if not text:
            raise ValueError("text must be non-empty")
        content: dict[str, Any] = {"text": text}
        if text.startswith("/"):
            command = text.split(maxsplit=1)[0]
            content["entities"] = [{"type": "bot_command", "offset": 0, "length": len(command)}]
        replied: dict[str, Any] | None = None
        if reply_to is not None:
            replied = self._chat.messages.get(reply_to)
            if replied is None:
                raise ScriptError(f"no message {reply_to} in group {self.id}")
            shallow = copy.deepcopy(replied)
            shallow.pop("reply_to_message", None)
            content["reply_to_message"] = shallow
        message = self._core.new_user_message(self._chat, sender=member.as_json(), **content)
        to_bot = replied is not None and replied["from"]["id"] == self._core.bot_id
        if not self.privacy or to_bot or "entities" in content:
            self._core.enqueue_update("message", message)
        return int(message["message_id"])

    def press(self, member: EmulatedUser, button: str) -> str:
        """``member`` presses the inline button labelled ``button`` (or with that callback_data) on
        the newest bot message of the group that has one; return the query id.

        :class:`ScriptError` when there is no such button or it is not a callback button.
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
                    data = candidate.get("callback_data")
                    if data is None:
                        raise ScriptError(f"button {button!r} of message {message_id} has no callback_data")
                    query_id = core.new_id("CBQ")
                    core.callbacks[query_id] = PendingCallback(query_id, member.id, data)
                    core.enqueue_update(
                        "callback_query",
                        {
                            "id": query_id,
                            "from": member.as_json(),
                            "message": message,
                            "chat_instance": f"ci{chat.chat_id}",
                            "data": data,
                        },
                    )
                    return query_id
        raise ScriptError(f"no inline button {button!r} in group {self.id}")

    def message(self, message_id: int) -> dict[str, Any]:
        """The current version of message ``message_id`` of this chat (``KeyError`` if none)."""
        return copy.deepcopy(self._chat.messages[message_id])
