"""Client for the Crypto Pay API (CryptoBot): create, look up and delete fiat-priced invoices.

Every call goes through :class:`atlas.net.OutboundHttp`, so it checks the connection guard before
any I/O (inside a unit of work it raises ``ConnectionHeldAcrossIO``, which is *not* translated),
has a timeout and reads a bounded body.

Requests are ``POST`` with a JSON body (the API accepts GET query parameters too). Chosen because a
batch of 1000 invoice ids, a 4 KB payload and a 2 KB hidden message do not fit in the URL limits of
common proxies, and because a URL ends up in access logs while a body does not. Lists are sent as
comma-joined strings and booleans as JSON booleans, as the API documents them.

Error hierarchy (foreign errors are chained ``from`` the original)::

    CryptoPayError                the call did not give a usable answer
    ├── CryptoPayApiError         the API refused the request: {"ok": false, "error": {code, name}}
    │                             (e.g. 400 AMOUNT_TOO_SMALL); retrying the same request is useless
    ├── CryptoPayAuthError        401 UNAUTHORIZED: the token is wrong or revoked (our configuration)
    ├── CryptoPayUnavailable      timeout, connection failure, 5xx or 429: try again later
    └── CryptoPayProtocolError    an answer we cannot trust: not JSON, wrong shape, missing fields,
                                  bad decimals or dates, or a body over the size bound

The token appears only in the request header: never in a log line, a ``repr`` or an exception
message (``repr(client)`` shows the network and the URL only).
"""

from __future__ import annotations

import datetime as dt
import email.utils
import json
import logging
import re
from collections.abc import Callable, Mapping, Sequence
from decimal import Decimal
from typing import Any, Final, Literal, TypeVar

import trio

from atlas.net.http import (
    OutboundHttp,
    OutboundResponse,
    OutboundTimeout,
    OutboundTooLarge,
    OutboundUnavailable,
)
from atlas.payments.cryptopay_types import (
    AppInfo,
    Balance,
    CurrencyInfo,
    ExchangeRate,
    Invoice,
    UnreadableItem,
    WireFormatError,
    parse_app_info,
    parse_balances,
    parse_currencies,
    parse_exchange_rates,
    parse_invoice,
    parse_invoice_items,
    parse_invoice_items_skipping,
)

_log = logging.getLogger("atlas.payments.cryptopay")
_T = TypeVar("_T")

Network = Literal["mainnet", "testnet"]
InvoiceStatusFilter = Literal["active", "paid"]
PaidButtonName = Literal["viewItem", "openChannel", "openBot", "callback"]

BASE_URLS: Final[Mapping[str, str]] = {
    "mainnet": "https://pay.crypt.bot/api/",
    "testnet": "https://testnet-pay.crypt.bot/api/",
}
TOKEN_HEADER: Final = "Crypto-Pay-API-Token"
MAX_IDS_PER_REQUEST: Final = 1000
MAX_PAYLOAD_BYTES: Final = 4096
MAX_DESCRIPTION_CHARS: Final = 1024
MAX_HIDDEN_MESSAGE_CHARS: Final = 2048
MAX_EXPIRES_IN: Final = 2_678_400
PAID_BUTTON_NAMES: Final = ("viewItem", "openChannel", "openBot", "callback")

_ASSET_RE = re.compile(r"[A-Z0-9]{2,10}")
_FIAT_RE = re.compile(r"[A-Z]{3}")
_AMOUNT_RE = re.compile(r"\d{1,20}(?:\.\d{1,18})?")
# Printable ASCII without spaces: anything else cannot go into an HTTP header intact.
_TOKEN_RE = re.compile(r"[\x21-\x7e]+")


class CryptoPayError(Exception):
    """The Crypto Pay call did not give a usable answer."""


class CryptoPayApiError(CryptoPayError):
    """The API refused the request with an error envelope; ``code`` and ``name`` are the API's."""

    def __init__(self, method: str, code: int, name: str) -> None:
        super().__init__(f"Crypto Pay {method}: {code} {name}")
        self.method = method
        self.code = code
        self.name = name


class CryptoPayAuthError(CryptoPayError):
    """401 UNAUTHORIZED: the API token is wrong or revoked; a configuration problem, not an outage."""

    def __init__(self, method: str, code: int = 401, name: str = "UNAUTHORIZED") -> None:
        super().__init__(f"Crypto Pay {method}: {code} {name} (check the API token for this network)")
        self.method = method
        self.code = code
        self.name = name


