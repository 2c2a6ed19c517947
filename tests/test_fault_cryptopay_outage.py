"""Crypto Pay down for an hour of virtual time (trio's MockClock), with the real parts around it.

Real PostgreSQL; the Crypto Pay emulator over real HTTP answering every call with 503 for the
hour; the payment watcher as ``atlas run`` builds it (default period and backoff) under a real
supervisor; the bot (real aiogram over HTTP against the Bot API emulator) for a user who keeps
tapping "pay with crypto". An invoice is paid while the provider is down (its webhook is lost).
Asserted:

* the watcher backs off: no wait beyond its maximum (900 s + 10 % jitter), a handful of calls in
  the hour instead of one a minute, and nothing expired or applied meanwhile;
* every tap on "pay with crypto" is answered with the "payment service does not answer" text;
* nothing crashes: no crash report, the watcher is running throughout;
* within one backoff period after the provider returns, the invoice paid during the outage is
  applied, exactly once (one applied payment, one subscription period), and stays so 20 min on.
"""

from __future__ import annotations

import datetime as dt
import random
import re
from collections.abc import AsyncIterator

import pytest
import trio
import trio.testing

from atlas.actors.payment_watcher import PaymentWatcher
from atlas.clock import Clock
from atlas.payments import CryptoPayClient
from atlas.storage import Database, DatabaseSettings
from atlas.supervision import Backoff, ChildState, CrashReporter, RingSink, Strategy, Supervisor
from atlas.telegram import (
    DispatchSettings,
    PollingIntake,
    PollingSettings,
    UpdateDispatcher,
    build_dispatcher,
    make_bot,
)
from atlas.telegram.config import BotConfig
from atlas.telegram.formatting import format_money
from atlas.telegram.i18n import t
from atlas.telegram.routers import build_user_routers
from atlas.testing.botapi import BotApiEmulator, ChatRecord, EmulatedUser
from atlas.testing.cryptopay_emulator import CryptoPayEmulator
from atlas.testing.invariants import audit
from tests._money_support import NOW, POLICY, RUB, rows, setup_catalog

TOKEN = "4242:CryptoPayFaultToken"
HOUR = 3600.0
MAX_BACKOFF = 900.0 * 1.1  # PaymentWatcher's default: maximum max(period, 900 s), jitter 10 %
PERIOD = 60.0
CONFIG = BotConfig(
    currency=RUB,
    public_base_url="https://vpn.example.com/",
    bot_username="atlas_crypto_fault_bot",
    nodes=(),
    trial_days=3,
    support="@atlas_support",
)


def en(key: str, **params: object) -> str:
    """An English text as the user sees it (no tags)."""
    return re.sub(r"<[^>]+>", "", t("en", key, **params))


async def _open_database(dsn: str) -> Database:
    # Virtual time jumps whenever trio is idle, a database call in flight included: the storage
    # timeouts are set beyond the test's hour so that a jump can never reach one.
    return await Database.open(
        DatabaseSettings(dsn=dsn, pool_size=4, acquire_timeout=10 * HOUR, unit_timeout=10 * HOUR)
    )


async def _step(user: EmulatedUser, action: str, arg: str) -> list[ChatRecord]:
    """Send a command or press a button as ``user``; what came back (waits for the first record)."""
    user.skip_received()
    before = len(user.chat_log())
    if action == "command":
        user.send_command(arg)
    else:
        user.press(arg)
    await user.next_record(within=120)
    await trio.sleep(1)  # anything that follows the first record
    return user.chat_log()[before:]


def _texts(records: list[ChatRecord]) -> str:
    return "\n".join(r.plain_text or "" for r in records)


async def _tap_pay_with_crypto(user: EmulatedUser) -> list[ChatRecord]:
    await _step(user, "command", "/start")
    await _step(user, "press", en("user.button.plans"))
    await _step(user, "press", "p:m1")
    return await _step(user, "press", en("user.button.pay_crypto", price=format_money(10_000, "RUB", "en")))


async def _serve_bot(
    nursery: trio.Nursery, db: Database, clock: Clock, client: CryptoPayClient, reports: RingSink
) -> tuple[BotApiEmulator, UpdateDispatcher]:
    emulator = BotApiEmulator(bot_username=CONFIG.bot_username)
    base = await nursery.start(emulator.serve)
    bot = make_bot(emulator.token, base)
    root = build_dispatcher(build_user_routers(), db=db, clock=clock, config=CONFIG, cryptopay=client)
    dispatch = UpdateDispatcher(
        dispatcher=root,
        bot=bot,
        reporter=CrashReporter([reports], now=clock.now),
        settings=DispatchSettings(handler_timeout=600),
    )
    await nursery.start(dispatch.run)
    # A long poll of 50 s: few timers to jump over in an hour of virtual time.
    intake = PollingIntake(bot=bot, dispatcher=dispatch, settings=PollingSettings(timeout=50))
    nursery.start_soon(intake.run)
    return emulator, dispatch


