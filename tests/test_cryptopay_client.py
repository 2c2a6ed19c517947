"""CryptoPayClient against the Crypto Pay emulator over real HTTP on 127.0.0.1."""

from __future__ import annotations

import datetime as dt
import json
import logging
import traceback
from collections.abc import AsyncIterator
from decimal import Decimal

import httpx
import pytest
import trio

from atlas.clock import Clock
from atlas.net import ConnectionHeldAcrossIO, OutboundHttp, holding_connection
from atlas.payments import (
    CryptoPayApiError,
    CryptoPayAuthError,
    CryptoPayClient,
    CryptoPayError,
    CryptoPayProtocolError,
    CryptoPayUnavailable,
    Invoice,
    parse_invoice,
)
from atlas.testing.cryptopay_emulator import CryptoPayEmulator

TOKEN = "424242:SECRET-token-that-must-never-leak"
ANCHOR = dt.datetime(2025, 3, 1, 12, 0, tzinfo=dt.UTC)


def assert_token_absent(*things: object) -> None:
    """The token appears in no message, repr or chained traceback."""
    for thing in things:
        if isinstance(thing, BaseException):
            text = "".join(traceback.format_exception(thing))
            cause: BaseException | None = thing
            while cause is not None:
                text += repr(cause) + str(cause) + repr(cause.args)
                cause = cause.__cause__ or cause.__context__
        else:
            text = repr(thing) + str(thing)
        assert TOKEN not in text
        assert "SECRET-token" not in text


class SteppedClock(Clock):
    """A business clock the test can move forward without waiting."""

    def __init__(self, anchor: dt.datetime) -> None:
        super().__init__(anchor)
        self.offset = dt.timedelta(0)

    def now(self) -> dt.datetime:
        return super().now() + self.offset


@pytest.fixture
async def clock() -> SteppedClock:
    return SteppedClock(ANCHOR)


@pytest.fixture
async def emulator(nursery: trio.Nursery, clock: SteppedClock) -> CryptoPayEmulator:
    emu = CryptoPayEmulator(TOKEN, clock=clock)
    await nursery.start(emu.run)
    return emu


@pytest.fixture
async def client(emulator: CryptoPayEmulator) -> AsyncIterator[CryptoPayClient]:
    async with CryptoPayClient(TOKEN, base_url=emulator.api_url, timeout=5) as c:
        yield c


async def create(client: CryptoPayClient, amount: str = "4.99", **overrides: object) -> Invoice:
    kwargs: dict[str, object] = {
        "amount": amount,
        "fiat": "USD",
        "accepted_assets": ["USDT", "TON"],
        "description": "30 days of VPN",
        "payload": "payment:17",
        "expires_in": 3600,
    }
    kwargs.update(overrides)
    return await client.create_invoice(**kwargs)  # type: ignore[arg-type]


def api_calls(emulator: CryptoPayEmulator, method: str) -> list[dict[str, object]]:
    return [dict(r.params) for r in emulator.requests if r.api_method == method]


# -- the happy path ----------------------------------------------------------------------------


async def test_create_get_pay_round_trip_parses_decimals_and_dates(
    emulator: CryptoPayEmulator, client: CryptoPayClient
) -> None:
    app = await client.get_me()
    assert app.payment_processing_bot_username == "CryptoBot"

    invoice = await create(client, hidden_message="thanks", allow_comments=False)
    assert invoice.status == "active"
    assert invoice.currency_type == "fiat"
    assert invoice.fiat == "USD"
    assert invoice.amount == Decimal("4.99") and isinstance(invoice.amount, Decimal)
    assert invoice.amount_minor() == 499
    assert invoice.accepted_assets == ("USDT", "TON")
    assert invoice.payload == "payment:17"
    assert invoice.bot_invoice_url == f"https://t.me/CryptoBot?start={invoice.hash}"
    assert invoice.created_at.tzinfo is not None
    assert invoice.created_at.utcoffset() == dt.timedelta(0)
    assert abs(invoice.created_at - ANCHOR) < dt.timedelta(seconds=30)
    assert invoice.expiration_date == invoice.created_at + dt.timedelta(seconds=3600)
    assert invoice.paid_at is None and invoice.paid_amount is None

    # What went over the wire: POST JSON, fiat currency type, comma-joined assets, JSON booleans.
    [sent] = [r for r in emulator.requests if r.api_method == "createInvoice"]
    assert sent.http_method == "POST" and sent.authorized
    assert sent.params["currency_type"] == "fiat"
    assert sent.params["amount"] == "4.99"
    assert sent.params["accepted_assets"] == "USDT,TON"
    assert sent.params["allow_comments"] is False
    assert sent.params["allow_anonymous"] is True

    paid_view = emulator.mark_paid(invoice.invoice_id, paid_asset="TON")
    [fetched] = await client.get_invoices([invoice.invoice_id])
    assert fetched == paid_view
    assert fetched.status == "paid"
    assert fetched.paid_asset == "TON"
    # 4.99 USD at 5.2 USD/TON, rounded up to 8 places; never a float anywhere.
    assert fetched.paid_fiat_rate == Decimal("5.2")
    assert fetched.paid_amount == Decimal("0.95961539")
    assert fetched.fee_asset == "TON"
    assert fetched.fee_amount == Decimal("0.02878846")
    for value in (fetched.paid_amount, fetched.paid_fiat_rate, fetched.paid_usd_rate, fetched.fee_amount):
        assert isinstance(value, Decimal)
    assert fetched.paid_at is not None
    assert fetched.paid_at.utcoffset() == dt.timedelta(0)
    assert fetched.paid_at >= fetched.created_at
    assert fetched.paid_at.microsecond % 1000 == 0  # milliseconds on the wire


