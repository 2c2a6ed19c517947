"""A Crypto Pay (CryptoBot) emulator: a real HTTP server speaking the API, plus webhook delivery.

Used by the tests and by ``atlas demo``, so it follows the facts in REFERENCE.md rather than our
client: it answers ``/api/<method>`` to GET query parameters and to POST JSON, checks the
``Crypto-Pay-API-Token`` header (401 ``UNAUTHORIZED``), validates ``createInvoice`` like the service
does (``AMOUNT_INVALID``, ``AMOUNT_TOO_SMALL``, ``EXPIRES_IN_INVALID``, ``PAYLOAD_TOO_LONG`` ...; the
names the public documentation does not list are our best guess), and applies ``count`` (default
100) to ``getInvoices`` even when ``invoice_ids`` is given, as the service does. It prices invoices
in every fiat the service documents and answers ``getCurrencies``, ``getExchangeRates`` and
``getBalance`` (:mod:`atlas.testing.cryptopay_reference`); ``swap_to`` is kept on the invoice.

Start it inside a nursery; it serves until the nursery is cancelled::

    emulator = CryptoPayEmulator("123:TEST", webhook_url="http://127.0.0.1:8080/webhooks/cryptopay")
    api_url = await nursery.start(emulator.run)
    client = CryptoPayClient("123:TEST", base_url=api_url)

Controls are plain Python calls (they play the payer and the service's operators):

* invoices: :meth:`create_invoice` (seed without HTTP), :meth:`invoice`, :meth:`invoices`;
* payments: :meth:`mark_paid`, :meth:`expire` (invoices also expire by themselves when the clock
  passes ``expiration_date``), :meth:`pay` (mark paid, then deliver the webhook);
* webhooks: :meth:`deliver_webhook` (with forged / wrong-token / altered-body variants, duplicates,
  a delay, concurrent duplicates) and :meth:`deliver_out_of_order`. A delivery answered with a
  non-2xx status (or not answered) is retried with exponential backoff up to
  ``webhook_max_attempts`` times; the real service tries 17 times over three days;
* faults: :meth:`outage` / :meth:`recover`, :meth:`fail_next`, :meth:`garbage_next`,
  :meth:`rate_limit_next` (429 with ``Retry-After``), :meth:`garble_invoice` (one invoice's field
  answered wrong in ``getInvoices``, so that item fails a strict parser);
* updates Atlas may not know: :meth:`deliver_update` (any signed update body);
* records: :attr:`requests` (every API request, the token never stored) and :attr:`webhook_log`.

Time comes from an :class:`atlas.clock.Clock` (created on first use if none is given), so invoices
created under trio's ``MockClock`` have reproducible dates and expire when the mock clock says so.
"""

from __future__ import annotations

import datetime as dt
import hmac
import json
import re
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from decimal import ROUND_UP, Decimal
from typing import Any, Final, Literal

import trio
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from atlas.clock import Clock, seeded_random
from atlas.net.http import OutboundError, OutboundHttp
from atlas.payments.cryptopay_types import Invoice, format_timestamp, parse_invoice
from atlas.payments.cryptopay_webhook import SIGNATURE_HEADER, compute_signature
from atlas.testing.cryptopay_reference import (
    ASSET_USD_RATES,
    FIAT_USD_RATES,
    SWAP_TARGETS,
    currencies,
    exchange_rates,
)
from atlas.web.server import serve_asgi

OutageMode = Literal["http_503", "drop_connection"]

FEE_RATE: Final = Decimal("0.03")
MAX_REQUEST_BYTES: Final = 256 * 1024
_PAID_BUTTONS: Final = ("viewItem", "openChannel", "openBot", "callback")
_AMOUNT_RE = re.compile(r"\d{1,30}(?:\.\d{1,30})?")
_INT_RE = re.compile(r"-?\d{1,18}")
_EIGHT_PLACES = Decimal("0.00000001")


@dataclass(frozen=True, slots=True)
class RecordedRequest:
    """One API request as the emulator saw it.

    ``params`` merges the query string and the JSON body; ``authorized`` says whether the token
    header was right (the token itself is never stored); ``status`` is None when the emulator broke
    the connection instead of answering.
    """

    http_method: str
    api_method: str
    params: Mapping[str, Any]
    authorized: bool
    status: int | None


