"""Reading what the bot did in one chat, with a cursor: shared by emulated users and groups."""

from __future__ import annotations

from collections.abc import Collection

from atlas.testing.botapi._core import ChatState, EmulatorCore
from atlas.testing.botapi.records import NEW_MESSAGE_KINDS, ChatRecord, RecordKind


class ChatReader:
    """A chat's record log and a read cursor over it (the base of ``EmulatedUser``/``EmulatedGroup``)."""

    _reader_name = "chat"
    """How a timeout names the chat ("the chat of user", "group")."""

    def __init__(self, core: EmulatorCore, chat: ChatState) -> None:
        self._core = core
        self._chat = chat
        self._cursor = 0

    def chat_log(self) -> list[ChatRecord]:
        """Everything the bot did to this chat, oldest first."""
        return list(self._chat.log)

    async def next_record(
        self, within: float = 5.0, *, kinds: Collection[RecordKind] | None = None
    ) -> ChatRecord:
        """The next record after the read cursor (of one of ``kinds``), waiting up to ``within`` s.

        Records of other kinds passed over on the way are consumed. :class:`NothingInTime` if
        nothing suitable arrives; the cursor then stays after what was seen.
        """
        log = self._chat.log

        def probe() -> ChatRecord | None:
            while self._cursor < len(log):
                record = log[self._cursor]
                self._cursor += 1
                if kinds is None or record.kind in kinds:
                    return record
            return None

        what = f"next record in {self._reader_name} {self._chat.chat_id}"
        return await self._core.wait_for(probe, within, what)

    async def next_message(self, within: float = 5.0) -> ChatRecord:
        """The next *new* message (text, photo, document, invoice), skipping edits and deletions."""
        return await self.next_record(within, kinds=NEW_MESSAGE_KINDS)

    def skip_received(self) -> None:
        """Move the read cursor past everything received so far."""
        self._cursor = len(self._chat.log)
