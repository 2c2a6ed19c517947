"""One simulated Telegram user: sends real updates through the Bot API emulator, presses only the
buttons the bot actually sent, and waits for the bot's replies (woken by the emulator, not polling).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

import trio

from atlas.testing.botapi import BotApiEmulator, ChatRecord, EmulatedUser, ScriptError

# How long a user waits for an answer before giving up on that step (trio seconds). Generous: the
# demo injects 429 bursts and outages, and the machine may be busy; a late answer is not a failure.
REPLY_WITHIN = 15.0
# After the first answer, how long more records may follow before the step counts as done.
_SETTLE = 0.3
# A person reads the answer before tapping again (trio seconds, not business time: reading speed
# does not scale with the demo's clock). Telegram allows a bot about one message a second per
# chat, and the emulator enforces it: a script tapping faster would only collect 429s.
THINK = 1.2


class Inboxes:
    """Wakes the chat waiting for a record: one emulator listener, one event per chat."""

    def __init__(self, emulator: BotApiEmulator) -> None:
        self._events: dict[int, trio.Event] = {}
        emulator.add_record_listener(self._on_record)

    def _on_record(self, record: ChatRecord) -> None:
        event = self._events.pop(record.chat_id, None)
        if event is not None:
            event.set()

    async def wait(self, chat_id: int, within: float) -> bool:
        """Wait for the next record in ``chat_id``; False if none came within ``within`` seconds."""
        event = self._events.setdefault(chat_id, trio.Event())
        with trio.move_on_after(within):
            await event.wait()
            return True
        return False


@dataclass(frozen=True)
class Button:
    """An inline button the bot sent: its label and either callback data or a URL."""

    text: str
    data: str | None
    url: str | None


class Chat:
    """A user's side of the conversation with the bot."""

    def __init__(
        self, user: EmulatedUser, inboxes: Inboxes, on_unanswered: Callable[[], None], *, ends_at: float
    ) -> None:
        self.user = user
        self._inboxes = inboxes
        self._on_unanswered = on_unanswered
        self._ends_at = ends_at  # trio time: the run is over, the user does nothing more

    def _over(self) -> bool:
        return trio.current_time() >= self._ends_at

    @property
    def id(self) -> int:
        """The user's Telegram id (also the chat id)."""
        return self.user.id

    async def command(self, command: str, payload: str | None = None) -> list[ChatRecord]:
        """Send ``/command [payload]``; return what the bot did in reply."""
        await trio.sleep(THINK)
        if self._over():
            return []
        before = len(self.user.chat_log())
        self.user.send_command(command, payload)
        return await self._replies(before)

    async def text(self, text: str) -> list[ChatRecord]:
        """Type ``text``; return the bot's reply."""
        await trio.sleep(THINK)
        if self._over():
            return []
        before = len(self.user.chat_log())
        self.user.send_text(text)
        return await self._replies(before)

    async def press(self, button: Button) -> list[ChatRecord]:
        """Press a callback button the bot sent; return the bot's reply."""
        if button.data is None:
            raise ScriptError(f"button {button.text!r} is a link, not a callback button")
        await trio.sleep(THINK)
        if self._over():
            return []
        before = len(self.user.chat_log())
        try:
            self.user.press(button.data)
        except ScriptError:
            # The screen changed while the user thought (edited in place, or a newer message took
            # the button away): gone, as it would be for a person, who then does something else.
            return []
        return await self._replies(before)

    def button(self, match: str | re.Pattern[str]) -> Button | None:
        """The newest button the bot sent whose label starts with ``match`` (or matches the pattern)."""
        for record in reversed(self.user.chat_log()):
            for raw in record.inline_buttons():
                label = str(raw.get("text", ""))
                found = match.search(label) if isinstance(match, re.Pattern) else label.startswith(match)
                if found:
                    data, url = raw.get("callback_data"), raw.get("url")
                    return Button(
                        label, None if data is None else str(data), None if url is None else str(url)
                    )
        return None

    def buttons(self, data_prefix: str) -> list[Button]:
        """The callback buttons of the newest message that has one whose data starts with ``data_prefix``."""
        for record in reversed(self.user.chat_log()):
            found = [
                Button(str(raw.get("text", "")), str(raw["callback_data"]), None)
                for raw in record.inline_buttons()
                if str(raw.get("callback_data", "")).startswith(data_prefix)
            ]
            if found:
                return found
        return []

    def saw(self, fragment: str) -> bool:
        """Whether any message the bot sent to this chat contains ``fragment``."""
        return any(fragment in (record.plain_text or "") for record in self.user.chat_log())

    async def wait_for(self, fragment: str, within: float) -> bool:
        """Wait until a message containing ``fragment`` has arrived; False after ``within`` seconds."""
        deadline = trio.current_time() + within
        while not self.saw(fragment):
            left = deadline - trio.current_time()
            if left <= 0 or not await self._inboxes.wait(self.id, left):
                return self.saw(fragment)
        return True

    async def _replies(self, before: int) -> list[ChatRecord]:
        if len(self.user.chat_log()) == before and not await self._inboxes.wait(self.id, REPLY_WITHIN):
            self._on_unanswered()
            return []
        # More may follow (an edit, then a notice): take what arrives while records keep coming.
        while await self._inboxes.wait(self.id, _SETTLE):
            pass
        return self.user.chat_log()[before:]
