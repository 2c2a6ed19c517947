"""The web chat page of the Bot API emulator: its JSON endpoints against the real aiogram ``Bot``,
and the whole tree driven in a real headless chromium, as a person would use it in ``atlas demo``.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest
import trio
from aiogram import Bot
from aiogram.types import BufferedInputFile, InlineKeyboardButton, InlineKeyboardMarkup, LabeledPrice

from atlas.storage import Tx
from atlas.telegram.session import make_bot
from atlas.testing.botapi import WEBCHAT_USER_ID, BotApiEmulator
from atlas.testing.botapi._webchat import MAX_BODY_BYTES
from atlas.testing.botapi._webchat_view import HISTORY_LIMIT
from atlas.vpn import qr_png
from tests._browser import open_browser
from tests._running_tree import running_tree
from tests._webchat_page import WebChat

YOU = WEBCHAT_USER_ID


@asynccontextmanager
async def running() -> AsyncIterator[tuple[BotApiEmulator, Bot, httpx.AsyncClient]]:
    """A served emulator, the real aiogram Bot against it, and an HTTP client for the page's calls."""
    emulator = BotApiEmulator(bot_username="webchat_bot")
    async with trio.open_nursery() as nursery:
        base = await nursery.start(emulator.serve)
        bot = make_bot(emulator.token, base)
        try:
            async with httpx.AsyncClient(base_url=base, timeout=30) as client:
                page = await client.get("/webchat")  # the first visit adds "You"
                assert page.status_code == 200, page.text
                yield emulator, bot, client
        finally:
            await bot.session.close()
        nursery.cancel_scope.cancel()


def keyboard() -> InlineKeyboardMarkup:
    return InlineKeyboardMarkup(inline_keyboard=[
        [InlineKeyboardButton(text="Buy", callback_data="buy:m1"),
         InlineKeyboardButton(text="Site", url="https://example.org/")],
        [InlineKeyboardButton(text="App", url="tg://resolve?domain=x")],
    ])


async def history(client: httpx.AsyncClient, since: str | None = None, wait: float = 0) -> dict[str, Any]:
    params: dict[str, Any] = {"user": YOU, "wait": wait}
    if since is not None:
        params["since"] = since
    answer = await client.get("/webchat/api/history", params=params)
    assert answer.status_code == 200, answer.text
    body: dict[str, Any] = answer.json()
    return body


async def queued(emulator: BotApiEmulator, kind: str) -> dict[str, Any]:
    """The first queued update of ``kind`` (the bot is not polling in these tests)."""
    with trio.fail_after(10):
        while True:
            for update in emulator.pending_updates():
                if kind in update:
                    return update
            await trio.sleep(0.02)


async def test_the_page_is_served_with_a_strict_policy_and_adds_the_default_user() -> None:
    async with running() as (emulator, _bot, client):
        page = await client.get("/webchat", params={"lang": "ru"})
        script = await client.get("/webchat/webchat.js")
        styles = await client.get("/webchat/webchat.css")
        missing = await client.get("/webchat/other.js")
    assert emulator.user(YOU).first_name == "You"
    assert emulator.user(YOU).language_code == "ru"  # ?lang= is the client's language_code
    assert page.headers["content-type"].startswith("text/html")
    policy = page.headers["content-security-policy"]
    assert "script-src 'self'" in policy and "default-src 'none'" in policy and "unsafe" not in policy
    assert f'data-user="{YOU}"' in page.text and '<html lang="ru">' in page.text
    assert 'placeholder="Сообщение"' in page.text
    assert script.headers["content-type"].startswith("text/javascript") and "function bubble" in script.text
    assert styles.headers["content-type"].startswith("text/css")
    assert missing.status_code == 404 and missing.json()["ok"] is False