@dataclass(frozen=True, slots=True)
class WebhookAttempt:
    """One webhook POST: ``status`` is None when no HTTP answer came (``error`` says why)."""

    update_id: int
    invoice_id: int
    attempt: int
    status: int | None
    error: str | None = None

    @property
    def ok(self) -> bool:
        """True when the receiver answered 2xx (delivery done, no retry)."""
        return self.status is not None and 200 <= self.status < 300


@dataclass(slots=True)
class _StoredInvoice:
    """The emulator's mutable record of one invoice; :meth:`wire` is the API's JSON shape."""

    invoice_id: int
    hash: str
    currency_type: str
    amount: Decimal
    created_at: dt.datetime
    asset: str | None = None
    fiat: str | None = None
    accepted_assets: tuple[str, ...] = ()
    description: str | None = None
    hidden_message: str | None = None
    payload: str | None = None
    paid_btn_name: str | None = None
    paid_btn_url: str | None = None
    allow_comments: bool = True
    allow_anonymous: bool = True
    expiration_date: dt.datetime | None = None
    status: str = "active"
    paid_at: dt.datetime | None = None
    paid_asset: str | None = None
    paid_amount: Decimal | None = None
    paid_fiat_rate: Decimal | None = None
    paid_usd_rate: Decimal | None = None
    fee_amount: Decimal | None = None
    paid_anonymously: bool | None = None
    comment: str | None = None
    swap_to: str | None = None
    garbled: dict[str, Any] | None = None

    def wire(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "invoice_id": self.invoice_id,
            "hash": self.hash,
            "currency_type": self.currency_type,
            "status": self.status,
            "amount": _dec(self.amount),
            "bot_invoice_url": f"https://t.me/CryptoBot?start={self.hash}",
            "mini_app_invoice_url": f"https://t.me/CryptoBot/app?startapp=invoice-{self.hash}",
            "web_app_invoice_url": f"https://app.send.tg/invoices/{self.hash}",
            "created_at": format_timestamp(self.created_at),
            "allow_comments": self.allow_comments,
            "allow_anonymous": self.allow_anonymous,
        }
        optional: dict[str, Any] = {
            "asset": self.asset,
            "fiat": self.fiat,
            "accepted_assets": list(self.accepted_assets) if self.accepted_assets else None,
            "description": self.description,
            "hidden_message": self.hidden_message,
            "payload": self.payload,
            "paid_btn_name": self.paid_btn_name,
            "paid_btn_url": self.paid_btn_url,
            "expiration_date": format_timestamp(self.expiration_date) if self.expiration_date else None,
            "paid_at": format_timestamp(self.paid_at) if self.paid_at else None,
            "paid_asset": self.paid_asset,
            "paid_amount": _dec(self.paid_amount),
            "paid_fiat_rate": _dec(self.paid_fiat_rate),
            "paid_usd_rate": _dec(self.paid_usd_rate),
            "fee_asset": self.paid_asset if self.fee_amount is not None else None,
            "fee_amount": _dec(self.fee_amount),
            "paid_anonymously": self.paid_anonymously,
            "comment": self.comment,
            "swap_to": self.swap_to,
        }
        out.update({key: value for key, value in optional.items() if value is not None})
        return out


def _dec(value: Decimal | None) -> str | None:
    return None if value is None else format(value, "f")


def _answered(stored: _StoredInvoice) -> dict[str, Any]:
    wire = stored.wire()
    if stored.garbled:
        wire.update(stored.garbled)
    return wire


class _ApiFailure(Exception):
    """Raised inside a handler; becomes ``{"ok": false, "error": {code, name}}``."""

    def __init__(self, code: int, name: str) -> None:
        super().__init__(f"{code} {name}")
        self.code = code
        self.name = name


class _DroppedConnection(Response):
    """Promises a 4 KB body, sends nine bytes and returns, so the server closes the connection:
    the client sees a broken connection (what a crashing load balancer looks like), not a status.
    Returning instead of raising keeps the server's error log quiet."""

    def __init__(self) -> None:
        super().__init__()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", b"application/json"), (b"content-length", b"4096")],
            }
        )
        await send({"type": "http.response.body", "body": b'{"ok": tr', "more_body": True})


# ---------------------------------------------------------------------------------------------
# Request parameter readers: GET gives strings, POST JSON gives typed values; accept both.


