"""The web chat as a person uses it, in chromium: type, press a button by its label, read bubbles.

For any test that drives the emulator's web chat (``test_webchat.py``, the demo's test)::

    async with open_browser() as browser:
        chat = WebChat(await browser.open(emulator.webchat_url()))
        await chat.send("/start")
        await chat.press("Free trial")          # waits until such a button is drawn, then clicks
        await chat.wait_for_bot_text("trial is on")

Each wait is bounded and fails the test with what the page shows.
"""

from __future__ import annotations

import json

from tests._browser import Page


class WebChat:
    """The web chat page open in a :class:`Page`."""

    def __init__(self, page: Page) -> None:
        self.page = page

    async def send(self, text: str) -> None:
        """Type ``text`` into the message box (as keyboard input) and press Send."""
        await self.page.evaluate("document.getElementById('text').focus()")
        await self.page.browser.command("Input.insertText", {"text": text}, session=self.page.session)
        await self.page.evaluate("document.getElementById('send').click()")

    async def press(self, label: str, *, within: float = 30.0) -> None:
        """Click the newest enabled keyboard button whose label contains ``label``, once one is drawn."""
        script = (
            "(() => { const found = [...document.querySelectorAll('#log .keyboard button')]"
            f".filter(b => b.textContent.includes({json.dumps(label)}) && !b.disabled);"
            " if (!found.length) return false; found[found.length - 1].click(); return true; })()"
        )
        await self.page.wait_for(script, within=within, what=f"a button {label!r}")

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