class CryptoPayUnavailable(CryptoPayError):
    """No answer (timeout, connection failure) or a 5xx/429: the service may recover; retry later.

    ``retry_after`` is the service's own ``Retry-After`` (seconds) when it sent one: a caller
    backing off waits at least that long.
    """

    def __init__(self, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


MAX_RETRY_AFTER = 3600.0
"""A ``Retry-After`` longer than an hour is taken as an hour: a typo at the service must not stop
payments for a day."""


def retry_after_seconds(value: str | None, *, now: dt.datetime | None = None) -> float | None:
    """``Retry-After`` as seconds (delta-seconds or an HTTP date), capped; None when absent or garbage."""
    if value is None:
        return None
    text = value.strip()
    if text.isdigit():
        return min(float(int(text)), MAX_RETRY_AFTER)
    try:
        when = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        return None
    reference = now if now is not None else dt.datetime.now(dt.UTC)
    return min(max((when - reference).total_seconds(), 0.0), MAX_RETRY_AFTER)


class CryptoPayProtocolError(CryptoPayError):
    """The answer cannot be trusted: not JSON, the wrong shape, or invalid fields."""


def _amount_string(amount: Decimal | str) -> str:
    if isinstance(amount, str):
        if not _AMOUNT_RE.fullmatch(amount):
            raise ValueError(f"amount must be a decimal string like '4.99', got {amount!r}")
        value = Decimal(amount)
    elif isinstance(amount, Decimal):
        if not amount.is_finite():
            raise ValueError(f"amount must be finite, got {amount!r}")
        value = amount
    else:
        # float is refused on purpose: money never passes through binary floating point.
        raise TypeError(f"amount must be a Decimal or a decimal string, got {type(amount).__name__}")
    if value <= 0:
        raise ValueError(f"amount must be positive, got {amount!r}")
    text = format(value.normalize(), "f")
    if not _AMOUNT_RE.fullmatch(text):
        raise ValueError(f"amount has too many digits, got {amount!r}")
    return text


def _error_name(content: bytes) -> str:
    """`` NAME`` from an error envelope, or "" when the body is not one (a proxy's HTML page)."""
    try:
        error = json.loads(content).get("error", {})
        name = error.get("name")
    except (ValueError, RecursionError, AttributeError):
        return ""
    return f" {name}" if isinstance(name, str) and name.isidentifier() and len(name) <= 64 else ""


def _check_id(invoice_id: int, field: str = "invoice_id") -> int:
    if isinstance(invoice_id, bool) or not isinstance(invoice_id, int) or invoice_id <= 0:
        raise ValueError(f"{field} must be a positive integer, got {invoice_id!r}")
    return invoice_id


class CryptoPayClient:
    """Crypto Pay API client for one app token on one network.

    ``base_url`` overrides the network's URL (the emulator in :mod:`atlas.testing` passes its own);
    ``http`` lets several clients share one :class:`OutboundHttp` (then this client does not close
    it). ``timeout`` bounds each request, in seconds.

    Cancellation: a cancelled call raises ``trio.Cancelled`` and has no local effect. An invoice the
    API created before the cancellation still exists there and simply expires unpaid.
    """

    def __init__(
        self,
        token: str,
        *,
        network: Network = "mainnet",
        base_url: str | None = None,
        http: OutboundHttp | None = None,
        timeout: float = 10.0,
    ) -> None:
        # Messages below never include the token's value, even a wrong one.
        if not isinstance(token, str) or not _TOKEN_RE.fullmatch(token):
            raise ValueError("token must be a non-empty string of printable ASCII without spaces")
        if network not in BASE_URLS:
            raise ValueError(f"network must be 'mainnet' or 'testnet', got {network!r}")
        if timeout <= 0:
            raise ValueError(f"timeout must be positive, got {timeout!r}")
        url = base_url if base_url is not None else BASE_URLS[network]
        if not url.startswith(("http://", "https://")):
            raise ValueError(f"base_url must be an http(s) URL, got {url!r}")
        self._token = token
        self._network = network
        self._base_url = url if url.endswith("/") else url + "/"
        self._timeout = timeout
        self._owns_http = http is None
        self._http = http if http is not None else OutboundHttp(timeout=timeout)

    def __repr__(self) -> str:
        return f"CryptoPayClient(network={self._network!r}, base_url={self._base_url!r})"

    @property
    def network(self) -> Network:
        """The network this client's token belongs to."""
        return self._network

    async def __aenter__(self) -> CryptoPayClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the HTTP connections, if this client created them."""
        if self._owns_http:
            await self._http.aclose()

    # -- API methods -------------------------------------------------------------------------

    async def get_me(self) -> AppInfo:
        """Return the app the token belongs to (a cheap way to check the token works)."""
        result = await self._call("getMe", {})
        return self._parse("getMe", parse_app_info, result)

    async def create_invoice(
        self,
        *,
        amount: Decimal | str,
        fiat: str,
        accepted_assets: Sequence[str],
        description: str | None,
        payload: str,
        expires_in: int,
        hidden_message: str | None = None,
        paid_btn_name: PaidButtonName | None = None,
        paid_btn_url: str | None = None,
        allow_comments: bool = False,
        allow_anonymous: bool = True,
        swap_to: str | None = None,
    ) -> Invoice:
        """Create a fiat-priced invoice (``amount`` in ``fiat``, paid in one of ``accepted_assets``).

        Arguments are checked before any I/O; a bad one raises ``ValueError``/``TypeError`` naming it.
        ``payload`` (at most 4 KB of UTF-8) comes back unchanged in the webhook: put the payment's
        own id there, not secrets.
        """
        params: dict[str, Any] = {
            "currency_type": "fiat",
            "amount": _amount_string(amount),
            "fiat": self._check_fiat(fiat),
            "accepted_assets": self._check_assets(accepted_assets),
            "payload": self._check_payload(payload),
            "expires_in": self._check_expires_in(expires_in),
            "allow_comments": self._check_bool(allow_comments, "allow_comments"),
            "allow_anonymous": self._check_bool(allow_anonymous, "allow_anonymous"),
        }
        if swap_to is not None:
            if not isinstance(swap_to, str) or not _ASSET_RE.fullmatch(swap_to):
                raise ValueError(f"swap_to must be an asset code like 'USDT', got {swap_to!r}")
            params["swap_to"] = swap_to
        if description is not None:
            params["description"] = self._check_text(description, "description", MAX_DESCRIPTION_CHARS)
        if hidden_message is not None:
            params["hidden_message"] = self._check_text(
                hidden_message, "hidden_message", MAX_HIDDEN_MESSAGE_CHARS
            )
        if (paid_btn_name is None) != (paid_btn_url is None):
            raise ValueError("paid_btn_name and paid_btn_url must be given together")
        if paid_btn_name is not None and paid_btn_url is not None:
            if paid_btn_name not in PAID_BUTTON_NAMES:
                raise ValueError(f"paid_btn_name must be one of {PAID_BUTTON_NAMES}, got {paid_btn_name!r}")
            if not paid_btn_url.startswith(("https://", "http://")):
                raise ValueError(f"paid_btn_url must start with http(s)://, got {paid_btn_url!r}")
            params["paid_btn_name"] = paid_btn_name
            params["paid_btn_url"] = paid_btn_url
        result = await self._call("createInvoice", params)
        return self._parse("createInvoice", parse_invoice, result)

    async def get_invoices(
        self,
        invoice_ids: Sequence[int],
        *,
        on_unreadable: Callable[[UnreadableItem], None] | None = None,
    ) -> list[Invoice]:
        """Return the invoices with these ids (unknown or deleted ids are simply absent).

        Ids are de-duplicated and asked for in batches of at most 1000, each with ``count`` set to
        the batch size (the API's default count of 100 would silently truncate a bigger batch).

        Strict by default: an item that fails the parser, or an id that was not asked for, is a
        protocol error and nothing partial is returned. With ``on_unreadable``, such an item is
        handed to it and skipped, and the rest of the batch is returned: one bad invoice must not
        hide everyone else's payments (issue 11). A broken envelope still raises.
        """
        ids = list(dict.fromkeys(_check_id(i, "invoice_ids[]") for i in invoice_ids))
        invoices: list[Invoice] = []
        for start in range(0, len(ids), MAX_IDS_PER_REQUEST):
            batch = ids[start : start + MAX_IDS_PER_REQUEST]
            params = {"invoice_ids": ",".join(map(str, batch)), "count": len(batch)}
            result = await self._call("getInvoices", params)
            items, unreadable = self._parse("getInvoices", parse_invoice_items_skipping, result)
            asked = set(batch)
            for invoice in items:
                if invoice.invoice_id not in asked:
                    unreadable.append(
                        UnreadableItem(
                            -1,
                            invoice.invoice_id,
                            f"invoice {invoice.invoice_id} was not asked for",
                            f'{{"invoice_id": {invoice.invoice_id}}}'.encode(),
                        )
                    )
            if unreadable and on_unreadable is None:
                raise CryptoPayProtocolError(f"Crypto Pay getInvoices: {unreadable[0].reason}")
            for item in unreadable:
                assert on_unreadable is not None
                on_unreadable(item)
            invoices.extend(invoice for invoice in items if invoice.invoice_id in asked)
        return invoices

    async def get_invoices_page(
        self, status: InvoiceStatusFilter | None = None, offset: int = 0, count: int = 100
    ) -> list[Invoice]:
        """Return one page of the app's invoices (optionally only ``active`` or ``paid`` ones)."""
        if status is not None and status not in ("active", "paid"):
            raise ValueError(f"status must be 'active', 'paid' or None, got {status!r}")
        if isinstance(offset, bool) or not isinstance(offset, int) or offset < 0:
            raise ValueError(f"offset must be a non-negative integer, got {offset!r}")
        if isinstance(count, bool) or not isinstance(count, int) or not 1 <= count <= MAX_IDS_PER_REQUEST:
            raise ValueError(f"count must be an integer in 1..{MAX_IDS_PER_REQUEST}, got {count!r}")
        params: dict[str, Any] = {"offset": offset, "count": count}
        if status is not None:
            params["status"] = status
        result = await self._call("getInvoices", params)
        return self._parse("getInvoices", parse_invoice_items, result)

    async def get_currencies(self) -> list[CurrencyInfo]:
        """Every currency the service knows (crypto and fiat)."""
        result = await self._call("getCurrencies", {})
        return self._parse("getCurrencies", parse_currencies, result)

    async def supported_fiats(self) -> frozenset[str]:
        """The fiat codes the service can price an invoice in (from ``getCurrencies``)."""
        return frozenset(currency.code for currency in await self.get_currencies() if currency.is_fiat)

    async def get_exchange_rates(self) -> list[ExchangeRate]:
        """The service's current exchange rates."""
        result = await self._call("getExchangeRates", {})
        return self._parse("getExchangeRates", parse_exchange_rates, result)

    async def get_balance(self) -> list[Balance]:
        """The app's balances, one per currency."""
        result = await self._call("getBalance", {})
        return self._parse("getBalance", parse_balances, result)

    async def delete_invoice(self, invoice_id: int) -> bool:
        """Delete an invoice; returns the API's boolean answer."""
        result = await self._call("deleteInvoice", {"invoice_id": _check_id(invoice_id)})
        if not isinstance(result, bool):
            raise CryptoPayProtocolError(
                f"Crypto Pay deleteInvoice: expected a boolean result, got {result!r:.60}"
            )
        return result

    # -- argument checks ---------------------------------------------------------------------

    @staticmethod
    def _check_fiat(fiat: str) -> str:
        if not isinstance(fiat, str) or not _FIAT_RE.fullmatch(fiat):
            raise ValueError(f"fiat must be a 3-letter upper-case code like 'USD', got {fiat!r}")
        return fiat

    @staticmethod
    def _check_assets(assets: Sequence[str]) -> str:
        if isinstance(assets, str):
            raise TypeError("accepted_assets must be a sequence of codes, not one string")
        checked = list(assets)
        if not checked:
            raise ValueError("accepted_assets must not be empty")
        for asset in checked:
            if not isinstance(asset, str) or not _ASSET_RE.fullmatch(asset):
                raise ValueError(f"accepted_assets: {asset!r} is not an asset code like 'USDT'")
        return ",".join(checked)

    @staticmethod
    def _check_payload(payload: str) -> str:
        if not isinstance(payload, str):
            raise TypeError(f"payload must be a string, got {type(payload).__name__}")
        size = len(payload.encode("utf-8"))
        if size > MAX_PAYLOAD_BYTES:
            raise ValueError(f"payload must be at most {MAX_PAYLOAD_BYTES} bytes of UTF-8, got {size}")
        return payload

    @staticmethod
    def _check_expires_in(expires_in: int) -> int:
        if (
            isinstance(expires_in, bool)
            or not isinstance(expires_in, int)
            or not 1 <= expires_in <= MAX_EXPIRES_IN
        ):
            raise ValueError(
                f"expires_in must be an integer in 1..{MAX_EXPIRES_IN} seconds, got {expires_in!r}"
            )
        return expires_in

    @staticmethod
    def _check_text(text: str, field: str, limit: int) -> str:
        if not isinstance(text, str):
            raise TypeError(f"{field} must be a string, got {type(text).__name__}")
        if len(text) > limit:
            raise ValueError(f"{field} must be at most {limit} characters, got {len(text)}")
        return text

    @staticmethod
    def _check_bool(value: bool, field: str) -> bool:
        if not isinstance(value, bool):
            raise TypeError(f"{field} must be a bool, got {value!r}")
        return value

    # -- transport and envelope --------------------------------------------------------------

    async def _call(self, method: str, params: Mapping[str, Any]) -> Any:
        """POST one API method and return the envelope's ``result``, or raise a CryptoPayError."""
        started = trio.current_time()
        try:
            response = await self._http.request(
                "POST",
                self._base_url + method,
                json=dict(params),
                headers={TOKEN_HEADER: self._token},
                request_timeout=self._timeout,
            )
        except OutboundTimeout as exc:
            raise CryptoPayUnavailable(f"Crypto Pay {method}: no answer within {self._timeout} s") from exc
        except OutboundUnavailable as exc:
            raise CryptoPayUnavailable(f"Crypto Pay {method}: {exc}") from exc
        except OutboundTooLarge as exc:
            raise CryptoPayProtocolError(f"Crypto Pay {method}: {exc}") from exc
        _log.debug(
            "crypto pay call",
            extra={
                "method": method,
                "status": response.status_code,
                "elapsed_ms": round((trio.current_time() - started) * 1000),
            },
        )
        return self._unwrap(method, response)

    @staticmethod
    def _unwrap(method: str, response: OutboundResponse) -> Any:
        status = response.status_code
        if status == 401:
            raise CryptoPayAuthError(method)
        if status >= 500 or status == 429:
            raise CryptoPayUnavailable(
                f"Crypto Pay {method}: HTTP {status}{_error_name(response.content)}",
                retry_after=retry_after_seconds(response.headers.get("retry-after")),
            )
        try:
            envelope = json.loads(response.content, parse_float=Decimal)
        except (ValueError, RecursionError) as exc:
            raise CryptoPayProtocolError(
                f"Crypto Pay {method}: HTTP {status} with a body that is not JSON"
            ) from exc
        if not isinstance(envelope, dict) or not isinstance(envelope.get("ok"), bool):
            raise CryptoPayProtocolError(f"Crypto Pay {method}: HTTP {status}, not a Crypto Pay envelope")
        if not envelope["ok"]:
            error = envelope.get("error")
            code = error.get("code") if isinstance(error, dict) else None
            name = error.get("name") if isinstance(error, dict) else None
            if isinstance(code, bool) or not isinstance(code, int) or not isinstance(name, str):
                raise CryptoPayProtocolError(
                    f"Crypto Pay {method}: HTTP {status}, malformed error {error!r:.80}"
                )
            if code == 401 or name == "UNAUTHORIZED":
                raise CryptoPayAuthError(method, code, name)
            if code >= 500 or code == 429:
                raise CryptoPayUnavailable(
                    f"Crypto Pay {method}: {code} {name}",
                    retry_after=retry_after_seconds(response.headers.get("retry-after")),
                )
            raise CryptoPayApiError(method, code, name)
        if not 200 <= status < 300:
            raise CryptoPayProtocolError(f"Crypto Pay {method}: HTTP {status} with ok=true")
        if "result" not in envelope:
            raise CryptoPayProtocolError(f"Crypto Pay {method}: ok=true without a result")
        return envelope["result"]

    @staticmethod
    def _parse(method: str, parser: Callable[[Any], _T], result: Any) -> _T:
        try:
            return parser(result)
        except WireFormatError as exc:
            raise CryptoPayProtocolError(f"Crypto Pay {method}: {exc}") from exc