async def test_get_invoices_batches_ids_by_1000_with_count_set(
    emulator: CryptoPayEmulator, client: CryptoPayClient
) -> None:
    ids = [
        emulator.create_invoice(
            currency_type="fiat", fiat="USD", amount="1", accepted_assets="USDT"
        ).invoice_id
        for _ in range(2500)
    ]
    # Duplicates are asked once; unknown ids are simply absent from the answer.
    asked = [*ids, ids[0], ids[1], 999_999]
    invoices = await client.get_invoices(asked)
    assert [i.invoice_id for i in invoices] == ids

    calls = api_calls(emulator, "getInvoices")
    assert len(calls) == 3
    sizes = [len(str(call["invoice_ids"]).split(",")) for call in calls]
    assert sizes == [1000, 1000, 501]
    assert [call["count"] for call in calls] == sizes


async def test_get_invoices_of_nothing_sends_nothing(
    emulator: CryptoPayEmulator, client: CryptoPayClient
) -> None:
    assert await client.get_invoices([]) == []
    assert emulator.requests == []


async def test_get_invoices_page_filters_and_pages(
    emulator: CryptoPayEmulator, client: CryptoPayClient
) -> None:
    created = [await create(client, payload=f"p{n}") for n in range(5)]
    emulator.mark_paid(created[1].invoice_id)
    emulator.mark_paid(created[3].invoice_id)
    paid = await client.get_invoices_page(status="paid")
    assert sorted(i.invoice_id for i in paid) == [created[1].invoice_id, created[3].invoice_id]
    active = await client.get_invoices_page(status="active", offset=1, count=2)
    assert len(active) == 2 and all(i.status == "active" for i in active)
    assert api_calls(emulator, "getInvoices")[-1] == {"status": "active", "offset": 1, "count": 2}


async def test_expired_by_time_and_by_control(
    emulator: CryptoPayEmulator, client: CryptoPayClient, clock: SteppedClock
) -> None:
    soon = await create(client, expires_in=60)
    later = await create(client, expires_in=3600)
    emulator.expire(later.invoice_id)
    assert (await client.get_invoices([soon.invoice_id]))[0].status == "active"
    clock.offset = dt.timedelta(seconds=61)
    fetched = {i.invoice_id: i.status for i in await client.get_invoices([soon.invoice_id, later.invoice_id])}
    assert fetched == {soon.invoice_id: "expired", later.invoice_id: "expired"}
    with pytest.raises(ValueError, match="expired"):
        emulator.mark_paid(soon.invoice_id)


async def test_delete_invoice(emulator: CryptoPayEmulator, client: CryptoPayClient) -> None:
    invoice = await create(client)
    assert await client.delete_invoice(invoice.invoice_id) is True
    assert await client.get_invoices([invoice.invoice_id]) == []
    with pytest.raises(CryptoPayApiError) as caught:
        await client.delete_invoice(invoice.invoice_id)
    assert (caught.value.code, caught.value.name) == (400, "INVOICE_NOT_FOUND")
    assert_token_absent(caught.value)