def _p_str(params: Mapping[str, Any], key: str) -> str | None:
    value = params.get(key)
    if value is None:
        return None
    if not isinstance(value, str):
        raise _ApiFailure(400, f"{key.upper()}_INVALID")
    return value


def _p_int(params: Mapping[str, Any], key: str) -> int | None:
    value = params.get(key)
    if value is None:
        return None
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str) and _INT_RE.fullmatch(value):
        return int(value)
    raise _ApiFailure(400, f"{key.upper()}_INVALID")


def _p_bool(params: Mapping[str, Any], key: str, default: bool) -> bool:
    value = params.get(key)
    if value is None:
        return default
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "false"):
        return value.lower() == "true"
    raise _ApiFailure(400, f"{key.upper()}_INVALID")


def _p_list(params: Mapping[str, Any], key: str) -> list[str] | None:
    value = params.get(key)
    if value is None:
        return None
    if isinstance(value, str):
        items = [item.strip() for item in value.split(",")]
    elif isinstance(value, list) and all(isinstance(v, str | int) and not isinstance(v, bool) for v in value):
        items = [str(item) for item in value]
    elif isinstance(value, int) and not isinstance(value, bool):
        items = [str(value)]
    else:
        raise _ApiFailure(400, f"{key.upper()}_INVALID")
    if not items or any(not item for item in items):
        raise _ApiFailure(400, f"{key.upper()}_INVALID")
    return items


def _p_amount(params: Mapping[str, Any]) -> Decimal:
    value = params.get("amount")
    if isinstance(value, str) and _AMOUNT_RE.fullmatch(value):
        return Decimal(value)
    if isinstance(value, int) and not isinstance(value, bool):
        return Decimal(value)
    if isinstance(value, Decimal) and value.is_finite():
        return value
    if isinstance(value, str) and re.fullmatch(r"-\d+(?:\.\d+)?", value):
        raise _ApiFailure(400, "AMOUNT_TOO_SMALL")
    raise _ApiFailure(400, "AMOUNT_INVALID")


# ---------------------------------------------------------------------------------------------


