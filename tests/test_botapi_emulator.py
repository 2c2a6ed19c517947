"""The Bot API emulator, driven by the real aiogram Bot over real HTTP (its httpx session, on trio)."""

from __future__ import annotations

import struct
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest
import trio
from aiogram import Bot
from aiogram.exceptions import (
    TelegramBadRequest,
    TelegramConflictError,
    TelegramForbiddenError,
    TelegramRetryAfter,
    TelegramServerError,
    TelegramUnauthorizedError,
)
from aiogram.types import BufferedInputFile, InlineKeyboardButton, InlineKeyboardMarkup, LabeledPrice
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

import atlas.testing.botapi as botapi
from atlas.net import ConnectionHeldAcrossIO, holding_connection
from atlas.telegram.chat_gate import chat_gate_of
from atlas.telegram.session import GuardedHttpxSession, make_bot
from atlas.testing.botapi import BotApiEmulator, PaymentOutcome, RateLimits, ScriptError, max_in_window
from atlas.testing.botapi._validate import plain_text
from atlas.testing.botapi.errors import ApiError
from atlas.testing.botapi.rates import COUNTED_BY, Limit, kind_of_send
from atlas.testing.botapi.records import SendKind
from atlas.web.server import serve_asgi


@asynccontextmanager
async def running(**options: Any) -> AsyncIterator[tuple[BotApiEmulator, Bot]]:
    emulator = BotApiEmulator(**options)
    async with trio.open_nursery() as nursery:
        base = await nursery.start(emulator.serve)
        bot = make_bot(emulator.token, base)
        try:
            yield emulator, bot
        finally:
            await bot.session.close()
        nursery.cancel_scope.cancel()


def keyboard() -> InlineKeyboardMarkup:
    return InlineKeyboardMarkup(
        inline_keyboard=[
            [
                InlineKeyboardButton(text="Buy", callback_data="buy:1m"),
                InlineKeyboardButton(text="Site", url="https://example.org/"),
            ]
        ]
    )


def tiny_png(width: int, height: int) -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    rows = b"".join(b"\x00" + b"\xff\xff\xff" * width for _ in range(height))
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(rows))
        + chunk(b"IEND", b"")
    )


async def test_get_me_auth_unknown_method_and_json_bodies() -> None:
    async with running(bot_username="vpn_bot") as (emulator, bot):
        me = await bot.get_me()
        assert (me.id, me.is_bot, me.username) == (emulator.bot_id, True, "vpn_bot")

        wrong = make_bot("999:wrong-token", emulator.url)
        with pytest.raises(TelegramUnauthorizedError):
            await wrong.get_me()
        await wrong.session.close()

        alice = emulator.add_user(1001, "Alice")
        async with httpx.AsyncClient(base_url=emulator.url) as client:
            unknown = await client.post(f"/bot{emulator.token}/sendPigeon", data={"chat_id": "1"})
            assert unknown.status_code == 404
            assert unknown.json() == {"ok": False, "error_code": 404, "description": "Not Found"}
            # Other clients send JSON bodies; the emulator takes them like Telegram does.
            sent = await client.post(
                f"/bot{emulator.token}/sendMessage", json={"chat_id": alice.id, "text": "hi"}
            )
            assert sent.json()["ok"] is True
            assert sent.json()["result"]["text"] == "hi"
            assert (await client.get(f"/bot{emulator.token}/getMe")).json()["result"]["id"] == emulator.bot_id
        assert emulator.calls["getMe"] == 2  # the wrong token was refused before the method