# -- errors ------------------------------------------------------------------------------------


async def test_wrong_token_is_auth_error(emulator: CryptoPayEmulator) -> None:
    async with CryptoPayClient("424242:another-token", base_url=emulator.api_url) as wrong:
        with pytest.raises(CryptoPayAuthError) as caught:
            await wrong.get_me()
    assert (caught.value.code, caught.value.name) == (401, "UNAUTHORIZED")
    assert not isinstance(caught.value, CryptoPayApiError)
    assert emulator.requests[-1].authorized is False
    assert emulator.requests[-1].status == 401


async def test_api_error_carries_the_api_name(emulator: CryptoPayEmulator, client: CryptoPayClient) -> None:
    with pytest.raises(CryptoPayApiError) as caught:
        await create(client, amount="0.001")
    assert (caught.value.code, caught.value.name) == (400, "AMOUNT_TOO_SMALL")
    assert "AMOUNT_TOO_SMALL" in str(caught.value)
    assert_token_absent(caught.value)
    assert emulator.invoices() == []


@pytest.mark.parametrize("mode", ["http_503", "drop_connection"])
async def test_outage_is_unavailable_then_recovers(
    emulator: CryptoPayEmulator, client: CryptoPayClient, mode: str
) -> None:
    emulator.outage(mode)  # type: ignore[arg-type]
    with pytest.raises(CryptoPayUnavailable) as caught:
        await client.get_me()
    assert_token_absent(caught.value, client)
    with pytest.raises(CryptoPayUnavailable):
        await create(client)
    assert emulator.invoices() == []
    emulator.recover()
    assert (await client.get_me()).app_id == 1001


async def test_fail_next_is_unavailable_once(emulator: CryptoPayEmulator, client: CryptoPayClient) -> None:
    emulator.fail_next(1)
    with pytest.raises(CryptoPayUnavailable) as caught:
        await client.get_me()
    assert "INTERNAL_ERROR" in str(caught.value)
    assert (await client.get_me()).app_id == 1001
    assert [r.status for r in emulator.requests] == [500, 200]


GOOD = {
    "invoice_id": 7,
    "hash": "IVABC",
    "status": "paid",
    "currency_type": "fiat",
    "fiat": "USD",
    "amount": "5.00",
    "bot_invoice_url": "https://t.me/CryptoBot?start=IVABC",
    "created_at": "2025-03-01T12:00:00.000Z",
    "paid_at": "2025-03-01T12:01:00.000Z",
    "allow_comments": False,
    "allow_anonymous": True,
}


def envelope_with(**changes: object) -> bytes:
    invoice = {**GOOD, **changes}
    invoice = {k: v for k, v in invoice.items() if v is not ...}
    return json.dumps({"ok": True, "result": {"items": [invoice]}}).encode()


@pytest.mark.parametrize(
    "body",
    [
        b"<html>Bad Gateway</html>",
        b"",
        b'{"ok": true}',
        b'{"ok": "yes", "result": {"items": []}}',
        b'{"ok": false, "error": "nope"}',
        b'{"ok": true, "result": {"items": {}}}',
        b"[" * 100_000,
        envelope_with(amount="1e5"),
        envelope_with(amount=" 5"),
        envelope_with(amount="NaN"),
        envelope_with(amount="-5"),
        envelope_with(amount=True),
        envelope_with(invoice_id="7"),
        envelope_with(invoice_id=...),
        envelope_with(status="refunded"),
        envelope_with(created_at="2025-03-01 12:00:00"),
        envelope_with(created_at="2025-03-01T12:00:00"),
        envelope_with(created_at="2025-02-31T12:00:00.000Z"),
        envelope_with(paid_at=...),
        envelope_with(fiat=...),
        envelope_with(allow_comments="false"),
        envelope_with(accepted_assets=[1, 2]),
        envelope_with(invoice_id=8),  # an id that was not asked for
    ],
)
async def test_garbage_is_a_protocol_error(
    emulator: CryptoPayEmulator, client: CryptoPayClient, body: bytes
) -> None:
    emulator.garbage_next(1, body=body)
    with pytest.raises(CryptoPayProtocolError) as caught:
        await client.get_invoices([7])
    assert_token_absent(caught.value)