async def test_history_shows_html_as_nodes_then_only_what_changed_edits_and_deletions() -> None:
    async with running() as (_emulator, bot, client):
        first = await history(client)
        sent = await bot.send_message(YOU, "<b>Plans</b> &lt;for you&gt;", parse_mode="HTML",
                                      reply_markup=keyboard())
        after_send = await history(client, first["cursor"])
        await bot.edit_message_text("<i>Changed</i>", chat_id=YOU, message_id=sent.message_id,
                                    parse_mode="HTML", reply_markup=keyboard())
        after_edit = await history(client, after_send["cursor"])
        await bot.delete_message(YOU, sent.message_id)
        after_delete = await history(client, after_edit["cursor"])
        idle = await history(client, after_delete["cursor"])
        stale = await history(client, "999-999")

    assert first == {"ok": True, "cursor": first["cursor"], "reset": True, "deleted": [], "messages": []}
    (message,) = after_send["messages"]
    assert after_send["reset"] is False
    assert message["id"] == sent.message_id and message["side"] == "bot"
    assert message["text"] == [{"t": "b", "c": ["Plans"]}, " <for you>"]
    assert message["keyboard"] == [
        [{"text": "Buy", "kind": "callback"}, {"text": "Site", "kind": "url", "url": "https://example.org/"}],
        [{"text": "App", "kind": "other"}],  # a tg:// link is nothing a browser can open
    ]
    (edited,) = after_edit["messages"]
    assert edited["id"] == sent.message_id and edited["text"] == [{"t": "i", "c": ["Changed"]}]
    assert edited["edited"] == "edited"
    assert after_delete["messages"] == [] and after_delete["deleted"] == [sent.message_id]
    assert idle["messages"] == [] and idle["deleted"] == [] and idle["cursor"] == after_delete["cursor"]
    assert stale["reset"] is True  # a cursor from another run: draw afresh


async def test_a_long_poll_returns_when_the_bot_sends() -> None:
    async with running() as (_emulator, bot, client):
        start = await history(client)
        got: dict[str, Any] = {}

        async def poll() -> None:
            got.update(await history(client, start["cursor"], wait=20))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(poll)
            await trio.sleep(0.2)  # let the poll park (if it has not yet, it simply finds the message)
            await bot.send_message(YOU, "hello")
    assert [m["text"] for m in got["messages"]] == [["hello"]]


async def test_history_is_bounded_and_a_large_gap_resets() -> None:
    async with running() as (emulator, _bot, client):
        start = await history(client)
        you = emulator.user(YOU)
        for n in range(HISTORY_LIMIT + 5):
            you.send_text(f"m{n}")
        full = await history(client)
        gap = await history(client, start["cursor"])
    assert len(full["messages"]) == HISTORY_LIMIT
    assert full["messages"][-1]["text"] == [f"m{HISTORY_LIMIT + 4}"]
    assert gap["reset"] is True and len(gap["messages"]) == HISTORY_LIMIT


async def test_sending_text_and_commands_queues_the_updates_a_telegram_client_sends() -> None:
    async with running() as (emulator, _bot, client):
        command = await client.post("/webchat/api/send", json={"user": YOU, "text": "/start ref42"})
        text = await client.post("/webchat/api/send", json={"user": YOU, "text": "hello there"})
        shown = await history(client)
    updates = [u["message"] for u in emulator.pending_updates()]
    assert command.json()["ok"] and text.json()["ok"]
    assert updates[0]["text"] == "/start ref42"
    assert updates[0]["entities"] == [{"type": "bot_command", "offset": 0, "length": 6}]
    assert updates[0]["from"]["id"] == YOU
    assert updates[1]["text"] == "hello there" and "entities" not in updates[1]
    assert [(m["side"], m["text"]) for m in shown["messages"]] == [
        ("user", ["/start ref42"]), ("user", ["hello there"]),
    ]


async def test_pressing_a_button_sends_a_callback_query_and_returns_the_bots_answer() -> None:
    async with running() as (emulator, bot, client):
        sent = await bot.send_message(YOU, "Pick", reply_markup=keyboard())
        answer: dict[str, Any] = {}

        async def press() -> None:
            response = await client.post(
                "/webchat/api/press", json={"user": YOU, "message_id": sent.message_id, "row": 0, "column": 0}
            )
            answer.update(response.json())

        async with trio.open_nursery() as nursery:
            nursery.start_soon(press)
            update = await queued(emulator, "callback_query")
            await bot.answer_callback_query(update["callback_query"]["id"], text="Done", show_alert=True)
        url_button = await client.post(
            "/webchat/api/press", json={"user": YOU, "message_id": sent.message_id, "row": 0, "column": 1}
        )
        no_button = await client.post(
            "/webchat/api/press", json={"user": YOU, "message_id": sent.message_id, "row": 5, "column": 0}
        )
        emulator.user(YOU).send_text("mine")
        own = await client.post(
            "/webchat/api/press", json={"user": YOU, "message_id": sent.message_id + 1, "row": 0, "column": 0}
        )
    query = update["callback_query"]
    assert (query["data"], query["from"]["id"]) == ("buy:m1", YOU)
    assert query["message"]["message_id"] == sent.message_id
    assert answer == {"ok": True, "answer": {"text": "Done", "show_alert": True}}
    assert url_button.status_code == 400 and "no callback_data" in url_button.json()["error"]
    assert no_button.status_code == 400 and "no button at row 5" in no_button.json()["error"]
    assert own.status_code == 400 and "no bot message" in own.json()["error"]