@pytest.fixture
async def database(bridge: None, fresh_database: str) -> AsyncIterator[Database]:
    db = await _open_database(fresh_database)
    try:
        yield db
    finally:
        with trio.CancelScope(shield=True):
            await db.close()


@pytest.mark.slow
async def test_crypto_pay_down_for_an_hour_backs_off_answers_users_and_applies_once_after(
    mock_clock: trio.testing.MockClock, database: Database
) -> None:
    mock_clock.autojump_threshold = 0.2  # real sockets in flight: jump only when truly idle
    db = database
    await setup_catalog(db)
    clock = Clock(NOW)
    crypto = CryptoPayEmulator(TOKEN, clock=clock)
    reports = RingSink()
    async with trio.open_nursery() as nursery:
        api_url = await nursery.start(crypto.run)
        client = CryptoPayClient(TOKEN, base_url=api_url, timeout=600)
        emulator, _dispatch = await _serve_bot(nursery, db, clock, client, reports)
        watcher = PaymentWatcher(
            db=lambda: db,
            client=client,
            clock=clock,
            rng=random.Random(11),
            referral_policy=POLICY,
            balance_currency=RUB,
        )
        tree = Supervisor(
            "root",
            Strategy.ONE_FOR_ONE,
            [watcher.child_spec(stall_after=120)],
            max_restarts=3,
            backoff=Backoff(initial=0.5, jitter=0.0),
            reporter=CrashReporter([reports], now=clock.now),
            rng=random.Random(0),
        )
        await nursery.start(tree.run)

        # Before the outage: the user opens a crypto invoice for a plan.
        user = emulator.add_user(9701, "Ivy")
        opened = await _tap_pay_with_crypto(user)
        [invoice] = crypto.invoices()
        assert any(invoice.bot_invoice_url in str(r.reply_markup) for r in opened)

        # The outage: every call is 503. The user pays in CryptoBot meanwhile; its webhook is lost.
        crypto.outage("http_503")
        down_at = trio.current_time()
        crypto.mark_paid(invoice.invoice_id)
        asked_before = len(crypto.requests)
        delays: list[float] = []
        answers: list[str] = []
        while trio.current_time() - down_at < HOUR:
            resume = watcher.backing_off_until
            if resume is not None:
                delays.append(resume - trio.current_time())
            if len(answers) < 6 and trio.current_time() - down_at > len(answers) * 600:
                answers.append(_texts(await _tap_pay_with_crypto(user)))
            await trio.sleep(30)
        calls_in_outage = [r for r in crypto.requests[asked_before:] if r.api_method == "getInvoices"]
        during = await rows(
            db, "SELECT status FROM payments WHERE external_id = $1 LIMIT 10", str(invoice.invoice_id)
        )

        # The provider returns: within one backoff period (plus a tick) the paid invoice is applied.
        crypto.recover()
        back_at = trio.current_time()
        with trio.fail_after(MAX_BACKOFF + PERIOD + 60):
            while watcher.applied == 0:  # noqa: ASYNC110 - the watcher's counter is the signal
                await trio.sleep(5)
        applied_after = trio.current_time() - back_at
        await trio.sleep(HOUR / 3)  # twenty more minutes of ticks: nothing is applied twice
        payments = await rows(
            db,
            "SELECT status, external_id FROM payments WHERE provider = 'cryptopay' AND status = 'applied' "
            "ORDER BY id LIMIT 10",
        )
        subscription = await rows(
            db,
            "SELECT kind, status, starts_at, expires_at FROM subscriptions WHERE user_id = $1 LIMIT 2",
            9701,
        )
        report = await audit(db, now=clock.now(), provider_charges={"cryptopay": {str(invoice.invoice_id)}})
        state = {c.name: c.state for c in tree.statistics().children}
        nursery.cancel_scope.cancel()
        await client.aclose()

    # Backed off, bounded, and changed nothing during the hour.
    assert delays and max(delays) <= MAX_BACKOFF, max(delays)
    assert max(delays) > 4 * PERIOD  # it did grow: not one call a minute
    assert 3 <= len(calls_in_outage) <= 12, len(calls_in_outage)
    assert watcher.outages == len(calls_in_outage)
    assert [r["status"] for r in during] == ["pending"]
    # Every tap during the outage got the clear answer.
    unavailable = en("user.pay.crypto_unavailable")
    assert len(answers) == 6 and all(unavailable in text for text in answers), answers
    # Nothing crashed; applied once, within one backoff period, and still once 20 minutes later.
    assert reports.latest() == [], [r.message for r in reports.latest()]
    assert state == {"payment_watcher": ChildState.RUNNING}
    assert applied_after <= MAX_BACKOFF + PERIOD
    assert watcher.applied == 1
    assert payments == [{"status": "applied", "external_id": str(invoice.invoice_id)}]
    [sub] = subscription
    assert sub["kind"] == "paid" and sub["status"] == "active"
    assert sub["expires_at"] - sub["starts_at"] <= dt.timedelta(days=31)  # one period, not two
    assert report.ok, report.describe()  # the one charge applied once; money and keys whole
