"""The web chat as a person uses it, in chromium: type, press a button by its label, read bubbles.

For any test that drives the emulator's web chat (``test_webchat.py``, the demo's test)::

    async with open_browser() as browser:
        chat = WebChat(await browser.open(emulator.webchat_url()))
        await chat.send("/start")
        await chat.press("Free trial")          # waits until such a button is drawn, then clicks
        await chat.wait_for_bot_text("trial is on")

Each wait is bounded and fails the test with what the page shows.

Screens shown in place (a press edits the message the button was on) are followed by the
message's id: :meth:`WebChat.press` returns the id of the message whose button it clicked and
tags that bubble's element, and :meth:`WebChat.wait_for_edit` waits until the bubble with that id
shows a text and tells whether it is still the very element that was pressed (an edit drawn where
the message is) or a new one.
"""

from __future__ import annotations

import json
from typing import Any

from tests._browser import Page

_TAG = "pressedAt"
"""The ``data-*`` attribute :meth:`WebChat.press` puts on the pressed bubble (a counter)."""


class WebChat:
    """The web chat page open in a :class:`Page`."""

    def __init__(self, page: Page) -> None:
        self.page = page
        self._presses = 0

    async def send(self, text: str) -> None:
        """Type ``text`` into the message box (as keyboard input) and press Send."""
        await self.page.evaluate("document.getElementById('text').focus()")
        await self.page.browser.command("Input.insertText", {"text": text}, session=self.page.session)
        await self.page.evaluate("document.getElementById('send').click()")

    async def press(self, label: str, *, within: float = 30.0) -> int:
        """Click the newest enabled keyboard button whose label contains ``label``, once one is drawn.

        Returns the id of the message the button is on; its bubble element is tagged, so that
        :meth:`wait_for_edit` can tell an edit in place from a redrawn or new bubble.
        """
        self._presses += 1
        script = (
            "(() => { const found = [...document.querySelectorAll('#log .keyboard button')]"
            f".filter(b => b.textContent.includes({json.dumps(label)}) && !b.disabled);"
            " if (!found.length) return 0; const button = found[found.length - 1];"
            f" const bubble = button.closest('.msg'); bubble.dataset.{_TAG} = '{self._presses}';"
            " button.click(); return Number(bubble.dataset.id); })()"
        )
        message_id: int = await self.page.wait_for(script, within=within, what=f"a button {label!r}")
        return message_id

    async def wait_for_edit(self, message_id: int, text: str, *, within: float = 30.0) -> bool:
        """Wait until the bubble of ``message_id`` shows ``text``; True if it is the element that
        was pressed last (the message was edited where it is), False if it was drawn anew."""
        selector = json.dumps(f'#log .msg[data-id="{message_id}"]')
        script = (
            f"(() => {{ const m = document.querySelector({selector});"
            f" if (!m || !m.innerText.includes({json.dumps(text)})) return null;"
            f" return {{same: m.dataset.{_TAG} === '{self._presses}'}}; }})()"
        )
        found: dict[str, Any] = await self.page.wait_for(
            script, within=within, what=f"message {message_id} showing {text!r}"
        )
        return bool(found["same"])

    async def bubbles(self) -> list[dict[str, Any]]:
        """Every bubble in order: its message id, side (``bot``/``user``) and the text it shows."""
        found: list[dict[str, Any]] = await self.page.evaluate(
            "[...document.querySelectorAll('#log .msg')].map(m => ({id: Number(m.dataset.id),"
            " side: m.classList.contains('bot') ? 'bot' : 'user', text: m.innerText}))"
        )
        return found

    async def wait_for_bot_text(self, text: str, *, within: float = 30.0) -> int:
        """Wait until a bot bubble shows ``text``; return how many do."""
        script = self.bot_bubbles_with(text)
        count: int = await self.page.wait_for(script, within=within, what=f"a reply {text!r}")
        return count

    @staticmethod
    def bot_bubbles_with(text: str) -> str:
        """JS: how many bot bubbles show ``text``."""
        return (
            "[...document.querySelectorAll('#log .msg.bot')]"
            f".filter(m => m.innerText.includes({json.dumps(text)})).length"
        )