async def test_send_message_records_inline_keyboard_and_validates_like_telegram() -> None:
    async with running() as (emulator, bot):
        alice = emulator.add_user(1001, "Alice", username="alice")
        sent = await bot.send_message(
            alice.id, "<b>Plans</b> &amp; prices", parse_mode="HTML", reply_markup=keyboard()
        )
        assert sent.text == "Plans & prices"
        assert sent.from_user is not None and sent.from_user.id == emulator.bot_id
        assert sent.reply_markup is not None
        assert sent.reply_markup.model_dump(exclude_none=True) == keyboard().model_dump(exclude_none=True)

        record = await alice.next_message(within=1)
        assert record.kind == "message"
        assert (record.message_id, record.text, record.plain_text) == (
            sent.message_id,
            "<b>Plans</b> &amp; prices",
            "Plans & prices",
        )
        assert record.reply_markup == {
            "inline_keyboard": [
                [
                    {"text": "Buy", "callback_data": "buy:1m"},
                    {"text": "Site", "url": "https://example.org/"},
                ]
            ]
        }
        assert record.button_texts() == ["Buy", "Site"]

        second = await bot.send_message("@alice", "again")
        assert second.message_id == sent.message_id + 1

        with pytest.raises(TelegramBadRequest, match="can't parse entities"):
            await bot.send_message(alice.id, "1 < 2 <b>x", parse_mode="HTML")
        too_long = InlineKeyboardMarkup(
            inline_keyboard=[[InlineKeyboardButton(text="x", callback_data="d" * 65)]]
        )
        with pytest.raises(TelegramBadRequest, match="BUTTON_DATA_INVALID"):
            await bot.send_message(alice.id, "x", reply_markup=too_long)
        with pytest.raises(TelegramBadRequest, match="chat not found"):
            await bot.send_message(424242, "nobody")
        with pytest.raises(TelegramBadRequest, match="message text is empty"):
            await bot.send_message(alice.id, "<b></b>", parse_mode="HTML")
        assert [r.kind for r in alice.chat_log()] == ["message", "message"]  # refused calls left no trace


@pytest.mark.parametrize(
    ("html", "plain"),
    [
        ('<b>bold</b> <i>it</i> <a href="https://x.y">link</a>', "bold it link"),
        ("a &lt;tag&gt; &amp; &quot;q&quot; &#65;", 'a <tag> & "q" A'),
        ('<span class="tg-spoiler">s</span><tg-spoiler>t</tg-spoiler>', "st"),
        ("AT&T", "AT&T"),
    ],
)
def test_html_plain_text(html: str, plain: str) -> None:
    assert plain_text(html, "HTML") == plain


@pytest.mark.parametrize(
    ("html", "fragment"),
    [
        ("<b>x</i>", 'Unmatched end tag at byte offset 4, expected "</b>", found "</i>"'),
        ("<b>x", 'Can\'t find end tag corresponding to start tag "b"'),
        ("Ёж <script>", 'Unsupported start tag "script" at byte offset 5'),
        ("a < b", 'Unsupported start tag "" at byte offset 2'),
    ],
)
def test_html_errors_are_worded_like_telegram(html: str, fragment: str) -> None:
    with pytest.raises(ApiError) as caught:
        plain_text(html, "HTML")
    assert caught.value.code == 400
    assert fragment in caught.value.description


async def test_start_reaches_bot_through_get_updates_with_offset_confirmation() -> None:
    async with running() as (emulator, bot):
        alice = emulator.add_user(1001, "Alice", language_code="ru")
        update_id = alice.send_command("/start", "ref42")

        first = await bot.get_updates()
        assert [u.update_id for u in first] == [update_id]
        message = first[0].message
        assert message is not None and message.from_user is not None
        assert message.text == "/start ref42"
        assert message.entities is not None
        assert (message.entities[0].type, message.entities[0].offset, message.entities[0].length) == (
            "bot_command",
            0,
            6,
        )
        assert (message.from_user.id, message.from_user.language_code, message.chat.id) == (1001, "ru", 1001)

        again = await bot.get_updates()  # not confirmed yet: delivered again
        assert [u.update_id for u in again] == [update_id]
        assert await bot.get_updates(offset=update_id + 1) == []
        assert emulator.pending_updates() == []

        # A long poll returns as soon as an update arrives, not when its timeout ends.
        got: list[Any] = []

        async def poll() -> None:
            got.extend(await bot.get_updates(offset=update_id + 1, timeout=30))

        started = trio.current_time()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(poll)
            await emulator.wait_for_long_poll()
            alice.send_text("hello")
        assert trio.current_time() - started < 5
        assert [u.message.text for u in got if u.message] == ["hello"]

        # A second poller ends the parked one with 409, as Telegram does with two bot instances.
        conflict: list[BaseException] = []

        async def parked() -> None:
            try:
                await bot.get_updates(offset=got[0].update_id + 1, timeout=30)
            except TelegramConflictError as exc:
                conflict.append(exc)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(parked)
            await emulator.wait_for_long_poll()
            assert await bot.get_updates(offset=got[0].update_id + 1) == []
        assert conflict and "terminated by other getUpdates request" in str(conflict[0])