async def test_paying_an_invoice_runs_the_stars_flow_once() -> None:
    async with running() as (emulator, bot, client):
        invoice = await bot.send_invoice(
            YOU, title="1 month", description="30 days of VPN", payload="intent-1", currency="XTR",
            prices=[LabeledPrice(label="1 month", amount=150)],
        )
        shown = await history(client)
        card_id = invoice.message_id
        paid: dict[str, Any] = {}

        async def pay() -> None:
            pay_body = {"user": YOU, "message_id": invoice.message_id}
            response = await client.post("/webchat/api/pay", json=pay_body)
            paid.update(response.json())

        async with trio.open_nursery() as nursery:
            nursery.start_soon(pay)
            update = await queued(emulator, "pre_checkout_query")
            meanwhile = await client.post("/webchat/api/pay", json={"user": YOU, "message_id": card_id})
            await bot.answer_pre_checkout_query(update["pre_checkout_query"]["id"], ok=True)
        after = await history(client, shown["cursor"])
        again = await client.post("/webchat/api/pay", json={"user": YOU, "message_id": invoice.message_id})
        not_invoice = await client.post("/webchat/api/pay", json={"user": YOU, "message_id": 999})

    (card,) = shown["messages"]
    assert card["invoice"] == {"title": "1 month", "description": "30 days of VPN", "amount": "⭐ 150"}
    assert card["keyboard"] == [[{"text": "Pay ⭐ 150", "kind": "pay"}]]  # Telegram's own pay button
    assert paid == {"ok": True, "paid": True, "reason": None}
    (charge,) = emulator.charges.values()
    assert (charge.user_id, charge.total_amount, charge.invoice_payload) == (YOU, 150, "intent-1")
    payment_update = [u["message"] for u in emulator.pending_updates() if "message" in u][-1]
    charge_id = payment_update["successful_payment"]["telegram_payment_charge_id"]
    assert charge_id == charge.telegram_payment_charge_id
    assert [m.get("payment") for m in after["messages"]] == ["✅ Paid ⭐ 150"]
    assert again.status_code == 409 and "already paid" in again.json()["error"]
    assert meanwhile.status_code == 409 and "being paid" in meanwhile.json()["error"]
    assert not_invoice.status_code == 400 and "is not an invoice" in not_invoice.json()["error"]


async def test_a_declined_payment_says_why_and_charges_nothing() -> None:
    async with running() as (emulator, bot, client):
        invoice = await bot.send_invoice(
            YOU, title="1 month", description="30 days", payload="intent-2", currency="XTR",
            prices=[LabeledPrice(label="1 month", amount=150)],
        )
        paid: dict[str, Any] = {}

        async def pay() -> None:
            pay_body = {"user": YOU, "message_id": invoice.message_id}
            response = await client.post("/webchat/api/pay", json=pay_body)
            paid.update(response.json())

        async with trio.open_nursery() as nursery:
            nursery.start_soon(pay)
            update = await queued(emulator, "pre_checkout_query")
            await bot.answer_pre_checkout_query(
                update["pre_checkout_query"]["id"], ok=False, error_message="Price changed"
            )
    assert paid == {"ok": True, "paid": False, "reason": "declined: Price changed"}
    assert not emulator.charges


