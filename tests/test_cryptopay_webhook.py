"""Crypto Pay webhook: signature check, parsing, and the emulator's deliveries over real HTTP.

The signature is checked here by an implementation written out by hand from REFERENCE.md
(key = raw SHA-256 digest of the token; hex HMAC-SHA-256 of the raw body), plus a known-answer
vector computed with ``openssl``, so the emulator and ``atlas.payments`` cannot agree on a wrong
formula.
"""

from __future__ import annotations

import copy
import dataclasses
import datetime as dt
import functools
import hashlib
import hmac
import json
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import pytest
import trio
import trio.testing
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from atlas.payments import (
    InvoicePaid,
    WebhookMalformed,
    WebhookSignatureInvalid,
    compute_signature,
    parse_webhook,
    verify_signature,
)
from atlas.testing.cryptopay_emulator import CryptoPayEmulator
from atlas.web.server import serve_asgi

TOKEN = "31337:AAHdqTcvCH1vGWJxfSeofSAs0K5PALDsaw"


def reference_signature(token: str, raw_body: bytes) -> str:
    """REFERENCE.md, written out independently of atlas.payments."""
    key = hashlib.sha256(token.encode()).digest()
    return hmac.new(key, raw_body, hashlib.sha256).hexdigest()


def test_known_answer_vector_from_openssl() -> None:
    # printf '%s' "$TOKEN" | openssl dgst -sha256 -binary  -> key;
    # printf '%s' "$BODY" | openssl dgst -sha256 -mac HMAC -macopt hexkey:$KEY
    token = "1234:AAbbCCddEEff"
    body = b'{"update_id":1,"update_type":"invoice_paid"}'
    expected = "221430211ca02a9813344d42695c41e98151a644cd01aefe6c649db4e656884b"
    assert reference_signature(token, body) == expected
    assert compute_signature(token, body) == expected
    assert verify_signature(token, body, expected)
    assert verify_signature(token, body, expected.upper())
    assert not verify_signature(token, body + b" ", expected)
    assert not verify_signature("1234:AAbbCCddEEfF", body, expected)


# -- a receiver standing in for Atlas's webhook route ------------------------------------------


@dataclass
class Received:
    body: bytes
    headers: dict[str, str]
    path: str
    outcome: InvoicePaid | Exception


@dataclass
class Receiver:
    """Records raw requests, checks them with parse_webhook, answers like the real route would."""

    token: str = TOKEN
    received: list[Received] = field(default_factory=list)
    forced_statuses: list[int] = field(default_factory=list)  # consumed first, one per request
    url: str = ""

    async def endpoint(self, request: Request) -> Response:
        body = await request.body()
        headers = dict(request.headers)
        outcome: InvoicePaid | Exception
        try:
            outcome = parse_webhook(self.token, body, request.headers)
            status = 200
        except WebhookSignatureInvalid as exc:
            outcome, status = exc, 401
        except WebhookMalformed as exc:
            outcome, status = exc, 400
        self.received.append(Received(body, headers, request.url.path, outcome))
        if self.forced_statuses:
            status = self.forced_statuses.pop(0)
        return Response(status_code=status)

    def app(self) -> Starlette:
        return Starlette(routes=[Route("/{path:path}", self.endpoint, methods=["POST"])])


@pytest.fixture
async def receiver(nursery: trio.Nursery) -> Receiver:
    rec = Receiver()
    base = await nursery.start(serve_asgi, rec.app())
    rec.url = base + "/webhooks/cryptopay"
    return rec


@pytest.fixture
async def emulator(receiver: Receiver) -> CryptoPayEmulator:
    return CryptoPayEmulator(TOKEN, webhook_url=receiver.url, webhook_backoff=0.001, webhook_max_attempts=3)


def paid_invoice(emulator: CryptoPayEmulator, amount: str = "4.99", payload: str = "payment:1") -> int:
    invoice = emulator.create_invoice(
        currency_type="fiat", fiat="USD", amount=amount, accepted_assets="USDT,TON", payload=payload
    )
    emulator.mark_paid(invoice.invoice_id, "USDT")
    return invoice.invoice_id


# -- deliveries ------------------------------------------------------------------------------


