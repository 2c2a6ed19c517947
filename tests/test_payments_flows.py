"""Payments applied exactly once: the Crypto Pay webhook and watcher, and Telegram Stars, end to end.

Real PostgreSQL; the Crypto Pay emulator over real HTTP (its webhooks hit our route served by
Hypercorn on 127.0.0.1); the Bot API emulator with the real aiogram Bot for Stars.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import json
import logging
import random
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, cast

import httpx
import pytest
import trio
from aiogram import Bot
from aiogram.types import LabeledPrice
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from atlas.actors.payment_watcher import PaymentWatcher
from atlas.clock import Clock
from atlas.payments import CryptoPayClient, Invoice
from atlas.payments.checkout import open_cryptopay_invoice
from atlas.payments.stars import StarsLedgerNotCorrected, refund_stars_payment, send_stars_invoice
from atlas.storage import Database, DatabaseUnavailable
from atlas.storage.units import PaymentIntent, RefundRefused, create_payment_intent
from atlas.supervision import Backoff, CrashReporter, RingSink
from atlas.telegram import PollingIntake, PollingSettings, UpdateDispatcher, build_dispatcher, make_bot
from atlas.telegram.i18n import t
from atlas.telegram.routers import payments as payments_router
from atlas.testing.botapi import BotApiEmulator
from atlas.testing.cryptopay_emulator import CryptoPayEmulator
from atlas.web.cryptopay_webhook import cryptopay_webhook_route
from atlas.web.server import serve_asgi
from tests._money_support import ADMIN, NOW, POLICY, RUB, TTL, add_user, rows, scalar, setup_catalog, snapshot

TOKEN = "12345:AAcryptoPayTestToken"
HOOK = "/webhooks/cryptopay/s3cret"


class SwitchDb:
    """The real database, or an outage / a hang of it, switchable from the test."""

    def __init__(self, db: Database) -> None:
        self.db = db
        self.down = False
        self.hang = False
        self.fail_units: set[str] = set()

    def as_db(self) -> Database:
        """This wrapper where a :class:`Database` is expected (it only needs ``run``)."""
        return cast(Database, self)

    async def run(self, unit: Any, **kwargs: Any) -> Any:
        if self.hang:
            await trio.sleep_forever()
        if self.down or unit.__name__ in self.fail_units:
            raise DatabaseUnavailable(f"unit {unit.__name__!r}: injected outage")
        return await self.db.run(unit, **kwargs)


@dataclass
class Crypto:
    emulator: CryptoPayEmulator
    client: CryptoPayClient
    db: SwitchDb
    clock: Clock
    web_url: str

    def watcher(self, *, clock: Clock | None = None, batch: int = 2) -> PaymentWatcher:
        return PaymentWatcher(
            db=self.db.as_db,
            client=self.client,
            clock=clock or self.clock,
            rng=random.Random(1),
            referral_policy=POLICY,
            balance_currency=RUB,
            period=60.0,
            batch=batch,
            expiry_grace=dt.timedelta(minutes=5),
            backoff=Backoff(initial=0.05, factor=2.0, maximum=0.2, jitter=0.0),
        )

    async def intent(self, user_id: int, *, amount: int = 50_000) -> PaymentIntent:
        return await self.db.as_db().run(
            create_payment_intent,
            user_id=user_id,
            provider="cryptopay",
            purpose="topup",
            amount_minor=amount,
            currency=RUB,
            balance_currency=RUB,
            ttl=TTL,
            now=self.clock.now(),
        )

    async def invoice(self, intent: PaymentIntent) -> Invoice:
        return await open_cryptopay_invoice(
            self.db.as_db(),
            self.client,
            intent,
            clock=self.clock,
            accepted_assets=["USDT", "TON"],
            description="Atlas top-up",
        )


@asynccontextmanager
async def crypto(db: Database, **emulator_options: Any) -> AsyncIterator[Crypto]:
    clock = Clock(NOW)
    switch = SwitchDb(db)
    emulator_options.setdefault("webhook_max_attempts", 1)
    emulator = CryptoPayEmulator(TOKEN, clock=clock, webhook_backoff=0.05, **emulator_options)
    route = cryptopay_webhook_route(
        HOOK,
        token=TOKEN,
        db_provider=switch.as_db,
        clock=clock,
        referral_policy=POLICY,
        balance_currency=RUB,
    )
    async with trio.open_nursery() as nursery:
        api_url = await nursery.start(emulator.run)
        web_url = await nursery.start(serve_asgi, Starlette(routes=[route]))
        emulator.webhook_url = web_url + HOOK
        async with CryptoPayClient(TOKEN, base_url=api_url, timeout=5.0) as client:
            yield Crypto(emulator, client, switch, clock, web_url)
        nursery.cancel_scope.cancel()


async def payment_row(db: Database, payment_id: int) -> dict[str, Any]:
    found = await rows(
        db, "SELECT status, status_reason, external_id FROM payments WHERE id = $1 LIMIT 1", payment_id
    )
    return found[0]


async def ledger_of(db: Database, user_id: int) -> list[tuple[int, str]]:
    found = await rows(
        db,
        "SELECT amount_minor, idempotency_key FROM ledger WHERE user_id = $1 ORDER BY id LIMIT 100",
        user_id,
    )
    return [(r["amount_minor"], r["idempotency_key"]) for r in found]


# ---------------------------------------------------------------------------------------------
# Crypto Pay


async def test_webhook_watcher_and_ten_duplicates_race_and_apply_once(db: Database) -> None:
    await setup_catalog(db)
    await add_user(db, 501)
    async with crypto(db) as c:
        intent = await c.intent(501)
        invoice = await c.invoice(intent)
        assert invoice.payload == intent.payload and invoice.amount == 500 and invoice.fiat == RUB
        c.emulator.mark_paid(invoice.invoice_id, "TON")
        watcher = c.watcher()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(
                lambda: c.emulator.deliver_webhook(invoice.invoice_id, duplicate=10, concurrently=True)
            )
            nursery.start_soon(watcher.check_pending)
            nursery.start_soon(watcher.check_pending)
        attempts = [a for a in c.emulator.webhook_log if a.invoice_id == invoice.invoice_id]
        assert len(attempts) == 11 and all(a.status == 200 for a in attempts)
        assert await payment_row(db, intent.payment_id) == {
            "status": "applied",
            "status_reason": None,
            "external_id": str(invoice.invoice_id),
        }
        assert await ledger_of(db, 501) == [(50_000, f"payment:{intent.payment_id}")]
        assert await scalar(db, "SELECT balance_minor FROM users WHERE id = 501") == 50_000
        notices = "SELECT count(*) FROM outbox WHERE chat_id = 501 AND kind = 'payment.applied.topup'"
        assert await scalar(db, notices) == 1
        # Later replays and watcher passes change nothing.
        before = await snapshot(db)
        await c.emulator.deliver_webhook(invoice.invoice_id, duplicate=2)
        assert await watcher.check_pending() is True
        assert await snapshot(db) == before


@pytest.mark.parametrize("variant", ["forged", "wrong_token", "alter_body"])
async def test_a_request_not_signed_by_crypto_pay_is_401_and_changes_nothing(
    db: Database, variant: str, caplog: pytest.LogCaptureFixture
) -> None:
    await setup_catalog(db)
    await add_user(db, 502)
    async with crypto(db) as c:
        intent = await c.intent(502)
        invoice = await c.invoice(intent)
        c.emulator.mark_paid(invoice.invoice_id)
        before = await snapshot(db)
        with caplog.at_level(logging.WARNING, logger="atlas.web.cryptopay_webhook"):
            attempts = await c.emulator.deliver_webhook(invoice.invoice_id, **{variant: True})
        assert [a.status for a in attempts] == [401]
        assert await snapshot(db) == before
        assert (await payment_row(db, intent.payment_id))["status"] == "pending"
        lines = [r.getMessage() for r in caplog.records if "refused (401)" in r.getMessage()]
        assert len(lines) == 1 and "does not match the body" in lines[0] and "nothing applied" in lines[0]
        assert TOKEN not in caplog.text and intent.payload not in caplog.text  # no secret, no body dump


async def test_missing_signature_and_oversized_body_are_refused_a_signed_unusable_update_is_kept(
    db: Database, caplog: pytest.LogCaptureFixture
) -> None:
    async with crypto(db) as c, httpx.AsyncClient() as http:
        url = c.web_url + HOOK
        before = await snapshot(db)
        with caplog.at_level(logging.WARNING, logger="atlas.web.cryptopay_webhook"):
            missing = await http.post(url, content=b'{"update_type":"invoice_paid"}')
            huge = await http.post(url, content=b"x" * 70_000, headers={"crypto-pay-api-signature": "00"})
            body = b'{"update_type":"something_else","update_id":1}'
            signature = hmac.new(hashlib.sha256(TOKEN.encode()).digest(), body, hashlib.sha256).hexdigest()
            unusable = await http.post(url, content=body, headers={"crypto-pay-api-signature": signature})
            again = await http.post(url, content=body, headers={"crypto-pay-api-signature": signature})
        # Authentic but unusable: 200, so the provider neither retries it nor switches the webhook off.
        assert (missing.status_code, huge.status_code, unusable.status_code, again.status_code) == (
            401,
            413,
            200,
            200,
        )
        assert "missing crypto-pay-api-signature" in caplog.text
        assert "update.update_type" in caplog.text
        assert await snapshot(db) == before  # no money table changed
        kept = await rows(db, "SELECT source, body, reason FROM provider_messages_kept LIMIT 10")
        assert kept == [{"source": "webhook", "body": body, "reason": kept[0]["reason"]}]
        assert "update.update_type" in kept[0]["reason"]


async def test_unknown_invoice_is_200_with_a_warning_and_changes_nothing(
    db: Database, caplog: pytest.LogCaptureFixture
) -> None:
    async with crypto(db) as c:
        stranger = c.emulator.create_invoice(
            currency_type="fiat", fiat="RUB", amount="500", accepted_assets="USDT", payload="not-ours"
        )
        c.emulator.mark_paid(stranger.invoice_id)
        before = await snapshot(db)
        with caplog.at_level(logging.WARNING, logger="atlas.payments.apply"):
            attempts = await c.emulator.deliver_webhook(stranger.invoice_id)
        assert [a.status for a in attempts] == [200]
        assert await snapshot(db) == before
        warned = [r for r in caplog.records if r.levelno == logging.WARNING]
        assert len(warned) == 1 and f"invoice {stranger.invoice_id}" in warned[0].getMessage()
        assert "matches no payment" in warned[0].getMessage()


@pytest.mark.parametrize(
    ("fiat", "amount", "reason"),
    [
        ("RUB", "499.99", "amount: paid 49999, expected 50000"),
        ("USD", "500", "currency: paid USD, expected RUB"),
    ],
)
async def test_amount_or_currency_differing_from_the_intent_flags_it(
    db: Database, caplog: pytest.LogCaptureFixture, fiat: str, amount: str, reason: str
) -> None:
    await setup_catalog(db)
    await add_user(db, 503)
    async with crypto(db) as c:
        intent = await c.intent(503)
        # An invoice for the intent's payload, but not for its price (a bug or tampering upstream).
        invoice = c.emulator.create_invoice(
            currency_type="fiat", fiat=fiat, amount=amount, accepted_assets="USDT", payload=intent.payload
        )
        c.emulator.mark_paid(invoice.invoice_id)
        with caplog.at_level(logging.ERROR, logger="atlas.payments.apply"):
            attempts = await c.emulator.deliver_webhook(invoice.invoice_id)
        assert [a.status for a in attempts] == [200]  # a retry cannot change the verdict
        row = await payment_row(db, intent.payment_id)
        assert row["status"] == "flagged" and row["status_reason"] == reason
        assert await ledger_of(db, 503) == []
        assert await scalar(db, "SELECT balance_minor FROM users WHERE id = 503") == 0
        flagged = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
        assert len(flagged) == 1 and "FLAGGED" in flagged[0] and reason in flagged[0]
        # The watcher does not apply it either: it is no longer pending.
        assert await c.watcher().check_pending() is True
        assert (await payment_row(db, intent.payment_id))["status"] == "flagged"


async def test_database_down_is_503_and_the_providers_retry_applies_it(
    db: Database, caplog: pytest.LogCaptureFixture
) -> None:
    await setup_catalog(db)
    await add_user(db, 504)
    async with crypto(db, webhook_max_attempts=3) as c:
        intent = await c.intent(504)
        invoice = await c.invoice(intent)
        c.emulator.mark_paid(invoice.invoice_id)
        c.db.fail_units.add("apply_payments")  # the unit the combiner runs

        async def heal_after_first_attempt() -> None:
            with trio.fail_after(5):
                while not c.emulator.webhook_log:  # noqa: ASYNC110 - the emulator's log is the signal
                    await trio.sleep(0.01)
            c.db.fail_units.clear()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(heal_after_first_attempt)
            attempts = await c.emulator.deliver_webhook(invoice.invoice_id)
        assert [a.status for a in attempts] == [503, 200]
        assert "not recorded (503, the provider will retry)" in caplog.text
        assert (await payment_row(db, intent.payment_id))["status"] == "applied"
        assert await ledger_of(db, 504) == [(50_000, f"payment:{intent.payment_id}")]


async def test_a_long_crypto_pay_outage_loses_nothing_and_the_watcher_applies_all_after(db: Database) -> None:
    await setup_catalog(db)
    for user in (511, 512, 513, 514, 515):
        await add_user(db, user)
    async with crypto(db) as c:
        intents = [await c.intent(user, amount=10_000 + user) for user in (511, 512, 513, 514, 515)]
        invoices = [await c.invoice(intent) for intent in intents]
        for invoice in invoices[:4]:  # paid; the webhooks were lost; the fifth is never paid
            c.emulator.mark_paid(invoice.invoice_id)
        c.emulator.outage("drop_connection")
        # Two days later, still down: every intent is long past its expires_at.
        later = Clock(NOW + dt.timedelta(days=2))
        watcher = c.watcher(clock=later)
        for _ in range(3):
            resume = watcher.backing_off_until
            if resume is not None:
                asked = len(c.emulator.requests)
                await watcher.tick()  # inside the back-off: not even an attempt
                assert len(c.emulator.requests) == asked
                await trio.sleep_until(resume)
            await watcher.tick()
        assert watcher.outages == 3 and watcher.applied == 0 and watcher.expired == 0
        statuses = "SELECT status FROM payments ORDER BY id LIMIT 10"
        assert [r["status"] for r in await rows(db, statuses)] == ["pending"] * 5
        c.emulator.outage("http_503")
        resume = watcher.backing_off_until
        assert resume is not None
        await trio.sleep_until(resume)
        await watcher.tick()
        assert watcher.outages == 4
        assert [r["status"] for r in await rows(db, statuses)] == ["pending"] * 5

        c.emulator.recover()
        resume = watcher.backing_off_until
        assert resume is not None
        await trio.sleep_until(resume)
        await watcher.tick()  # batch of 2: three pages, then the expiry of the unpaid one
        assert watcher.applied == 4 and watcher.expired == 1 and watcher.backing_off_until is None
        assert [r["status"] for r in await rows(db, statuses)] == ["applied"] * 4 + ["expired"]
        for intent in intents[:4]:
            assert await ledger_of(db, intent.user_id) == [
                (intent.amount_minor, f"payment:{intent.payment_id}")
            ]
        answered = [r for r in c.emulator.requests if r.api_method == "getInvoices" and r.status == 200]
        assert [len(r.params["invoice_ids"].split(",")) for r in answered] == [2, 2, 1]  # bounded batches


async def test_the_webhook_signature_matches_an_independent_implementation(db: Database) -> None:
    """REFERENCE.md: hex HMAC-SHA-256 of the raw body, key = the raw SHA-256 digest of the token."""

    def reference_signature(token: str, raw: bytes) -> str:
        key = hashlib.sha256(token.encode("utf-8")).digest()
        return hmac.new(key, raw, hashlib.sha256).hexdigest()

    captured: list[tuple[bytes, str | None]] = []

    async def capture(request: Request) -> Response:
        captured.append((await request.body(), request.headers.get("crypto-pay-api-signature")))
        return Response("ok")

    await setup_catalog(db)
    await add_user(db, 520)
    async with crypto(db) as c, trio.open_nursery() as nursery:
        capture_url = await nursery.start(
            serve_asgi, Starlette(routes=[Route("/cap", capture, methods=["POST"])])
        )
        intent = await c.intent(520)
        invoice = await c.invoice(intent)
        c.emulator.mark_paid(invoice.invoice_id)
        c.emulator.webhook_url = capture_url + "/cap"
        await c.emulator.deliver_webhook(invoice.invoice_id)
        ((raw, signature),) = captured
        assert signature == reference_signature(TOKEN, raw)  # the emulator signs per the reference
        assert signature != reference_signature(TOKEN + "x", raw)

        # Our verifier accepts a body we signed ourselves with the reference formula ...
        update = json.loads(raw)
        update["update_id"] = 999
        own = json.dumps(update, indent=2).encode()  # other bytes: the signature covers the raw body
        async with httpx.AsyncClient() as http:
            url = c.web_url + HOOK
            wrong = await http.post(url, content=own, headers={"crypto-pay-api-signature": signature})
            right = await http.post(
                url,
                content=own,
                headers={"Crypto-Pay-Api-Signature": reference_signature(TOKEN, own).upper()},
            )
        assert (wrong.status_code, right.status_code) == (401, 200)
        assert (await payment_row(db, intent.payment_id))["status"] == "applied"
        nursery.cancel_scope.cancel()


# ---------------------------------------------------------------------------------------------
# Telegram Stars


@dataclass
class StarsBot:
    emulator: BotApiEmulator
    bot: Bot
    db: SwitchDb
    clock: Clock
    dispatch: UpdateDispatcher


@asynccontextmanager
async def stars_bot(db: Database) -> AsyncIterator[StarsBot]:
    clock = Clock(NOW)
    switch = SwitchDb(db)
    emulator = BotApiEmulator()
    async with trio.open_nursery() as nursery:
        base = await nursery.start(emulator.serve)
        bot = make_bot(emulator.token, base)
        try:
            root = build_dispatcher(
                [payments_router.build_router()],
                db=switch,
                clock=clock,
                referral_policy=POLICY,
                balance_currency=RUB,
            )
            reporter = CrashReporter([RingSink()], now=lambda: NOW)
            dispatch = UpdateDispatcher(dispatcher=root, bot=bot, reporter=reporter)
            await nursery.start(dispatch.run)
            intake = PollingIntake(bot=bot, dispatcher=dispatch, settings=PollingSettings(timeout=1))
            nursery.start_soon(intake.run)
            yield StarsBot(emulator, bot, switch, clock, dispatch)
        finally:
            nursery.cancel_scope.cancel()
            with trio.CancelScope(shield=True):
                await bot.session.close()


async def stars_intent(s: StarsBot, user_id: int) -> PaymentIntent:
    return await s.db.as_db().run(
        create_payment_intent,
        user_id=user_id,
        provider="stars",
        purpose="plan",
        plan_code="m1",
        currency="XTR",
        balance_currency=RUB,
        ttl=TTL,
        now=s.clock.now(),
    )


async def wait_until(predicate: Any, within: float = 5.0) -> None:
    """Wait for a database condition the bot's handler brings about (no event crosses the DB)."""
    with trio.fail_after(within):
        while not await predicate():  # noqa: ASYNC110 - database state, no event crosses it
            await trio.sleep(0.02)