async def test_photos_and_documents_are_served_with_their_type() -> None:
    png = qr_png("http://127.0.0.1:8080/sub/abc")
    async with running() as (_emulator, bot, client):
        await bot.send_photo(YOU, BufferedInputFile(png, filename="subscription.png"), caption="<b>Scan</b>",
                             parse_mode="HTML")
        await bot.send_document(YOU, BufferedInputFile(b"<script>x</script>", filename="page.html"))
        svg = b'<svg xmlns="http://www.w3.org/2000/svg"><script>alert(1)</script></svg>'
        await bot.send_document(YOU, BufferedInputFile(svg, filename="logo.svg"))
        photo, document, vector = (await history(client))["messages"]
        image = await client.get(photo["photo"]["url"])
        file = await client.get(document["document"]["url"])
        drawing = await client.get(vector["document"]["url"])
        unknown = await client.get("/webchat/file/EMUPnothing")
    assert photo["text"] == [{"t": "b", "c": ["Scan"]}]
    assert image.content == png and image.headers["content-type"] == "image/png"
    assert document["document"]["name"] == "page.html"
    # Uploaded HTML must not become a page of the emulator's origin.
    assert file.headers["content-disposition"].startswith("attachment")
    assert "sandbox" in file.headers["content-security-policy"]
    assert drawing.headers["content-type"] == "image/svg+xml"  # an image that can hold a script
    assert drawing.headers["content-disposition"] == "attachment; filename*=UTF-8''logo.svg"
    assert unknown.status_code == 404 and unknown.json()["ok"] is False


async def test_bad_requests_get_a_clear_json_error() -> None:
    async with running() as (_emulator, _bot, client):
        cases = {
            "unknown user": await client.get("/webchat/api/history", params={"user": 77}),
            "user not a number": await client.get("/webchat/api/history", params={"user": "x"}),
            "no user": await client.get("/webchat/api/history"),
            "bad cursor": await client.get("/webchat/api/history", params={"user": YOU, "since": "x"}),
            "long wait": await client.get("/webchat/api/history", params={"user": YOU, "wait": 3600}),
            "page for unknown user": await client.get("/webchat", params={"user": 77}),
            "unknown language": await client.get("/webchat", params={"lang": "de"}),
            "form body": await client.post("/webchat/api/send", data={"user": str(YOU), "text": "hi"}),
            "not json": await client.post("/webchat/api/send", content=b"{", headers={"content-type":
                                                                                      "application/json"}),
            "not an object": await client.post("/webchat/api/send", json=[YOU, "hi"]),
            "empty text": await client.post("/webchat/api/send", json={"user": YOU, "text": "  "}),
            "text too long": await client.post("/webchat/api/send", json={"user": YOU, "text": "x" * 4097}),
            "boolean id": await client.post("/webchat/api/press", json={"user": YOU, "message_id": True,
                                                                        "row": 0, "column": 0}),
            "huge body": await client.post("/webchat/api/send", content=json.dumps(
                {"user": YOU, "text": "x" * MAX_BODY_BYTES}), headers={"content-type": "application/json"}),
        }
    statuses = {name: response.status_code for name, response in cases.items()}
    assert statuses == {
        "unknown user": 404, "user not a number": 400, "no user": 400, "bad cursor": 400, "long wait": 400,
        "page for unknown user": 404, "unknown language": 400, "form body": 415, "not json": 400,
        "not an object": 400, "empty text": 400, "text too long": 400, "boolean id": 400, "huge body": 413,
    }
    for name, response in cases.items():
        body = response.json()
        assert body["ok"] is False and isinstance(body["error"], str) and body["error"], name
    assert "77" in cases["unknown user"].json()["error"]


# -- the page itself, in a real browser ------------------------------------------------------------

_BUBBLES = """[...document.querySelectorAll('#log .msg')].map(m => ({
  id: Number(m.dataset.id), side: m.classList.contains('bot') ? 'bot' : 'user', text: m.innerText}))"""