async def test_delivered_update_is_signed_per_reference_and_parses(
    emulator: CryptoPayEmulator, receiver: Receiver
) -> None:
    invoice_id = paid_invoice(emulator)
    attempts = await emulator.deliver_webhook(invoice_id)
    assert [(a.status, a.attempt) for a in attempts] == [(200, 1)]

    [got] = receiver.received
    assert got.headers["crypto-pay-api-signature"] == reference_signature(TOKEN, got.body)
    assert got.headers["content-type"] == "application/json"
    raw = json.loads(got.body)
    assert raw["update_type"] == "invoice_paid"
    assert raw["payload"]["amount"] == "4.99"  # amounts are strings on the wire

    event = got.outcome
    assert isinstance(event, InvoicePaid)
    assert event.update_id == raw["update_id"] == attempts[0].update_id
    assert event.request_date.tzinfo is not None
    assert event.invoice == emulator.invoice(invoice_id)
    assert event.invoice.status == "paid"
    assert event.invoice.amount == Decimal("4.99")
    assert event.invoice.amount_minor() == 499
    assert event.invoice.payload == "payment:1"
    assert event.invoice.paid_asset == "USDT"


@pytest.mark.parametrize("variant", ["forged", "wrong_token", "alter_body"])
async def test_bad_signatures_are_rejected_and_retried(
    emulator: CryptoPayEmulator, receiver: Receiver, variant: str
) -> None:
    invoice_id = paid_invoice(emulator)
    attempts = await emulator.deliver_webhook(invoice_id, **{variant: True})
    assert [a.status for a in attempts] == [401, 401, 401]  # bounded retries, then given up
    assert [a.attempt for a in attempts] == [1, 2, 3]
    for got in receiver.received:
        signature = got.headers["crypto-pay-api-signature"]
        assert signature != reference_signature(TOKEN, got.body)  # the independent verifier agrees
        assert isinstance(got.outcome, WebhookSignatureInvalid)
    if variant == "alter_body":
        assert json.loads(receiver.received[0].body)["payload"]["amount"] == "499.00"
    if variant == "wrong_token":
        assert receiver.received[0].headers["crypto-pay-api-signature"] == reference_signature(
            TOKEN + "-other-app", receiver.received[0].body
        )


async def test_missing_signature_header_is_rejected() -> None:
    body = b'{"update_id":1}'
    with pytest.raises(WebhookSignatureInvalid, match="missing"):
        parse_webhook(TOKEN, body, {})
    with pytest.raises(WebhookSignatureInvalid, match="missing"):
        parse_webhook(TOKEN, body, {"crypto-pay-api-token": reference_signature(TOKEN, body)})
    # Header names are case-insensitive even in a plain dict.
    with pytest.raises(WebhookMalformed):
        parse_webhook(TOKEN, body, {"Crypto-Pay-Api-Signature": reference_signature(TOKEN, body)})


async def test_retries_until_2xx_with_backoff(emulator: CryptoPayEmulator, receiver: Receiver) -> None:
    emulator.webhook_max_attempts = 5
    receiver.forced_statuses = [500, 503]
    invoice_id = paid_invoice(emulator)
    attempts = await emulator.deliver_webhook(invoice_id)
    assert [a.status for a in attempts] == [500, 503, 200]
    assert len({a.update_id for a in attempts}) == 1
    assert len({r.body for r in receiver.received}) == 1  # a retry resends the same bytes
    assert emulator.webhook_log == attempts


async def test_unreachable_receiver_is_recorded_not_raised() -> None:
    with trio.socket.socket() as sock:
        await sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    emulator = CryptoPayEmulator(
        TOKEN, webhook_url=f"http://127.0.0.1:{port}/hook", webhook_backoff=0.001, webhook_max_attempts=2
    )
    attempts = await emulator.deliver_webhook(paid_invoice(emulator))
    assert [(a.status, a.ok) for a in attempts] == [(None, False), (None, False)]
    assert all(a.error for a in attempts)


async def test_duplicates_resend_the_same_update(emulator: CryptoPayEmulator, receiver: Receiver) -> None:
    invoice_id = paid_invoice(emulator)
    attempts = await emulator.deliver_webhook(invoice_id, duplicate=2)
    assert [a.status for a in attempts] == [200, 200, 200]
    assert len({r.body for r in receiver.received}) == 1
    assert len(receiver.received) == 3
    again = await emulator.deliver_webhook(invoice_id, duplicate=3, concurrently=True)
    assert [a.status for a in again] == [200] * 4
    events = [r.outcome for r in receiver.received]
    assert all(isinstance(e, InvoicePaid) and e.invoice.invoice_id == invoice_id for e in events)
    # A new delivery is a new update of the same invoice: idempotency must key on invoice_id.
    assert len({e.update_id for e in events if isinstance(e, InvoicePaid)}) == 2