class CryptoPayEmulator:
    """An in-process Crypto Pay service for one app token. See the module docstring.

    ``webhook_url`` may be set (or changed) later through the attribute of the same name, e.g. once
    the web app's port is known. ``webhook_secret_token``, if given, is appended to the URL as its
    last path segment: the real service only knows the URL registered for the app, so a secret
    path segment is the one extra secret a deployment can have. ``seed`` makes invoice hashes and
    out-of-order delivery reproducible. ``fiats`` narrows the fiats it prices in (all the
    documented ones by default), to play a service that stopped offering one.
    """

    def __init__(
        self,
        token: str,
        *,
        webhook_url: str | None = None,
        webhook_secret_token: str | None = None,
        clock: Clock | None = None,
        seed: int = 0,
        webhook_max_attempts: int = 3,
        webhook_backoff: float = 0.5,
        webhook_backoff_cap: float = 60.0,
        webhook_timeout: float = 5.0,
        min_amount: Decimal = Decimal("0.01"),
        app_id: int = 1001,
        app_name: str = "Atlas emulator",
        fiats: Collection[str] | None = None,
    ) -> None:
        if not token:
            raise ValueError("token must be a non-empty string")
        if webhook_max_attempts < 1:
            raise ValueError(f"webhook_max_attempts must be >= 1, got {webhook_max_attempts!r}")
        if webhook_backoff < 0 or webhook_backoff_cap < 0:
            raise ValueError(f"webhook backoff must be >= 0, got {webhook_backoff!r}/{webhook_backoff_cap!r}")
        self._token = token
        self.webhook_url = webhook_url
        self._webhook_secret = webhook_secret_token
        self._clock = clock
        self._seed = seed
        self._random = seeded_random(seed, "cryptopay-emulator")
        self.webhook_max_attempts = webhook_max_attempts
        self.webhook_backoff = webhook_backoff
        self.webhook_backoff_cap = webhook_backoff_cap
        self.webhook_timeout = webhook_timeout
        self._min_amount = min_amount
        self._app_id = app_id
        self._app_name = app_name
        offered = frozenset(FIAT_USD_RATES if fiats is None else fiats)
        if not offered <= FIAT_USD_RATES.keys():
            raise ValueError(f"fiats must be documented Crypto Pay fiats, got {sorted(offered)}")
        self._fiats = offered
        self._invoices: dict[int, _StoredInvoice] = {}
        self._next_invoice_id = 1
        self._next_update_id = 1
        self._outage: OutageMode | None = None
        self._fail_next: list[tuple[int, str]] = []
        self._garbage_next: list[bytes] = []
        self._rate_limited: list[int] = []
        self._base_url: str | None = None
        self.requests: list[RecordedRequest] = []
        self.webhook_log: list[WebhookAttempt] = []
        self.app = Starlette(routes=[Route("/api/{method}", self._handle, methods=["GET", "POST"])])

    def __repr__(self) -> str:
        return f"CryptoPayEmulator(url={self._base_url!r}, invoices={len(self._invoices)})"

    # -- serving -----------------------------------------------------------------------------

    async def run(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Serve the API until cancelled; ``task_status.started`` gets :attr:`api_url`."""
        try:
            async with trio.open_nursery() as nursery:
                self._base_url = await nursery.start(serve_asgi, self.app, host, port)
                task_status.started(self.api_url)
        finally:
            self._base_url = None

    @property
    def api_url(self) -> str:
        """The base URL to give ``CryptoPayClient(base_url=...)``, ending in ``/api/``."""
        if self._base_url is None:
            raise RuntimeError("the emulator is not serving; start it with nursery.start(emulator.run)")
        return self._base_url + "/api/"

    # -- faults ------------------------------------------------------------------------------

    def outage(self, mode: OutageMode = "http_503") -> None:
        """Make every API call fail until :meth:`recover`: answer 503, or break the connection."""
        if mode not in ("http_503", "drop_connection"):
            raise ValueError(f"mode must be 'http_503' or 'drop_connection', got {mode!r}")
        self._outage = mode

    def recover(self) -> None:
        """End an :meth:`outage`."""
        self._outage = None

    def fail_next(self, n: int = 1, *, status: int = 500, name: str = "INTERNAL_ERROR") -> None:
        """Answer the next ``n`` API calls with ``status`` and an error envelope named ``name``."""
        self._fail_next.extend([(status, name)] * n)

    def garbage_next(self, n: int = 1, *, body: bytes = b"<html><body>Bad Gateway</body></html>") -> None:
        """Answer the next ``n`` API calls with HTTP 200 and ``body`` (not an envelope by default)."""
        self._garbage_next.extend([body] * n)

    def rate_limit_next(self, n: int = 1, *, retry_after: int = 60) -> None:
        """Answer the next ``n`` API calls with 429 ``TOO_MANY_REQUESTS`` and ``Retry-After``."""
        self._rate_limited.extend([retry_after] * n)

    def garble_invoice(self, invoice_id: int, **fields: Any) -> None:
        """From now on, ``getInvoices`` describes this invoice with ``fields`` overridden (say
        ``status="refunded"`` or ``amount="1e3"``): one item a strict parser refuses, among good ones.
        """
        self._get(invoice_id).garbled = dict(fields)

    def balance(self) -> dict[str, Decimal]:
        """What ``getBalance`` answers: per asset, what was paid minus the fees."""
        totals: dict[str, Decimal] = dict.fromkeys(ASSET_USD_RATES, Decimal(0))
        for stored in self._invoices.values():
            if stored.status == "paid" and stored.paid_asset and stored.paid_amount is not None:
                fee = stored.fee_amount or Decimal(0)
                totals[stored.paid_asset] += stored.paid_amount - fee
        return totals

    # -- invoices ----------------------------------------------------------------------------

    def invoice(self, invoice_id: int) -> Invoice:
        """Return the invoice as the API would describe it now (raises ``LookupError`` if unknown)."""
        return parse_invoice(self._get(invoice_id).wire())

    def invoices(self) -> list[Invoice]:
        """Every invoice that has not been deleted, oldest first."""
        return [self.invoice(invoice_id) for invoice_id in sorted(self._invoices)]

    def create_invoice(self, **params: Any) -> Invoice:
        """Create an invoice directly, with the API's parameter names and checks.

        For seeding a scenario without HTTP (``emulator.create_invoice(currency_type="fiat",
        fiat="USD", amount="5", accepted_assets="USDT")``). An invalid parameter raises
        ``ValueError`` carrying the API's error name.
        """
        try:
            stored = self._create_invoice(params)
        except _ApiFailure as failure:
            raise ValueError(f"createInvoice refused: {failure.code} {failure.name}") from failure
        return self.invoice(stored.invoice_id)

    def mark_paid(
        self,
        invoice_id: int,
        paid_asset: str = "USDT",
        paid_amount: Decimal | str | None = None,
        *,
        comment: str | None = None,
        anonymous: bool = False,
    ) -> Invoice:
        """Play the payer: the invoice becomes ``paid`` now, in ``paid_asset``.

        ``paid_amount`` defaults to the invoice amount converted at the emulator's fixed rates.
        Raises ``ValueError`` if the invoice is not active or the asset is not accepted.
        Does not send the webhook: call :meth:`deliver_webhook` (or use :meth:`pay`).
        """
        stored = self._get(invoice_id)
        if stored.status != "active":
            raise ValueError(f"invoice {invoice_id} is {stored.status}, only an active invoice can be paid")
        accepted = stored.accepted_assets or ((stored.asset,) if stored.asset else ())
        if paid_asset not in accepted or paid_asset not in ASSET_USD_RATES:
            raise ValueError(f"invoice {invoice_id} does not accept {paid_asset!r} (accepts {accepted})")
        usd_rate = ASSET_USD_RATES[paid_asset]
        if stored.currency_type == "fiat":
            fiat_rate = (usd_rate / FIAT_USD_RATES[stored.fiat or "USD"]).quantize(_EIGHT_PLACES)
            default_amount = (stored.amount / fiat_rate).quantize(_EIGHT_PLACES, rounding=ROUND_UP)
        else:
            fiat_rate = usd_rate
            default_amount = stored.amount
        amount = Decimal(paid_amount) if paid_amount is not None else default_amount
        stored.status = "paid"
        stored.paid_at = self._now()
        stored.paid_asset = paid_asset
        stored.paid_amount = amount
        stored.paid_fiat_rate = fiat_rate
        stored.paid_usd_rate = usd_rate
        stored.fee_amount = (amount * FEE_RATE).quantize(_EIGHT_PLACES)
        stored.paid_anonymously = anonymous
        stored.comment = comment
        return self.invoice(invoice_id)

    def expire(self, invoice_id: int) -> Invoice:
        """Make an active invoice ``expired`` now (raises ``ValueError`` if it is not active)."""
        stored = self._get(invoice_id)
        if stored.status != "active":
            raise ValueError(f"invoice {invoice_id} is {stored.status}, only an active invoice can expire")
        stored.status = "expired"
        return self.invoice(invoice_id)

    async def pay(self, invoice_id: int, paid_asset: str = "USDT") -> list[WebhookAttempt]:
        """What the real service does on payment: :meth:`mark_paid`, then :meth:`deliver_webhook`."""
        self.mark_paid(invoice_id, paid_asset)
        return await self.deliver_webhook(invoice_id)

    # -- webhooks ----------------------------------------------------------------------------

    async def deliver_webhook(
        self,
        invoice_id: int,
        *,
        forged: bool = False,
        wrong_token: bool = False,
        alter_body: bool = False,
        duplicate: int = 0,
        delay: float = 0.0,
        concurrently: bool = False,
    ) -> list[WebhookAttempt]:
        """Send an ``invoice_paid`` update for a paid invoice to :attr:`webhook_url`.

        Variants for the receiver's tests: ``forged`` signs with random bytes, ``wrong_token`` signs
        with another app's token, ``alter_body`` changes the amount after signing. ``duplicate``
        sends the very same update (same ``update_id`` and bytes) that many extra times, after the
        first or, with ``concurrently``, at the same time. ``delay`` waits before sending.
        Returns every attempt, retries included (also appended to :attr:`webhook_log`).
        """
        update_id, body, signature = self._build_update(
            invoice_id, forged=forged, wrong_token=wrong_token, alter_body=alter_body
        )
        if delay > 0:
            await trio.sleep(delay)
        attempts: list[WebhookAttempt] = []
        copies = 1 + duplicate
        if concurrently and copies > 1:
            async with trio.open_nursery() as nursery:
                for _ in range(copies):
                    nursery.start_soon(
                        self._deliver_with_retries, invoice_id, update_id, body, signature, attempts
                    )
        else:
            for _ in range(copies):
                await self._deliver_with_retries(invoice_id, update_id, body, signature, attempts)
        return attempts

    async def deliver_update(self, update: Mapping[str, Any]) -> list[WebhookAttempt]:
        """Sign and send any update body (a new ``update_type``, a field Atlas does not expect),
        with the usual retries. Attempts are recorded with ``invoice_id`` 0."""
        body = json.dumps(dict(update), separators=(",", ":"), default=str).encode()
        update_id = update.get("update_id")
        attempts: list[WebhookAttempt] = []
        await self._deliver_with_retries(
            0,
            update_id if isinstance(update_id, int) else 0,
            body,
            compute_signature(self._token, body),
            attempts,
        )
        return attempts

    async def deliver_out_of_order(
        self, invoice_ids: Sequence[int], *, seed: int | None = None
    ) -> list[WebhookAttempt]:
        """Create one update per invoice in the given order, then deliver them out of that order.

        Without ``seed`` the order is reversed; with it, a seeded shuffle (never the given order
        when there are two or more). Each delivery has the usual retries.
        """
        updates = [(invoice_id, *self._build_update(invoice_id)) for invoice_id in invoice_ids]
        order = list(reversed(updates))
        if seed is not None and len(updates) > 1:
            rng = seeded_random(seed, "cryptopay-webhook-order")
            order = list(updates)
            while order == updates:
                rng.shuffle(order)
        attempts: list[WebhookAttempt] = []
        for invoice_id, update_id, body, signature in order:
            await self._deliver_with_retries(invoice_id, update_id, body, signature, attempts)
        return attempts

    def _build_update(
        self, invoice_id: int, *, forged: bool = False, wrong_token: bool = False, alter_body: bool = False
    ) -> tuple[int, bytes, str]:
        invoice = self._get(invoice_id)
        if invoice.status != "paid":
            raise ValueError(
                f"invoice {invoice_id} is {invoice.status}; Crypto Pay only notifies paid invoices"
            )
        update_id = self._next_update_id
        self._next_update_id += 1
        payload = invoice.wire()
        update: dict[str, Any] = {
            "update_id": update_id,
            "update_type": "invoice_paid",
            "request_date": format_timestamp(self._now()),
            "payload": payload,
        }
        body = json.dumps(update, separators=(",", ":")).encode()
        signature = compute_signature(self._token + "-other-app" if wrong_token else self._token, body)
        if forged:
            signature = f"{self._random.getrandbits(256):064x}"
        if alter_body:
            payload["amount"] = _dec(invoice.amount * 100)
            body = json.dumps(update, separators=(",", ":")).encode()
        return update_id, body, signature

    async def _deliver_with_retries(
        self, invoice_id: int, update_id: int, body: bytes, signature: str, out: list[WebhookAttempt]
    ) -> None:
        if self.webhook_url is None:
            raise RuntimeError("no webhook_url configured on the emulator")
        url = self.webhook_url
        if self._webhook_secret is not None:
            url = url.rstrip("/") + "/" + self._webhook_secret
        headers = {SIGNATURE_HEADER: signature, "content-type": "application/json"}
        async with OutboundHttp(timeout=self.webhook_timeout, max_response_bytes=64 * 1024) as http:
            for attempt in range(1, self.webhook_max_attempts + 1):
                try:
                    response = await http.request("POST", url, content=body, headers=headers)
                    result = WebhookAttempt(update_id, invoice_id, attempt, response.status_code)
                except OutboundError as exc:
                    result = WebhookAttempt(
                        update_id, invoice_id, attempt, None, f"{exc.__class__.__name__}: {exc}"
                    )
                out.append(result)
                self.webhook_log.append(result)
                if result.ok:
                    return
                if attempt < self.webhook_max_attempts:
                    await trio.sleep(min(self.webhook_backoff_cap, self.webhook_backoff * 2 ** (attempt - 1)))

    # -- the API -----------------------------------------------------------------------------

    async def _handle(self, request: Request) -> Response:
        api_method = request.path_params["method"]
        params: dict[str, Any] = dict(request.query_params)
        given = request.headers.get("crypto-pay-api-token", "")
        authorized = hmac.compare_digest(given.encode("utf-8", "replace"), self._token.encode("utf-8"))
        # Faults come first: a dead service does not read the request.
        response = self._fault_response()
        if response is None:
            try:
                if request.method == "POST":
                    params.update(await self._read_json(request))
                if not authorized:
                    raise _ApiFailure(401, "UNAUTHORIZED")
                response = self._ok(self._dispatch(api_method, params))
            except _ApiFailure as failure:
                response = self._error(failure.code, failure.name)
        self.requests.append(
            RecordedRequest(
                request.method,
                api_method,
                params,
                authorized,
                None if isinstance(response, _DroppedConnection) else response.status_code,
            )
        )
        return response

    def _fault_response(self) -> Response | None:
        if self._outage == "http_503":
            return Response(
                b"<html><body>503 Service Temporarily Unavailable</body></html>", 503, media_type="text/html"
            )
        if self._outage == "drop_connection":
            return _DroppedConnection()
        if self._fail_next:
            status, name = self._fail_next.pop(0)
            return self._error(status, name)
        if self._rate_limited:
            response = self._error(429, "TOO_MANY_REQUESTS")
            response.headers["retry-after"] = str(self._rate_limited.pop(0))
            return response
        if self._garbage_next:
            return Response(self._garbage_next.pop(0), 200, media_type="text/html")
        return None

    @staticmethod
    async def _read_json(request: Request) -> dict[str, Any]:
        chunks: list[bytes] = []
        size = 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > MAX_REQUEST_BYTES:
                raise _ApiFailure(413, "REQUEST_TOO_LARGE")
            chunks.append(chunk)
        raw = b"".join(chunks)
        if not raw.strip():
            return {}
        try:
            decoded = json.loads(raw, parse_float=Decimal)
        except (ValueError, RecursionError) as exc:
            raise _ApiFailure(400, "BAD_REQUEST") from exc
        if not isinstance(decoded, dict):
            raise _ApiFailure(400, "BAD_REQUEST")
        return decoded

    @staticmethod
    def _ok(result: Any) -> Response:
        return JSONResponse({"ok": True, "result": result})

    @staticmethod
    def _error(code: int, name: str) -> Response:
        return JSONResponse({"ok": False, "error": {"code": code, "name": name}}, status_code=code)

    def _dispatch(self, api_method: str, params: Mapping[str, Any]) -> Any:
        if api_method == "getMe":
            return {
                "app_id": self._app_id,
                "name": self._app_name,
                "payment_processing_bot_username": "CryptoBot",
            }
        if api_method == "createInvoice":
            return self._create_invoice(params).wire()
        if api_method == "getInvoices":
            return {"items": [_answered(stored) for stored in self._get_invoices(params)]}
        if api_method == "getCurrencies":
            return currencies(self._fiats)
        if api_method == "getExchangeRates":
            return exchange_rates()
        if api_method == "getBalance":
            return [
                {"currency_code": code, "available": _dec(amount), "onhold": "0"}
                for code, amount in self.balance().items()
            ]
        if api_method == "deleteInvoice":
            invoice_id = _p_int(params, "invoice_id")
            if invoice_id is None:
                raise _ApiFailure(400, "INVOICE_ID_INVALID")
            if self._invoices.pop(invoice_id, None) is None:
                raise _ApiFailure(400, "INVOICE_NOT_FOUND")
            return True
        raise _ApiFailure(405, "METHOD_NOT_FOUND")

    def _create_invoice(self, params: Mapping[str, Any]) -> _StoredInvoice:
        currency_type = _p_str(params, "currency_type") or "crypto"
        asset: str | None = None
        fiat: str | None = None
        accepted: tuple[str, ...] = ()
        if currency_type == "crypto":
            asset = _p_str(params, "asset")
            if asset not in ASSET_USD_RATES:
                raise _ApiFailure(400, "ASSET_INVALID")
        elif currency_type == "fiat":
            fiat = _p_str(params, "fiat")
            if fiat not in self._fiats:
                raise _ApiFailure(400, "FIAT_INVALID")
            accepted = tuple(_p_list(params, "accepted_assets") or ASSET_USD_RATES)
            if any(item not in ASSET_USD_RATES for item in accepted):
                raise _ApiFailure(400, "ACCEPTED_ASSETS_INVALID")
        else:
            raise _ApiFailure(400, "CURRENCY_TYPE_INVALID")
        amount = _p_amount(params)
        if amount <= 0 or amount < self._min_amount:
            raise _ApiFailure(400, "AMOUNT_TOO_SMALL")
        description = _p_str(params, "description")
        if description is not None and len(description) > 1024:
            raise _ApiFailure(400, "DESCRIPTION_TOO_LONG")
        hidden_message = _p_str(params, "hidden_message")
        if hidden_message is not None and len(hidden_message) > 2048:
            raise _ApiFailure(400, "HIDDEN_MESSAGE_TOO_LONG")
        payload = _p_str(params, "payload")
        if payload is not None and len(payload.encode("utf-8")) > 4096:
            raise _ApiFailure(400, "PAYLOAD_TOO_LONG")
        paid_btn_name = _p_str(params, "paid_btn_name")
        paid_btn_url = _p_str(params, "paid_btn_url")
        if paid_btn_name is not None:
            if paid_btn_name not in _PAID_BUTTONS:
                raise _ApiFailure(400, "PAID_BTN_NAME_INVALID")
            if paid_btn_url is None or not paid_btn_url.startswith(("https://", "http://")):
                raise _ApiFailure(400, "PAID_BTN_URL_INVALID")
        expires_in = _p_int(params, "expires_in")
        if expires_in is not None and not 1 <= expires_in <= 2_678_400:
            raise _ApiFailure(400, "EXPIRES_IN_INVALID")
        swap_to = _p_str(params, "swap_to")
        if swap_to is not None and swap_to not in SWAP_TARGETS:
            raise _ApiFailure(400, "SWAP_TO_INVALID")
        now = self._now()
        stored = _StoredInvoice(
            invoice_id=self._next_invoice_id,
            hash="IV" + "".join(self._random.choice("ABCDEFGHJKLMNPQRSTUVWXYZ23456789") for _ in range(10)),
            currency_type=currency_type,
            amount=amount,
            created_at=now,
            asset=asset,
            fiat=fiat,
            accepted_assets=accepted,
            description=description,
            hidden_message=hidden_message,
            payload=payload,
            paid_btn_name=paid_btn_name,
            paid_btn_url=paid_btn_url if paid_btn_name is not None else None,
            allow_comments=_p_bool(params, "allow_comments", True),
            allow_anonymous=_p_bool(params, "allow_anonymous", True),
            expiration_date=now + dt.timedelta(seconds=expires_in) if expires_in is not None else None,
            swap_to=swap_to,
        )
        self._next_invoice_id += 1
        self._invoices[stored.invoice_id] = stored
        return stored

    def _get_invoices(self, params: Mapping[str, Any]) -> list[_StoredInvoice]:
        status = _p_str(params, "status")
        if status is not None and status not in ("active", "paid"):
            raise _ApiFailure(400, "STATUS_INVALID")
        offset = _p_int(params, "offset")
        offset = 0 if offset is None else offset
        if offset < 0:
            raise _ApiFailure(400, "OFFSET_INVALID")
        count = _p_int(params, "count")
        count = 100 if count is None else count
        if not 1 <= count <= 1000:
            raise _ApiFailure(400, "COUNT_INVALID")
        ids = _p_list(params, "invoice_ids")
        if ids is not None:
            if not all(_INT_RE.fullmatch(item) for item in ids):
                raise _ApiFailure(400, "INVOICE_IDS_INVALID")
            wanted = list(dict.fromkeys(int(item) for item in ids))
            found = [self._invoices[i] for i in wanted if i in self._invoices]
        else:
            # Newest first, like the service.
            found = [self._invoices[i] for i in sorted(self._invoices, reverse=True)]
        assets = _p_list(params, "asset")
        fiats = _p_list(params, "fiat")
        selected: list[_StoredInvoice] = []
        for stored in found:
            self._expire_if_due(stored)
            if status is not None and stored.status != status:
                continue
            if assets is not None and stored.asset not in assets:
                continue
            if fiats is not None and stored.fiat not in fiats:
                continue
            selected.append(stored)
        return selected[offset : offset + count]

    # -- helpers -----------------------------------------------------------------------------

    def _now(self) -> dt.datetime:
        if self._clock is None:
            self._clock = Clock()
        return self._clock.now()

    def _get(self, invoice_id: int) -> _StoredInvoice:
        stored = self._invoices.get(invoice_id)
        if stored is None:
            raise LookupError(f"no invoice {invoice_id} in the emulator (never created, or deleted)")
        self._expire_if_due(stored)
        return stored

    def _expire_if_due(self, stored: _StoredInvoice) -> None:
        if (
            stored.status == "active"
            and stored.expiration_date is not None
            and self._now() >= stored.expiration_date
        ):
            stored.status = "expired"
