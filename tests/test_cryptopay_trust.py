"""Crypto Pay trust holes (issue 11 items 3, 4, 5), against the emulator over real HTTP and real PostgreSQL.

* one unreadable invoice in a ``getInvoices`` answer is skipped, reported and kept; the rest of the
  page is applied, later pages and expiry still run, nothing counts as an outage;
* a correctly signed update Atlas cannot use is answered 200 and kept (once); only a bad signature,
  an oversized body and "could not record" are refused;
* ``Retry-After`` on a 429 is obeyed; ``paid_*`` and ``fee_*`` are stored as exact decimals;
* ``ATLAS_CURRENCY`` is checked against the provider's fiats: statically and live at start; the
  emulator prices in every documented fiat and answers getCurrencies, getExchangeRates, getBalance.
"""

from __future__ import annotations

import datetime as dt
import logging
from decimal import Decimal

import pytest
import trio

from atlas.clock import Clock
from atlas.payments import CryptoPayClient
from atlas.payments.cryptopay import CryptoPayUnavailable, retry_after_seconds
from atlas.payments.cryptopay_fiats import (
    DOCUMENTED_FIATS,
    CryptoPayCurrencyUnsupported,
    check_currency_supported,
)
from atlas.runtime.settings import SettingsError, load_settings
from atlas.storage import Database
from atlas.testing.cryptopay_emulator import CryptoPayEmulator
from atlas.testing.cryptopay_reference import FIAT_USD_RATES
from tests._money_support import RUB, add_user, rows, scalar, setup_catalog, snapshot
from tests.test_payments_flows import TOKEN, crypto, payment_row


async def test_one_unreadable_invoice_is_skipped_and_kept_the_rest_applied_and_expiry_runs(
    db: Database, caplog: pytest.LogCaptureFixture
) -> None:
    await setup_catalog(db)
    for user in (601, 602, 603, 604):
        await add_user(db, user)
    async with crypto(db) as c:
        intents = [await c.intent(user) for user in (601, 602, 603)]
        invoices = [await c.invoice(intent) for intent in intents]
        for invoice in invoices:
            c.emulator.mark_paid(invoice.invoice_id)
        # The middle one is described with a status the strict parser refuses.
        c.emulator.garble_invoice(invoices[1].invoice_id, status="refunded_partially")
        stale = await c.intent(604)  # never paid: expires once the walk completes
        await c.invoice(stale)
        watcher = c.watcher(batch=2)  # two pages: the bad item is on the first
        with caplog.at_level(logging.ERROR, logger="atlas.actors.payment_watcher"):
            await watcher.tick()
            await watcher.tick()
        assert (watcher.applied, watcher.unreadable, watcher.outages) == (2, 2, 0)
        assert watcher.backing_off_until is None
        assert [(await payment_row(db, i.payment_id))["status"] for i in intents] == [
            "applied",
            "pending",
            "applied",
        ]
        kept = await rows(db, "SELECT source, reason FROM provider_messages_kept LIMIT 10")
        assert len(kept) == 1 and kept[0]["source"] == "getInvoices"  # once, for two ticks
        assert "status" in kept[0]["reason"]
        lines = [r.getMessage() for r in caplog.records if "unreadable" in r.getMessage()]
        assert len(lines) == 2 and f"invoice {invoices[1].invoice_id} " in lines[0]
        # The walk still completes, so expiry runs: an hour past their expiry, the unpaid intents go.
        late = c.watcher(batch=2, clock=Clock(stale.expires_at + dt.timedelta(hours=1)))
        await late.tick()
        assert late.expired == 2 and late.outages == 0
        assert (await payment_row(db, stale.payment_id))["status"] == "expired"
        # (The unreadable one expired too; if it was paid, the webhook or a readable answer still
        # applies it: apply_payment accepts an expired intent.)
        assert (await payment_row(db, intents[1].payment_id))["status"] == "expired"


async def test_retry_after_of_a_429_is_obeyed(db: Database) -> None:
    await setup_catalog(db)
    await add_user(db, 611)
    async with crypto(db) as c:
        intent = await c.intent(611)
        invoice = await c.invoice(intent)
        c.emulator.mark_paid(invoice.invoice_id)
        c.emulator.rate_limit_next(1, retry_after=120)
        watcher = c.watcher()
        await watcher.tick()
        assert watcher.outages == 1
        resume = watcher.backing_off_until
        assert resume is not None and resume - trio.current_time() >= 119  # the helper's backoff is 0.2 s
        await watcher.tick()  # still backing off: nothing asked
        assert (await payment_row(db, intent.payment_id))["status"] == "pending"
    assert retry_after_seconds("7") == 7.0
    assert retry_after_seconds("soon") is None
    assert retry_after_seconds("999999") == 3600.0