async def test_callback_press_round_trip_edit_and_delete() -> None:
    async with running() as (emulator, bot):
        alice = emulator.add_user(1001, "Alice")
        sent = await bot.send_message(alice.id, "Choose", reply_markup=keyboard())

        query_id = alice.press("Buy")
        updates = await bot.get_updates()
        callback = updates[0].callback_query
        assert callback is not None and callback.message is not None
        assert (callback.id, callback.data, callback.from_user.id) == (query_id, "buy:1m", alice.id)
        assert callback.message.message_id == sent.message_id

        assert await bot.answer_callback_query(query_id, text="Done") is True
        answer = await alice.callback_answer(query_id, within=1)
        assert (answer.text, answer.data, answer.show_alert) == ("Done", "buy:1m", False)
        with pytest.raises(TelegramBadRequest, match="query is too old"):
            await bot.answer_callback_query(query_id)
        with pytest.raises(ScriptError, match="no callback_data"):
            alice.press("Site")

        edited = await bot.edit_message_text("Bought", chat_id=alice.id, message_id=sent.message_id)
        assert not isinstance(edited, bool) and edited.text == "Bought" and edited.reply_markup is None
        with pytest.raises(TelegramBadRequest, match="message is not modified"):
            await bot.edit_message_text("Bought", chat_id=alice.id, message_id=sent.message_id)
        with pytest.raises(ScriptError, match="no inline button"):
            alice.press("Buy")  # the edit without reply_markup removed the keyboard, as on Telegram

        await bot.edit_message_reply_markup(
            chat_id=alice.id, message_id=sent.message_id, reply_markup=keyboard()
        )
        assert await bot.delete_message(alice.id, sent.message_id) is True
        with pytest.raises(TelegramBadRequest, match="message to delete not found"):
            await bot.delete_message(alice.id, sent.message_id)
        assert [r.kind for r in alice.chat_log()] == ["message", "edit_text", "edit_markup", "delete"]
        assert (await alice.next_record(within=1)).kind == "message"
        assert (await alice.next_record(within=1)).kind == "edit_text"


async def test_send_photo_and_document_from_bytes_are_recorded() -> None:
    async with running() as (emulator, bot):
        alice = emulator.add_user(1001, "Alice")
        png = tiny_png(3, 2)
        photo = await bot.send_photo(
            alice.id, BufferedInputFile(png, "qr.png"), caption="<i>Your key</i>", parse_mode="HTML"
        )
        assert photo.photo is not None and photo.caption == "Your key"
        record = await alice.next_message(within=1)
        assert record.kind == "photo" and record.file is not None
        assert (record.file.filename, record.file.size, record.file.source) == ("qr.png", len(png), "upload")
        assert (record.file.width, record.file.height) == (3, 2)
        assert record.plain_text == "Your key"

        again = await bot.send_photo(alice.id, photo.photo[-1].file_id)
        assert again.photo is not None and again.photo[-1].file_id == photo.photo[-1].file_id
        assert (await alice.next_message(within=1)).file.source == "file_id"  # type: ignore[union-attr]
        with pytest.raises(TelegramBadRequest, match="wrong file identifier"):
            await bot.send_photo(alice.id, "no-such-file-id")

        csv = b"id,name\n1,alice\n"
        document = await bot.send_document(alice.id, BufferedInputFile(csv, "export.csv"))
        assert document.document is not None and document.document.file_name == "export.csv"
        record = await alice.next_message(within=1)
        assert record.kind == "document" and record.file is not None
        assert (record.file.filename, record.file.size) == ("export.csv", len(csv))