async def test_out_of_order_and_delayed_delivery(
    emulator: CryptoPayEmulator, receiver: Receiver, mock_clock: trio.testing.MockClock
) -> None:
    ids = [paid_invoice(emulator, payload=f"p{n}") for n in range(4)]
    await emulator.deliver_out_of_order(ids)
    got = [r.outcome for r in receiver.received]
    assert [e.invoice.invoice_id for e in got if isinstance(e, InvoicePaid)] == list(reversed(ids))
    update_ids = [e.update_id for e in got if isinstance(e, InvoicePaid)]
    assert update_ids == sorted(update_ids, reverse=True)

    receiver.received.clear()
    await emulator.deliver_out_of_order(ids, seed=7)
    shuffled = [
        e.invoice.invoice_id for e in (r.outcome for r in receiver.received) if isinstance(e, InvoicePaid)
    ]
    assert sorted(shuffled) == ids and shuffled != ids

    receiver.received.clear()
    started = trio.current_time()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(functools.partial(emulator.deliver_webhook, ids[0], delay=30.0))
        await trio.testing.wait_all_tasks_blocked()
        mock_clock.jump(29.0)
        await trio.testing.wait_all_tasks_blocked()
        assert receiver.received == []  # not before the delay
        mock_clock.jump(1.5)
    assert len(receiver.received) == 1
    assert trio.current_time() - started == pytest.approx(30.5)


async def test_secret_path_segment(receiver: Receiver) -> None:
    emulator = CryptoPayEmulator(TOKEN, webhook_url=receiver.url + "/", webhook_secret_token="s3cr3t")
    await emulator.deliver_webhook(paid_invoice(emulator))
    assert receiver.received[0].path == "/webhooks/cryptopay/s3cr3t"


async def test_only_paid_invoices_are_notified(emulator: CryptoPayEmulator) -> None:
    invoice = emulator.create_invoice(currency_type="fiat", fiat="USD", amount="1", accepted_assets="USDT")
    with pytest.raises(ValueError, match="active"):
        await emulator.deliver_webhook(invoice.invoice_id)
    with pytest.raises(ValueError, match="accept"):
        emulator.mark_paid(invoice.invoice_id, "BTC")


# -- parsing of correctly signed bodies --------------------------------------------------------


def valid_update() -> dict[str, Any]:
    return {
        "update_id": 11,
        "update_type": "invoice_paid",
        "request_date": "2025-03-01T12:01:00.500Z",
        "payload": {
            "invoice_id": 7,
            "hash": "IVABC",
            "status": "paid",
            "currency_type": "fiat",
            "fiat": "RUB",
            "amount": "299",
            "accepted_assets": ["USDT", "TON"],
            "bot_invoice_url": "https://t.me/CryptoBot?start=IVABC",
            "created_at": "2025-03-01T12:00:00.000Z",
            "paid_at": "2025-03-01T12:01:00.000Z",
            "paid_asset": "USDT",
            "paid_amount": "3.29",
            "paid_fiat_rate": "90.9",
            "paid_usd_rate": "1",
            "fee_asset": "USDT",
            "fee_amount": "0.0987",
            "paid_anonymously": False,
            "allow_comments": False,
            "allow_anonymous": True,
            "payload": "payment:42",
        },
    }


def signed(body: bytes) -> dict[str, str]:
    return {"crypto-pay-api-signature": reference_signature(TOKEN, body)}


def test_valid_update_parses_exactly() -> None:
    body = json.dumps(valid_update()).encode()
    event = parse_webhook(TOKEN, body, signed(body))
    assert event.update_id == 11
    assert event.request_date == dt.datetime(2025, 3, 1, 12, 1, 0, 500_000, tzinfo=dt.UTC)
    invoice = event.invoice
    assert (invoice.invoice_id, invoice.fiat, invoice.amount) == (7, "RUB", Decimal("299"))
    assert invoice.paid_amount == Decimal("3.29")
    assert invoice.fee_amount == Decimal("0.0987")
    assert invoice.accepted_assets == ("USDT", "TON")
    assert invoice.paid_at == dt.datetime(2025, 3, 1, 12, 1, tzinfo=dt.UTC)
    assert invoice.amount_minor(0) == 299
    assert invoice.amount_minor() == 29900
    with pytest.raises(ValueError, match="decimal places"):
        dataclasses.replace(invoice, amount=Decimal("2.995")).amount_minor()
    with pytest.raises(ValueError, match="exponent"):
        invoice.amount_minor(-1)


def _mutated(path: tuple[str, ...], value: object) -> dict[str, Any]:
    update = valid_update()
    target = update
    for key in path[:-1]:
        target = target[key]
    if value is ...:
        del target[path[-1]]
    else:
        target[path[-1]] = value
    return update