async def test_a_stars_purchase_end_to_end_then_an_exact_refund(db: Database) -> None:
    await setup_catalog(db)
    await add_user(db, 601)
    async with stars_bot(db) as s:
        user = s.emulator.add_user(601, "Stella", language_code="en")
        intent = await stars_intent(s, 601)
        assert (intent.amount_minor, intent.days) == (50, 30)
        await send_stars_invoice(
            s.bot, chat_id=601, intent=intent, title="Atlas VPN", description="30 days", label="m1"
        )
        invoice = await user.next_message()
        outcome = await user.pay_stars(invoice)
        assert outcome.ok and outcome.answer is not None and outcome.answer.in_time
        assert outcome.charge is not None
        charge = outcome.charge.telegram_payment_charge_id

        async def applied() -> bool:
            return bool((await payment_row(db, intent.payment_id))["status"] == "applied")

        await wait_until(applied)
        assert (await payment_row(db, intent.payment_id))["external_id"] == charge
        expires = await scalar(db, "SELECT expires_at FROM subscriptions WHERE user_id = 601")
        starts = await scalar(db, "SELECT starts_at FROM subscriptions WHERE user_id = 601")
        assert expires - starts == dt.timedelta(days=30)

        # Telegram repeats the service message (a redelivery): nothing more is granted.
        s.emulator.enqueue_update(
            "message",
            {
                "message_id": 9999,
                "date": 1,
                "chat": {"id": 601, "type": "private", "first_name": "Stella"},
                "from": {"id": 601, "is_bot": False, "first_name": "Stella", "language_code": "en"},
                "successful_payment": {
                    "currency": "XTR",
                    "total_amount": 50,
                    "invoice_payload": intent.payload,
                    "telegram_payment_charge_id": charge,
                    "provider_payment_charge_id": "prv",
                },
            },
        )
        await s.emulator.wait_until_delivered()
        with trio.fail_after(5):
            await s.dispatch.join()
        assert await scalar(db, "SELECT expires_at FROM subscriptions WHERE user_id = 601") == expires
        notices = "SELECT count(*) FROM outbox WHERE chat_id = 601 AND kind = 'payment.applied.plan'"
        assert await scalar(db, notices) == 1
        assert [r.kind for r in user.chat_log()] == ["invoice"]  # the outbox sends the confirmation

        # Refund: Telegram refunds, then the database step fails; the retry finishes the job.
        s.db.fail_units.add("refund_payment")
        with pytest.raises(StarsLedgerNotCorrected):
            await refund_stars_payment(
                s.db.as_db(),
                s.bot,
                payment_id=intent.payment_id,
                admin_id=ADMIN,
                reason="asked",
                clock=s.clock,
            )
        assert [r.telegram_payment_charge_id for r in s.emulator.refunds] == [charge]
        assert (await payment_row(db, intent.payment_id))["status"] == "applied"
        s.db.fail_units.clear()
        result = await refund_stars_payment(
            s.db.as_db(),
            s.bot,
            payment_id=intent.payment_id,
            admin_id=ADMIN,
            reason="asked",
            clock=s.clock,
        )
        assert (result.days_removed, result.debited_minor, result.amount_minor) == (30, 0, 50)
        assert (await payment_row(db, intent.payment_id))["status"] == "refunded"
        assert await scalar(db, "SELECT expires_at FROM subscriptions WHERE user_id = 601") == starts
        assert await ledger_of(db, 601) == []
        refunded = "SELECT count(*) FROM outbox WHERE chat_id = 601 AND kind = 'payment.refunded'"
        assert await scalar(db, refunded) == 1
        assert len(s.emulator.refunds) == 1

        # A second refund is refused before anything is asked of Telegram.
        calls = s.emulator.calls["refundStarPayment"]
        with pytest.raises(RefundRefused) as refused:
            await refund_stars_payment(
                s.db.as_db(),
                s.bot,
                payment_id=intent.payment_id,
                admin_id=ADMIN,
                reason="again",
                clock=s.clock,
            )
        assert refused.value.reason == "not_applied"
        assert s.emulator.calls["refundStarPayment"] == calls and len(s.emulator.refunds) == 1