async def test_well_formed_sample_parses(emulator: CryptoPayEmulator, client: CryptoPayClient) -> None:
    # The control for the garbage cases above: the sample is accepted, including a fee sent as a
    # JSON number (the API documents fee_amount as a Number).
    emulator.garbage_next(1, body=envelope_with(fee_amount="FEE").replace(b'"FEE"', b"0.15"))
    [invoice] = await client.get_invoices([7])
    assert invoice.amount == Decimal("5.00")
    assert invoice.fee_amount == Decimal("0.15")
    assert invoice.paid_at == dt.datetime(2025, 3, 1, 12, 1, tzinfo=dt.UTC)


async def test_json_number_amounts_never_pass_through_float(
    emulator: CryptoPayEmulator, client: CryptoPayClient
) -> None:
    emulator.garbage_next(1, body=envelope_with().replace(b'"5.00"', b"0.1000000000000000055511151231257827"))
    [invoice] = await client.get_invoices([7])
    assert invoice.amount == Decimal("0.1000000000000000055511151231257827")


async def test_connection_refused_is_unavailable() -> None:
    with trio.socket.socket() as sock:
        await sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    async with CryptoPayClient(TOKEN, base_url=f"http://127.0.0.1:{port}/api/") as client:
        with pytest.raises(CryptoPayUnavailable) as caught:
            await client.get_me()
    assert_token_absent(caught.value, client)


async def test_timeout_and_oversized_answers_are_translated() -> None:
    def timeout(request: httpx.Request) -> httpx.Response:
        raise httpx.ReadTimeout("slow", request=request)

    def huge(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=b"x" * 5000)

    async with OutboundHttp(transport=httpx.MockTransport(timeout)) as http:
        client = CryptoPayClient(TOKEN, http=http)
        with pytest.raises(CryptoPayUnavailable) as slow:
            await client.get_me()
    async with OutboundHttp(transport=httpx.MockTransport(huge), max_response_bytes=1000) as http:
        client = CryptoPayClient(TOKEN, http=http)
        with pytest.raises(CryptoPayProtocolError) as big:
            await client.get_me()
    assert_token_absent(slow.value, big.value)


async def test_api_url_and_header_per_network() -> None:
    seen: list[httpx.Request] = []

    def record(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json={"ok": True, "result": True})

    async with OutboundHttp(transport=httpx.MockTransport(record)) as http:
        await CryptoPayClient(TOKEN, http=http).delete_invoice(5)
        await CryptoPayClient(TOKEN, network="testnet", http=http).delete_invoice(6)
    assert [str(r.url) for r in seen] == [
        "https://pay.crypt.bot/api/deleteInvoice",
        "https://testnet-pay.crypt.bot/api/deleteInvoice",
    ]
    assert all(r.headers["Crypto-Pay-API-Token"] == TOKEN for r in seen)
    assert [json.loads(r.content) for r in seen] == [{"invoice_id": 5}, {"invoice_id": 6}]


# -- the guard and local checks ---------------------------------------------------------------


async def test_inside_a_unit_of_work_no_request_is_made(
    emulator: CryptoPayEmulator, client: CryptoPayClient
) -> None:
    with holding_connection("u"):
        with pytest.raises(ConnectionHeldAcrossIO):
            await client.get_me()
        with pytest.raises(ConnectionHeldAcrossIO):
            await create(client)
        with pytest.raises(ConnectionHeldAcrossIO):
            await client.get_invoices([1, 2, 3])
    assert emulator.requests == []
    assert await client.get_me()  # outside the unit it works


@pytest.mark.parametrize(
    ("overrides", "error", "match"),
    [
        ({"amount": 4.99}, TypeError, "amount"),
        ({"amount": "0"}, ValueError, "amount"),
        ({"amount": "-1"}, ValueError, "amount"),
        ({"amount": "1e3"}, ValueError, "amount"),
        ({"amount": Decimal("NaN")}, ValueError, "amount"),
        ({"fiat": "usd"}, ValueError, "fiat"),
        ({"accepted_assets": []}, ValueError, "accepted_assets"),
        ({"accepted_assets": "USDT"}, TypeError, "accepted_assets"),
        ({"payload": "й" * 2049}, ValueError, "payload"),  # 2049 characters, 4098 bytes
        ({"expires_in": 0}, ValueError, "expires_in"),
        ({"expires_in": 2_678_401}, ValueError, "expires_in"),
        ({"description": "d" * 1025}, ValueError, "description"),
        ({"paid_btn_name": "viewItem"}, ValueError, "paid_btn"),
        ({"paid_btn_name": "nope", "paid_btn_url": "https://x"}, ValueError, "paid_btn_name"),
    ],
)
async def test_bad_arguments_are_refused_before_io(
    emulator: CryptoPayEmulator,
    client: CryptoPayClient,
    overrides: dict[str, object],
    error: type[Exception],
    match: str,
) -> None:
    with pytest.raises(error, match=match):
        await create(client, **overrides)
    assert emulator.requests == []