async def test_the_page_draws_bot_html_as_elements_and_follows_edits_deletions_and_answers() -> None:
    hostile = '&lt;img src=x onerror="document.title=1"&gt;'
    text = f'<b>Bold</b> <a href="https://example.org/x">site</a> {hostile} <tg-spoiler>secret</tg-spoiler>'
    async with running() as (emulator, bot, _client), open_browser() as browser:
        page = await browser.open(emulator.webchat_url())
        sent = await bot.send_message(YOU, text, parse_mode="HTML", reply_markup=keyboard())
        later = await bot.send_message(YOU, "later")
        await page.wait_for("document.querySelectorAll('#log .msg.bot').length === 2", what="two bubbles")
        drawn = await page.evaluate("""(() => { const m = document.querySelector('#log .msg.bot');
          const a = m.querySelector('.text a'); const url = m.querySelector('.keyboard a');
          return {bold: m.querySelector('b').textContent, link: [a.href, a.target, a.rel],
                  images: m.querySelectorAll('img').length, text: m.querySelector('.text').textContent,
                  spoiler: m.querySelector('.spoiler').textContent, url: [url.href, url.target],
                  inert: [...m.querySelectorAll('.keyboard button')].map(b => [b.textContent, b.disabled])};
        })()""")
        await page.evaluate("[...document.querySelectorAll('#log .keyboard button')][0].click()")
        update = await queued(emulator, "callback_query")
        await bot.answer_callback_query(update["callback_query"]["id"], text="Saved")
        toast = await page.wait_for(
            "(() => { const t = document.getElementById('toast'); return !t.hidden && t.textContent; })()",
            what="the answer's toast",
        )
        await bot.edit_message_text(
            "<i>Edited</i>", chat_id=YOU, message_id=sent.message_id, parse_mode="HTML"
        )
        await page.wait_for(WebChat.bot_bubbles_with("Edited"), what="the edit")
        after_edit = await page.evaluate(_BUBBLES)
        await bot.delete_message(YOU, sent.message_id)
        await page.wait_for("document.querySelectorAll('#log .msg.bot').length === 1", what="the deletion")
        after_delete = await page.evaluate(_BUBBLES)
        title = await page.evaluate("document.title")
        errors = browser.console_errors()

    assert drawn["bold"] == "Bold"
    assert drawn["link"] == ["https://example.org/x", "_blank", "noopener noreferrer"]
    assert drawn["images"] == 0 and '<img src=x onerror="document.title=1">' in drawn["text"]
    assert drawn["spoiler"] == "secret"
    assert drawn["url"] == ["https://example.org/", "_blank"]
    assert drawn["inert"] == [["Buy", False], ["App", True]]
    assert toast == "Saved"
    # The edit changed the bubble where it was: same ids, same order, new text.
    assert [(b["id"], b["side"]) for b in after_edit] == [(sent.message_id, "bot"), (later.message_id, "bot")]
    assert after_edit[0]["text"].startswith("Edited") and "edited" in after_edit[0]["text"]
    assert [b["id"] for b in after_delete] == [later.message_id]
    assert title == "Atlas · web chat" and errors == []


# -- the whole system, in a real browser -----------------------------------------------------------


_IMAGE_LOADED = """(() => { const img = document.querySelector('#log .msg.bot img');
  return img && img.complete && img.naturalWidth; })()"""


def _subscription_link(message_id: int) -> str:
    """JS: the href of the subscription URL in the bubble of ``message_id`` (null if none)."""
    selector = json.dumps(f'#log .msg[data-id="{message_id}"] a[href*="/sub/"]')
    return f"(() => {{ const a = document.querySelector({selector}); return a && a.href; }})()"


async def _stars_payments(tx: Tx) -> list[tuple[str, str]]:
    rows = await tx.fetch("SELECT provider, status FROM payments WHERE user_id = $1 LIMIT 5", YOU)
    return [(row["provider"], row["status"]) for row in rows]


async def _subscription(tx: Tx) -> tuple[str, str]:
    row = await tx.fetchrow("SELECT kind, token FROM subscriptions WHERE user_id = $1", YOU)
    assert row is not None
    return str(row["kind"]), str(row["token"])