async def test_paid_amounts_rates_and_fee_are_stored_exactly(db: Database) -> None:
    await setup_catalog(db)
    await add_user(db, 621)
    async with crypto(db) as c:
        intent = await c.intent(621)
        invoice = await c.invoice(intent)
        paid = c.emulator.mark_paid(invoice.invoice_id, "TON")
        attempts = await c.emulator.deliver_webhook(invoice.invoice_id)
        assert [a.status for a in attempts] == [200]
        [row] = await rows(
            db,
            "SELECT status, paid_asset, paid_amount, paid_fiat_rate, paid_usd_rate, fee_asset, fee_amount "
            "FROM payments WHERE id = $1 LIMIT 1",
            intent.payment_id,
        )
        assert row == {
            "status": "applied",
            "paid_asset": "TON",
            "paid_amount": paid.paid_amount,
            "paid_fiat_rate": paid.paid_fiat_rate,
            "paid_usd_rate": paid.paid_usd_rate,
            "fee_asset": "TON",
            "fee_amount": paid.fee_amount,
        }
        assert all(isinstance(row[k], Decimal) for k in ("paid_amount", "paid_fiat_rate", "fee_amount"))


@pytest.mark.parametrize(
    "update",
    [
        {"update_id": 7, "update_type": "invoice_refunded", "request_date": "2026-03-01T12:00:00.000Z"},
        "bad-status",
    ],
)
async def test_a_signed_update_atlas_cannot_use_is_200_and_kept_once(
    db: Database, update: dict[str, object] | str
) -> None:
    await setup_catalog(db)
    await add_user(db, 631)
    async with crypto(db, webhook_max_attempts=3) as c:
        if update == "bad-status":  # a real invoice_paid whose invoice has a field value we refuse
            intent = await c.intent(631)
            invoice = await c.invoice(intent)
            wire = c.emulator.mark_paid(invoice.invoice_id)
            body: dict[str, object] = {
                "update_id": 8,
                "update_type": "invoice_paid",
                "request_date": "2026-03-01T12:00:00.000Z",
                "payload": {"invoice_id": wire.invoice_id, "status": "paid", "amount": "1e3"},
            }
        else:
            assert isinstance(update, dict)
            body = update
        before = await snapshot(db)
        first = await c.emulator.deliver_update(body)
        second = await c.emulator.deliver_update(body)
        assert [a.status for a in first + second] == [200, 200]  # no retries: the provider is satisfied
        assert await snapshot(db) == before
        kept = await rows(db, "SELECT provider, source FROM provider_messages_kept LIMIT 10")
        assert kept == [{"provider": "cryptopay", "source": "webhook"}]
        # ... and when it cannot even be kept, the provider is asked to retry.
        c.db.down = True
        other = dict(body, update_id=99)
        refused = await c.emulator.deliver_update(other)
        assert [a.status for a in refused] == [503, 503, 503]
        c.db.down = False
        assert await scalar(db, "SELECT count(*) FROM provider_messages_kept") == 1


async def test_the_emulator_prices_in_every_documented_fiat_and_knows_currencies_rates_balance(
    nursery: trio.Nursery,
) -> None:
    emulator = CryptoPayEmulator(TOKEN)
    url = await nursery.start(emulator.run)
    async with CryptoPayClient(TOKEN, base_url=url) as client:
        assert await client.supported_fiats() == DOCUMENTED_FIATS == frozenset(FIAT_USD_RATES)
        for fiat in ("BYN", "PLN", "USD"):
            made = await client.create_invoice(
                amount="10", fiat=fiat, accepted_assets=["USDT"], description=None, payload="p",
                expires_in=600, swap_to="TON",
            )
            assert made.fiat == fiat and made.swap_to == "TON"
        emulator.mark_paid(made.invoice_id, "USDT")
        rates = await client.get_exchange_rates()
        usdt_rub = next(r for r in rates if (r.source, r.target) == ("USDT", "RUB"))
        assert usdt_rub.rate == Decimal("90.90909091") and usdt_rub.is_valid
        balances = {b.currency_code: b for b in await client.get_balance()}
        assert balances["USDT"].available == Decimal("9.70")  # 10 USDT paid, 3 % fee
        assert await check_currency_supported(client, "BYN") is True


async def test_a_currency_crypto_pay_does_not_offer_stops_the_start(nursery: trio.Nursery) -> None:
    emulator = CryptoPayEmulator(TOKEN, fiats={"USD", "EUR"})
    url = await nursery.start(emulator.run)
    async with CryptoPayClient(TOKEN, base_url=url) as client:
        with pytest.raises(CryptoPayCurrencyUnsupported, match="ATLAS_CURRENCY=RUB"):
            await check_currency_supported(client, RUB)
        emulator.outage()
        assert await check_currency_supported(client, RUB) is False  # cannot ask: documented list stands
    with pytest.raises(SettingsError, match="ATLAS_CURRENCY=JPY") as refused:
        load_settings(currency="JPY", cryptopay_token="123:secret-token-value")
    assert "secret-token-value" not in str(refused.value)
    assert load_settings(currency="JPY").currency == "JPY"  # without Crypto Pay any currency is fine


async def test_a_429_carries_the_services_retry_after(nursery: trio.Nursery) -> None:
    emulator = CryptoPayEmulator(TOKEN)
    url = await nursery.start(emulator.run)
    emulator.rate_limit_next(1, retry_after=5)
    async with CryptoPayClient(TOKEN, base_url=url) as client:
        with pytest.raises(CryptoPayUnavailable) as limited:
            await client.get_me()
        assert limited.value.retry_after == 5.0
        assert (await client.get_me()).app_id  # the next call goes through