async def test_pre_checkout_refuses_a_changed_price_and_answers_in_time_when_the_database_hangs(
    db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    await setup_catalog(db)
    await add_user(db, 602)
    async with stars_bot(db) as s:
        user = s.emulator.add_user(602, "Max", language_code="ru")
        intent = await stars_intent(s, 602)
        # An invoice that asks another price than the intent's quote.
        await s.bot.send_invoice(
            chat_id=602,
            title="Atlas",
            description="30 days",
            payload=intent.payload,
            currency="XTR",
            prices=[LabeledPrice(label="m1", amount=49)],
        )
        outcome = await user.pay_stars(await user.next_message())
        assert not outcome.ok and outcome.charge is None and outcome.answer is not None
        assert outcome.answer.error_message == t("ru", "pay.checkout.price_changed")

        # The database hangs: the bot still answers, in time, with "try again".
        monkeypatch.setattr(payments_router, "CHECKOUT_DB_BUDGET", 0.3)
        await send_stars_invoice(
            s.bot, chat_id=602, intent=intent, title="Atlas", description="30 d", label="m1"
        )
        s.db.hang = True
        outcome = await user.pay_stars(await user.next_message())
        assert outcome.answer is not None and outcome.answer.in_time and not outcome.answer.ok
        assert outcome.answer.error_message == t("ru", "pay.checkout.busy")
        assert outcome.answer.elapsed < 2.0
        s.db.hang = False
        assert (await payment_row(db, intent.payment_id))["status"] == "pending"
        assert s.emulator.charges == {}