async def _pay_while_bot_answers(
    emulator: BotApiEmulator, bot: Bot, pay: Callable[[], Awaitable[PaymentOutcome]], *, ok: bool
) -> tuple[PaymentOutcome, int]:
    """Run a scripted payment while acting as the bot: answer its pre_checkout_query."""
    outcome: list[PaymentOutcome] = []

    async def run_payment() -> None:
        outcome.append(await pay())

    async with trio.open_nursery() as nursery:
        nursery.start_soon(run_payment)
        updates = await bot.get_updates(timeout=5)
        query = updates[-1].pre_checkout_query
        assert query is not None
        if ok:
            await bot.answer_pre_checkout_query(query.id, ok=True)
        else:
            await bot.answer_pre_checkout_query(query.id, ok=False, error_message="Sold out")
    return outcome[0], updates[-1].update_id


async def test_stars_invoice_pre_checkout_successful_payment_and_refund() -> None:
    async with running() as (emulator, bot):
        alice = emulator.add_user(1001, "Alice")
        await bot.send_invoice(
            alice.id,
            title="1 month",
            description="VPN for 30 days",
            payload="plan:1m:u1001",
            currency="XTR",
            prices=[LabeledPrice(label="1 month", amount=150)],
        )
        invoice_record = await alice.next_message(within=1)
        assert invoice_record.kind == "invoice" and invoice_record.invoice is not None
        assert (invoice_record.invoice.total_amount, invoice_record.invoice.payload) == (150, "plan:1m:u1001")

        outcome, last_id = await _pay_while_bot_answers(
            emulator, bot, lambda: alice.pay_stars(invoice_record), ok=True
        )
        assert outcome.ok and outcome.charge is not None and outcome.answer is not None
        assert outcome.answer.in_time and 0 <= outcome.answer.elapsed < 10

        updates = await bot.get_updates(offset=last_id + 1, timeout=5)
        payment = updates[0].message.successful_payment if updates[0].message else None
        assert payment is not None
        assert (payment.currency, payment.total_amount, payment.invoice_payload) == (
            "XTR",
            150,
            "plan:1m:u1001",
        )
        assert payment.telegram_payment_charge_id == outcome.charge.telegram_payment_charge_id
        assert payment.provider_payment_charge_id

        charge_id = payment.telegram_payment_charge_id
        assert await bot.refund_star_payment(alice.id, charge_id) is True
        with pytest.raises(TelegramBadRequest, match="CHARGE_ALREADY_REFUNDED"):
            await bot.refund_star_payment(alice.id, charge_id)
        with pytest.raises(TelegramBadRequest, match="CHARGE_NOT_FOUND"):
            await bot.refund_star_payment(alice.id, "stx-never-issued")
        assert [r.telegram_payment_charge_id for r in emulator.refunds] == [charge_id]

        # A second payment of the same invoice gets its own, unique charge id.
        second, _ = await _pay_while_bot_answers(
            emulator, bot, lambda: alice.pay_stars(invoice_record), ok=True
        )
        assert second.charge is not None and second.charge.telegram_payment_charge_id != charge_id