@pytest.mark.parametrize(
    "body",
    [
        b"not json",
        b"\xff\xfe\x00garbage",
        b"[1, 2]",
        b"[" * 50_000,
        json.dumps(_mutated(("update_type",), "invoice_created")).encode(),
        json.dumps(_mutated(("update_type",), ...)).encode(),
        json.dumps(_mutated(("update_id",), "11")).encode(),
        json.dumps(_mutated(("request_date",), 1700000000)).encode(),
        json.dumps(_mutated(("payload",), "7")).encode(),
        json.dumps(_mutated(("payload", "status"), "active")).encode(),
        json.dumps(_mutated(("payload", "invoice_id"), ...)).encode(),
        json.dumps(_mutated(("payload", "amount"), "1e3")).encode(),
        json.dumps(_mutated(("payload", "amount"), "Infinity")).encode(),
        json.dumps(_mutated(("payload", "amount"), "1_000")).encode(),
        json.dumps(_mutated(("payload", "paid_amount"), "")).encode(),
        json.dumps(_mutated(("payload", "paid_at"), "yesterday")).encode(),
        json.dumps(_mutated(("payload", "created_at"), "2025-13-01T00:00:00Z")).encode(),
        json.dumps(_mutated(("payload", "currency_type"), "barter")).encode(),
        json.dumps(_mutated(("payload", "allow_anonymous"), 1)).encode(),
        json.dumps(_mutated(("payload", "paid_anonymously"), "no")).encode(),
        json.dumps(_mutated(("payload", "accepted_assets"), {"USDT": 1})).encode(),
    ],
)
def test_signed_but_malformed_bodies_are_rejected(body: bytes) -> None:
    with pytest.raises(WebhookMalformed):
        parse_webhook(TOKEN, body, signed(body))


def test_float_looking_numbers_stay_exact() -> None:
    body = (
        json.dumps(_mutated(("payload", "paid_amount"), "PA"))
        .encode()
        .replace(b'"PA"', b"3.2900000000000000001")
    )
    event = parse_webhook(TOKEN, body, signed(body))
    assert event.invoice.paid_amount == Decimal("3.2900000000000000001")


# -- hypothesis: untrusted input never raises anything undocumented ----------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=20) | st.floats(allow_nan=False),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4)
    ),
    max_leaves=12,
)
invoice_keys = list(valid_update()["payload"])
header_values = st.none() | st.text(max_size=80) | st.from_regex(r"[0-9a-fA-F]{64}", fullmatch=True)


@pytest.mark.slow
@given(
    body=st.binary(max_size=512),
    signature=header_values,
    extra=st.dictionaries(st.text(max_size=20), st.text(max_size=20), max_size=3),
)
@settings(max_examples=300, deadline=None)
def test_arbitrary_requests_raise_only_documented_errors(
    body: bytes, signature: str | None, extra: dict[str, str]
) -> None:
    headers = dict(extra)
    if signature is not None:
        headers["crypto-pay-api-signature"] = signature
    assert verify_signature(TOKEN, body, signature) in (True, False)
    try:
        parse_webhook(TOKEN, body, headers)
    except (WebhookSignatureInvalid, WebhookMalformed):
        pass
    else:  # a random 256-bit signature matched: impossible unless the check is broken
        raise AssertionError("an unsigned body was accepted")


@pytest.mark.slow
@given(
    where=st.sampled_from([("payload", key) for key in invoice_keys] + [(k,) for k in valid_update()]),
    value=json_values | st.just(...),
)
@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_signed_mutations_parse_or_raise_malformed(where: tuple[str, ...], value: object) -> None:
    update = _mutated(where, copy.deepcopy(value))
    body = json.dumps(update).encode()
    try:
        event = parse_webhook(TOKEN, body, signed(body))
    except WebhookMalformed:
        return
    # Whatever was accepted is typed as documented: no float money, aware dates.
    invoice = event.invoice
    assert invoice.status == "paid"
    for amount in (invoice.amount, invoice.paid_amount, invoice.paid_fiat_rate, invoice.fee_amount):
        assert amount is None or (isinstance(amount, Decimal) and amount.is_finite() and amount >= 0)
    for moment in (event.request_date, invoice.created_at, invoice.paid_at):
        assert moment is None or moment.utcoffset() == dt.timedelta(0)


@given(value=json_values)
@settings(max_examples=200, deadline=None)
def test_signed_arbitrary_json_parses_or_raises_malformed(value: object) -> None:
    body = json.dumps(value).encode()
    with pytest.raises(WebhookMalformed):
        parse_webhook(TOKEN, body, signed(body))