@pytest.mark.slow
async def test_a_person_uses_the_bot_through_the_web_chat_in_chromium(
    bridge: None, fresh_database: str
) -> None:
    """/start, the trial, the QR code and the link, a plan bought with Stars, Help and a text: each
    screen where the bot shows it now — a press edits the message it was on (the same bubble,
    new text), a photo replaces a text screen, notices and the invoice come as new messages."""
    emulator = BotApiEmulator(bot_username="atlas_webchat_bot")
    in_place: dict[str, bool] = {}
    async with running_tree(fresh_database, emulator=emulator, seed=11) as tree, open_browser() as browser:
        db = tree.services.require_db()
        chat = WebChat(await browser.open(emulator.webchat_url(lang="en")))
        page = chat.page
        await chat.send("/start")
        await chat.wait_for_bot_text("Invite friends")

        # The trial: the menu it was pressed on becomes "My subscription"; the confirmation is a
        # notice below it.
        trial_screen = await chat.press("Free trial")
        in_place["trial"] = await chat.wait_for_edit(trial_screen, "Status: active (trial)")
        await chat.wait_for_bot_text("Your trial is on")
        after_trial = await chat.bubbles()
        link = await page.wait_for(_subscription_link(trial_screen), what="the subscription link")

        # The QR code: a text cannot become a photo, so that screen is deleted and a photo sent.
        await chat.press("QR code")
        qr_width = await page.wait_for(_IMAGE_LOADED, what="the QR photo, loaded")
        with_photo = await chat.bubbles()

        # The plans (from a menu sent in place of the photo), one plan, then a Stars invoice.
        await chat.press("Menu")
        await chat.wait_for_bot_text("Invite friends")
        screen = await chat.press("Plans")
        in_place["plans"] = await chat.wait_for_edit(screen, "12 months")
        assert await chat.press("1 month") == screen
        in_place["plan"] = await chat.wait_for_edit(screen, "How would you like to pay?")
        assert await chat.press("Telegram Stars") == screen
        await chat.wait_for_bot_text("VPN access: 1 month, 30 days.")  # the invoice's description
        await chat.press("Pay ⭐")  # the invoice's own button: pre-checkout, then the payment
        await chat.wait_for_bot_text("Payment received", within=60)
        paid_bubble = await page.evaluate("document.querySelector('#log .msg.user .payment').textContent")

        # The paid subscription, reached from the plan screen: back, menu, "My subscription".
        assert await chat.press("Back") == screen
        in_place["back"] = await chat.wait_for_edit(screen, "12 months")
        assert await chat.press("Menu") == screen
        in_place["menu"] = await chat.wait_for_edit(screen, "Invite friends")
        assert await chat.press("My subscription") == screen
        in_place["paid"] = await chat.wait_for_edit(screen, "Status: active (paid)")

        # Help, then a text the bot does not understand (a new message: nothing was pressed).
        assert await chat.press("Menu") == screen
        await chat.wait_for_edit(screen, "Invite friends")
        assert await chat.press("Help") == screen
        in_place["help"] = await chat.wait_for_edit(screen, "/promo CODE")
        await chat.send("hello there")
        await chat.wait_for_bot_text("I did not understand that")
        final = await chat.bubbles()

        applied = await db.run(_stars_payments)
        kind, token = await db.run(_subscription)
        errors = browser.console_errors()

    # Every screen after a press was the pressed message itself, edited: the same element.
    assert in_place == dict.fromkeys(["trial", "plans", "plan", "back", "menu", "paid", "help"], True)
    # The trial's press added no message: /start, the greeting, the menu now the subscription,
    # the notice.
    assert [b["side"] for b in after_trial] == ["user", "bot", "bot", "bot"]
    assert after_trial[2]["id"] == trial_screen and "My subscription" in after_trial[2]["text"]
    assert "Your trial is on" in after_trial[3]["text"] and "Balance:" not in after_trial[2]["text"]
    # The QR press: the subscription text gone, the photo below the notice.
    assert [b["id"] for b in with_photo][:3] == [b["id"] for b in after_trial if b["id"] != trial_screen]
    assert len(with_photo) == 4 and "Scan this QR code" in with_photo[3]["text"]
    assert qr_width > 100  # the PNG the bot uploaded, served by the emulator and drawn by chromium
    assert link.startswith(tree.services.settings.public_base_url)
    assert link[link.index("/sub/"):] == f"/sub/{token}"
    assert paid_bubble.startswith("✅ Paid ⭐ 150")
    assert applied == [("stars", "applied")] and kind == "paid"
    # What the chat shows at the end, in order: one screen (the menu sent for the photo, now the
    # help), the invoice, the payment, its notice, and the text with its answer.
    expected = [
        ("user", "/start"), ("bot", "Hi, You"), ("bot", "Your trial is on"), ("bot", "/promo CODE"),
        ("bot", "VPN: 1 month"), ("user", "✅ Paid ⭐ 150"), ("bot", "Payment received"),
        ("user", "hello there"), ("bot", "I did not understand that"),
    ]  # fmt: skip
    shown = [(b["side"], b["text"]) for b in final]
    assert len(shown) == len(expected), shown
    assert all(side == s and text in t for (s, t), (side, text) in zip(shown, expected, strict=True)), shown
    assert errors == []  # no script error, no Content-Security-Policy violation