async def test_stars_validation_declined_payment_and_subscription_link() -> None:
    async with running() as (emulator, bot):
        alice = emulator.add_user(1001, "Alice")
        base: dict[str, Any] = dict(title="1 month", description="VPN", payload="p", currency="XTR")
        with pytest.raises(TelegramBadRequest, match="STARS_INVOICE_INVALID"):
            await bot.send_invoice(alice.id, **base, prices=[LabeledPrice(label="a", amount=1)] * 2)
        with pytest.raises(TelegramBadRequest, match="STARS_INVOICE_INVALID"):
            await bot.send_invoice(
                alice.id, **base, provider_token="tok", prices=[LabeledPrice(label="a", amount=1)]
            )
        with pytest.raises(TelegramBadRequest, match="INVOICE_PAYLOAD_INVALID"):
            await bot.send_invoice(
                alice.id, **{**base, "payload": "x" * 129}, prices=[LabeledPrice(label="a", amount=1)]
            )
        assert alice.chat_log() == [] and emulator.invoices == ()

        link = await bot.create_invoice_link(
            **base, prices=[LabeledPrice(label="month", amount=100)], subscription_period=2592000
        )
        declined, last_id = await _pay_while_bot_answers(
            emulator, bot, lambda: alice.pay_stars(link), ok=False
        )
        assert not declined.ok and declined.charge is None and declined.reason == "declined: Sold out"
        assert await bot.get_updates(offset=last_id + 1) == []  # no successful_payment

        paid, last_id = await _pay_while_bot_answers(emulator, bot, lambda: alice.pay_stars(link), ok=True)
        updates = await bot.get_updates(offset=last_id + 1)
        payment = updates[0].message.successful_payment if updates[0].message else None
        assert (
            paid.ok and payment is not None and payment.is_recurring and payment.subscription_expiration_date
        )

        unanswered = await alice.pay_stars(link, answer_timeout=0.05)
        assert not unanswered.ok and "did not answer" in (unanswered.reason or "")
        with pytest.raises(TelegramBadRequest, match="query is too old"):
            await bot.answer_pre_checkout_query(unanswered.query_id, ok=True)
        assert emulator.pre_checkout_answers[-1].in_time is False


async def test_injected_faults_surface_as_aiogram_errors() -> None:
    async with running() as (emulator, bot):
        alice = emulator.add_user(1001, "Alice")
        bob = emulator.add_user(1002, "Bob")
        fault = emulator.inject("sendMessage", chat_id=alice.id, error=429, retry_after=7)
        with pytest.raises(TelegramRetryAfter) as caught:
            await bot.send_message(alice.id, "hi")
        assert caught.value.retry_after == 7
        assert (fault.hits, fault.live) == (1, False)
        await bot.send_message(bob.id, "not faulted")
        await bot.send_message(alice.id, "the fault was used up")
        assert emulator.served_429 == 1
        assert [s.accepted for s in emulator.send_stamps] == [False, True, True]

        alice.block_bot()
        with pytest.raises(TelegramForbiddenError, match="bot was blocked by the user"):
            await bot.send_message(alice.id, "hi")
        alice.send_command("/start")  # restarting the bot unblocks it
        await bot.send_message(alice.id, "welcome back")

        emulator.inject(None, chat_id=bob.id, error=403, count=2)
        for _ in range(2):
            with pytest.raises(TelegramForbiddenError):
                await bot.send_message(bob.id, "hi")
        emulator.inject("sendMessage", error=400, description="Bad Request: chat not found")
        with pytest.raises(TelegramBadRequest, match="chat not found"):
            await bot.send_message(bob.id, "hi")

        emulator.fail_all_5xx(True)
        with pytest.raises(TelegramServerError):
            await bot.get_me()
        emulator.fail_all_5xx(False)
        assert (await bot.get_me()).id == emulator.bot_id
        with pytest.raises(ValueError, match="retry_after"):
            emulator.inject("sendMessage", error=429, retry_after=0)