async def test_payload_limits_are_exact(emulator: CryptoPayEmulator, client: CryptoPayClient) -> None:
    invoice = await create(client, payload="й" * 2048, expires_in=2_678_400)  # exactly 4096 bytes
    assert invoice.payload == "й" * 2048


async def test_token_never_reaches_the_logs(
    emulator: CryptoPayEmulator, client: CryptoPayClient, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    await create(client)
    emulator.fail_next(1)
    with pytest.raises(CryptoPayUnavailable):
        await client.get_me()
    assert any(r.name == "atlas.payments.cryptopay" for r in caplog.records)
    logged = caplog.text + "".join(repr(r.__dict__) for r in caplog.records)
    assert TOKEN not in logged


def test_token_is_validated_without_echoing_it() -> None:
    with pytest.raises(ValueError) as caught:
        CryptoPayClient("SECRET-token with spaces")
    assert "SECRET-token" not in str(caught.value)
    assert TOKEN not in repr(CryptoPayClient(TOKEN))


async def test_client_closes_its_own_http_only(emulator: CryptoPayEmulator) -> None:
    async with OutboundHttp() as shared:
        async with CryptoPayClient(TOKEN, base_url=emulator.api_url, http=shared) as first:
            await first.get_me()
        # The shared helper survives the first client's close.
        second = CryptoPayClient(TOKEN, base_url=emulator.api_url, http=shared)
        assert (await second.get_me()).app_id == 1001


# -- the emulator accepts the other request style ---------------------------------------------


async def test_emulator_accepts_get_query_parameters(emulator: CryptoPayEmulator) -> None:
    headers = {"Crypto-Pay-API-Token": TOKEN}
    async with httpx.AsyncClient(base_url=emulator.api_url, headers=headers) as http:
        created = await http.get(
            "createInvoice",
            params={
                "currency_type": "fiat",
                "fiat": "EUR",
                "amount": "10",
                "accepted_assets": "USDT,BTC",
                "allow_comments": "true",
                "allow_anonymous": "false",
                "expires_in": "60",
            },
        )
        assert created.status_code == 200
        invoice = parse_invoice(created.json()["result"])
        assert (invoice.fiat, invoice.amount, invoice.accepted_assets) == (
            "EUR",
            Decimal("10"),
            ("USDT", "BTC"),
        )
        assert (invoice.allow_comments, invoice.allow_anonymous) == (True, False)

        listed = await http.get("getInvoices", params={"invoice_ids": str(invoice.invoice_id), "count": "1"})
        assert [item["invoice_id"] for item in listed.json()["result"]["items"]] == [invoice.invoice_id]

        refused = await http.get(
            "createInvoice", params={"currency_type": "fiat", "fiat": "EUR", "amount": "x"}
        )
        assert refused.status_code == 400
        assert refused.json() == {"ok": False, "error": {"code": 400, "name": "AMOUNT_INVALID"}}
        bad_expiry = await http.post(
            "createInvoice", json={"currency_type": "fiat", "fiat": "EUR", "amount": "1", "expires_in": 0}
        )
        assert bad_expiry.json()["error"]["name"] == "EXPIRES_IN_INVALID"
        too_long = await http.post(
            "createInvoice",
            json={"currency_type": "fiat", "fiat": "EUR", "amount": "1", "payload": "x" * 4097},
        )
        assert too_long.json()["error"]["name"] == "PAYLOAD_TOO_LONG"
        unknown = await http.get("transferEverything")
        assert unknown.json()["error"] == {"code": 405, "name": "METHOD_NOT_FOUND"}
    assert [r.http_method for r in emulator.requests] == ["GET", "GET", "GET", "POST", "POST", "GET"]


def test_client_errors_form_one_hierarchy() -> None:
    for cls in (CryptoPayApiError, CryptoPayAuthError, CryptoPayUnavailable, CryptoPayProtocolError):
        assert issubclass(cls, CryptoPayError)
    assert not issubclass(ConnectionHeldAcrossIO, CryptoPayError)