async def test_webhook_delivers_with_secret_header_and_retries_non_2xx() -> None:
    received: list[tuple[str | None, dict[str, Any]]] = []

    async def hook(request: Request) -> Response:
        received.append((request.headers.get("x-telegram-bot-api-secret-token"), await request.json()))
        return Response(status_code=500 if len(received) <= 2 else 200)

    receiver = Starlette(routes=[Route("/hook", hook, methods=["POST"])])
    async with running(webhook_first_retry=0.01) as (emulator, bot), trio.open_nursery() as nursery:
        hook_base = await nursery.start(serve_asgi, receiver)
        alice = emulator.add_user(1001, "Alice")
        assert await bot.set_webhook(
            f"{hook_base}/hook", secret_token="s3cret_-", drop_pending_updates=True
        )
        with pytest.raises(TelegramConflictError, match="webhook is active"):
            await bot.get_updates()

        update_id = alice.send_text("hi")
        await emulator.wait_until_delivered(within=5)
        assert [a.status for a in emulator.webhook_attempts] == [500, 500, 200]
        assert {a.secret_token for a in emulator.webhook_attempts} == {"s3cret_-"}
        assert [(secret, body["update_id"]) for secret, body in received] == [("s3cret_-", update_id)] * 3
        assert received[-1][1]["message"]["text"] == "hi"
        info = await bot.get_webhook_info()
        assert info.url == f"{hook_base}/hook" and info.pending_update_count == 0
        assert info.last_error_message is not None and "500" in info.last_error_message

        with pytest.raises(TelegramBadRequest, match="secret token contains unallowed characters"):
            await bot.set_webhook(f"{hook_base}/hook", secret_token="no spaces")
        assert await bot.delete_webhook() is True
        second = alice.send_text("polling again")
        assert [u.update_id for u in await bot.get_updates()] == [second]
        nursery.cancel_scope.cancel()


def test_max_in_window_is_half_open() -> None:
    assert max_in_window([i / 32 for i in range(64)], 1.0) == 32  # exactly 32/s reads as 32
    assert max_in_window([0.0, 0.2, 0.4, 0.6, 0.8, 1.0], 1.0) == 5
    assert max_in_window([0.0, 5.0, 5.5, 5.9, 7.0], 1.0) == 3
    assert max_in_window([], 1.0) == 0


def _ungated(bot: Bot) -> Bot:
    """``bot`` without its per-chat gate: these tests drive the emulator's limits, not the bot's."""
    gate = chat_gate_of(bot)
    assert gate is not None
    bot.session.middleware.unregister(gate)
    return bot


async def test_rates_measured_for_a_known_burst_and_enforced_when_asked() -> None:
    async with running() as (emulator, bot):
        _ungated(bot)
        alice, bob = emulator.add_user(1001, "Alice"), emulator.add_user(1002, "Bob")
        for i in range(5):
            await bot.send_message(alice.id, f"a{i}")
        for i in range(3):
            await bot.send_message(bob.id, f"b{i}")
        await bot.get_me()  # not a send: not counted
        assert len(emulator.send_stamps) == 8
        assert emulator.max_global_rate(window=1.0) == 8
        assert emulator.max_per_chat_rate(window=1.0) == 5
        assert emulator.max_per_chat_rate(window=1e-9) == 1

    limits = RateLimits(global_per_window=3, per_chat_per_window=1, window=1.0)
    async with running(enforce_limits=True, limits=limits) as (emulator, bot):
        _ungated(bot)
        users = [emulator.add_user(2000 + i, f"U{i}") for i in range(4)]
        await bot.send_message(users[0].id, "one")
        with pytest.raises(TelegramRetryAfter) as per_chat:
            await bot.send_message(users[0].id, "too soon for this chat")
        assert per_chat.value.retry_after == 1
        await bot.send_message(users[1].id, "two")
        await bot.send_message(users[2].id, "three")
        with pytest.raises(TelegramRetryAfter):
            await bot.send_message(users[3].id, "over the global limit")
        assert emulator.served_429 == 2
        assert emulator.max_global_rate(accepted_only=True) == 3
        assert emulator.max_per_chat_rate(accepted_only=True) == 1


@pytest.mark.parametrize(
    ("last_update_at", "now", "kind"),
    [
        (None, 100.0, SendKind.BULK),  # the chat never wrote to the bot: a notification
        (95.0, 100.0, SendKind.REPLY),  # it wrote 5 s ago: the bot is answering it
        (90.0, 100.0, SendKind.BULK),  # 10 s ago: bulk again (reply_window is 10 s)
    ],
)
def test_a_send_is_a_reply_while_its_chat_talks_to_the_bot(
    last_update_at: float | None, now: float, kind: SendKind
) -> None:
    assert kind_of_send(now, last_update_at, RateLimits().reply_window) is kind
    assert Limit.PER_CHAT in COUNTED_BY[kind]  # every message counts in its chat
    assert (Limit.GLOBAL in COUNTED_BY[kind]) is (kind is SendKind.BULK)  # only bulk counts in the 30/s


async def test_replies_to_users_who_talk_to_the_bot_are_outside_the_bulk_limit() -> None:
    limits = RateLimits(global_per_window=2, per_chat_per_window=1, window=1.0)
    async with running(enforce_limits=True, limits=limits) as (emulator, bot):
        _ungated(bot)
        talker, *quiet = [emulator.add_user(4000 + i, f"T{i}") for i in range(4)]
        talker.send_text("hi")
        await bot.send_message(quiet[0].id, "bulk one")
        await bot.send_message(quiet[1].id, "bulk two")
        with pytest.raises(TelegramRetryAfter):
            await bot.send_message(quiet[2].id, "bulk three: over the 2/s")
        await bot.send_message(talker.id, "a reply is not bulk")  # accepted in the same second
        with pytest.raises(TelegramRetryAfter):
            await bot.send_message(talker.id, "but its chat's 1/s holds")
        kinds = [(s.chat_id, s.kind, s.accepted) for s in emulator.send_stamps]
        assert kinds[-2:] == [(talker.id, SendKind.REPLY, True), (talker.id, SendKind.REPLY, False)]
        assert emulator.max_global_rate(accepted_only=True) == 2
        assert emulator.max_global_rate(accepted_only=True, replies=True) == 3


async def test_a_send_whose_body_arrives_late_is_stamped_and_limited_when_it_is_complete() -> None:
    """A slow request (its body trickling in) must not be judged at the moment its headers came:
    checked against "now" = then, after later sends had moved the window on, it slipped in and
    put a third send into a second that already held two."""
    limits = RateLimits(global_per_window=2, per_chat_per_window=1, window=1.0)
    async with running(enforce_limits=True, limits=limits) as (emulator, bot):
        users = [emulator.add_user(3000 + i, f"C{i}") for i in range(4)]
        url = f"{emulator.url}/bot{emulator.token}/sendMessage"
        body = f"chat_id={users[0].id}&text=late".encode()

        async def trickle() -> AsyncIterator[bytes]:
            yield body[:8]
            await trio.sleep(3.5)  # two quick sends, then a third after their second is over
            yield body[8:]

        async def slow_send() -> None:
            async with httpx.AsyncClient() as client:
                headers = {"content-type": "application/x-www-form-urlencoded"}
                await client.post(url, content=trickle(), headers=headers, timeout=30)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(slow_send)
            await trio.sleep(0.3)
            await bot.send_message(users[1].id, "quick one")
            await bot.send_message(users[2].id, "quick two")
            await trio.sleep(2.7)
            await bot.send_message(users[3].id, "a second later")
    assert len(emulator.send_stamps) == 4
    assert emulator.max_global_rate(accepted_only=True) <= 2, emulator.send_stamps


async def test_guarded_session_refuses_telegram_calls_inside_a_unit_of_work() -> None:
    async with running() as (emulator, bot):
        assert isinstance(bot.session, GuardedHttpxSession)

        async def inside_unit() -> None:
            # The context variable is set in the task that makes the call.
            with holding_connection("apply_payment"):
                await bot.get_me()

        with pytest.raises(ConnectionHeldAcrossIO, match=r"Telegram getMe.*apply_payment"):
            await inside_unit()
        assert emulator.calls["getMe"] == 0  # refused before any I/O
        assert (await bot.get_me()).id == emulator.bot_id

    production = make_bot("123:abc")
    assert production.session.api.base.startswith("https://api.telegram.org/")


def test_public_names_are_reexported() -> None:
    classes = [name for name in dir(botapi) if isinstance(getattr(botapi, name), type)]
    assert {"BotApiEmulator", "EmulatedUser", "ChatRecord", "RateLimits", "NothingInTime"} <= set(classes)
    for name in classes:
        assert getattr(botapi, name).__module__.startswith("atlas.testing.botapi."), name
