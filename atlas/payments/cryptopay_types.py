"""Crypto Pay values (Invoice, AppInfo, InvoicePaid) and their strict parsers.

Everything here is pure: no I/O, no clock. The parsers take already-decoded JSON (decode with
``json.loads(raw, parse_float=Decimal)`` so that a stray JSON number never becomes a float) and
either return a frozen value or raise :class:`WireFormatError` naming the field and the value.
Callers translate that error at their boundary: the client into ``CryptoPayProtocolError``, the
webhook check into ``WebhookMalformed``. Garbage is never a silent success.

What "strict" means here:

* Fields the API always sends (``invoice_id``, ``hash``, ``status``, ``currency_type``, ``amount``,
  ``bot_invoice_url``, ``created_at``, ``allow_comments``, ``allow_anonymous``) are required.
* Optional fields may be absent or ``null`` (-> ``None``); when present they must have the right type.
* Amounts and rates are decimal strings on the wire (``"12.50"``) and become :class:`Decimal`, never
  float. Exponents, whitespace, signs, ``NaN`` and Python's ``1_000`` are rejected.
* Dates are ISO 8601 with a ``Z`` or an offset (``2024-05-01T12:00:00.123Z``) and become aware UTC
  datetimes; a naive or date-only value is rejected.
* Cross-field rules: a ``fiat`` invoice names its ``fiat``, a ``crypto`` one its ``asset``; a ``paid``
  invoice has ``paid_at``.
* Unknown extra fields are ignored, so an API that grows a field does not break payments.
"""

from __future__ import annotations

import datetime as dt
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Literal, get_args

InvoiceStatus = Literal["active", "paid", "expired"]
CurrencyType = Literal["crypto", "fiat"]

_STATUSES: tuple[str, ...] = get_args(InvoiceStatus)
_CURRENCY_TYPES: tuple[str, ...] = get_args(CurrencyType)

# Bounded on purpose: an amount of ten thousand digits is garbage, not money.
_DECIMAL_RE = re.compile(r"\d{1,40}(?:\.\d{1,40})?")
_TIMESTAMP_RE = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(?:\.\d{1,6})?(?:Z|[+-]\d{2}:\d{2})")
_MAX_REPR = 60


class WireFormatError(ValueError):
    """A Crypto Pay object did not have the documented shape; ``field`` names the culprit."""

    def __init__(self, field: str, expected: str, value: object) -> None:
        shown = repr(value)
        if len(shown) > _MAX_REPR:
            shown = shown[:_MAX_REPR] + "…"
        super().__init__(f"{field}: expected {expected}, got {shown}")
        self.field = field


@dataclass(frozen=True, slots=True, kw_only=True)
class AppInfo:
    """The answer of ``getMe``: which Crypto Pay app the token belongs to."""

    app_id: int
    name: str
    payment_processing_bot_username: str


@dataclass(frozen=True, slots=True, kw_only=True)
class Invoice:
    """One Crypto Pay invoice as the API (or a webhook) describes it.

    Amounts are :class:`Decimal` in the invoice's own unit (``amount`` is in ``fiat`` for fiat
    invoices, in ``asset`` for crypto ones); :meth:`amount_minor` converts to integer minor units.
    """

    invoice_id: int
    hash: str
    status: InvoiceStatus
    currency_type: CurrencyType
    amount: Decimal
    bot_invoice_url: str
    created_at: dt.datetime
    allow_comments: bool
    allow_anonymous: bool
    asset: str | None = None
    fiat: str | None = None
    accepted_assets: tuple[str, ...] = ()
    mini_app_invoice_url: str | None = None
    web_app_invoice_url: str | None = None
    description: str | None = None
    hidden_message: str | None = None
    payload: str | None = None
    paid_btn_name: str | None = None
    paid_btn_url: str | None = None
    expiration_date: dt.datetime | None = None
    paid_at: dt.datetime | None = None
    paid_asset: str | None = None
    paid_amount: Decimal | None = None
    paid_fiat_rate: Decimal | None = None
    paid_usd_rate: Decimal | None = None
    fee_asset: str | None = None
    fee_amount: Decimal | None = None
    paid_anonymously: bool | None = None
    comment: str | None = None
    swap_to: str | None = None

    def amount_minor(self, exponent: int = 2) -> int:
        """Return ``amount`` in integer minor units (``exponent`` decimal places; 2 for USD/EUR/RUB).

        Raises ``ValueError`` when the amount has more fractional digits than the unit allows:
        rounding money silently is how balances drift.
        """
        if exponent < 0:
            raise ValueError(f"exponent must be >= 0, got {exponent!r}")
        scaled = self.amount.scaleb(exponent)
        if scaled != scaled.to_integral_value():
            raise ValueError(
                f"invoice {self.invoice_id}: amount {self.amount} has more than {exponent} decimal places"
            )
        return int(scaled)


@dataclass(frozen=True, slots=True, kw_only=True)
class InvoicePaid:
    """A verified ``invoice_paid`` webhook update, ready for the route to apply (idempotently)."""

    update_id: int
    request_date: dt.datetime
    invoice: Invoice


@dataclass(frozen=True, slots=True, kw_only=True)
class CurrencyInfo:
    """One entry of ``getCurrencies``: a code the service knows and whether it is a fiat."""

    code: str
    name: str
    is_fiat: bool
    is_blockchain: bool
    is_stablecoin: bool
    decimals: int | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class ExchangeRate:
    """One entry of ``getExchangeRates``: 1 ``source`` = ``rate`` ``target``."""

    source: str
    target: str
    rate: Decimal
    is_valid: bool
    is_crypto: bool
    is_fiat: bool


@dataclass(frozen=True, slots=True, kw_only=True)
class Balance:
    """One entry of ``getBalance``: the app's funds in one currency."""

    currency_code: str
    available: Decimal
    onhold: Decimal


# ---------------------------------------------------------------------------------------------
# Field readers: each checks one field and names it in the error.


def _req(obj: Mapping[str, Any], key: str, where: str) -> Any:
    value = obj.get(key)
    if value is None:
        raise WireFormatError(f"{where}.{key}", "a value (field is required)", value)
    return value


def _int(value: Any, field: str) -> int:
    # bool is an int subclass; True is not an invoice id.
    if isinstance(value, bool) or not isinstance(value, int):
        raise WireFormatError(field, "an integer", value)
    return value


def _str(value: Any, field: str) -> str:
    if not isinstance(value, str):
        raise WireFormatError(field, "a string", value)
    return value


def _bool(value: Any, field: str) -> bool:
    if not isinstance(value, bool):
        raise WireFormatError(field, "a boolean", value)
    return value


def parse_decimal(value: Any, field: str) -> Decimal:
    """Parse a non-negative decimal amount: a plain decimal string, or an exact JSON number.

    JSON numbers are tolerated only as ``int`` or ``Decimal`` (decode with ``parse_float=Decimal``);
    a Python ``float`` is rejected, because it already lost precision.
    """
    if isinstance(value, str):
        if not _DECIMAL_RE.fullmatch(value):
            raise WireFormatError(field, "a non-negative decimal string like '12.50'", value)
        return Decimal(value)
    if isinstance(value, int) and not isinstance(value, bool):
        if value < 0 or value >= 10**40:
            raise WireFormatError(field, "a non-negative amount", value)
        return Decimal(value)
    if isinstance(value, Decimal):
        if not value.is_finite() or value < 0 or value.adjusted() >= 40:
            raise WireFormatError(field, "a finite, non-negative amount", value)
        exponent = value.as_tuple().exponent
        if isinstance(exponent, int) and exponent < -40:
            raise WireFormatError(field, "at most 40 decimal places", value)
        return value
    raise WireFormatError(field, "a decimal string", value)


def parse_timestamp(value: Any, field: str) -> dt.datetime:
    """Parse an ISO 8601 timestamp with ``Z`` or an offset into an aware UTC datetime."""
    if not isinstance(value, str) or not _TIMESTAMP_RE.fullmatch(value):
        raise WireFormatError(field, "an ISO 8601 timestamp like '2024-05-01T12:00:00.000Z'", value)
    try:
        parsed = dt.datetime.fromisoformat(value)
    except ValueError as exc:  # the shape matched but the date does not exist (2024-02-31)
        raise WireFormatError(field, "a real calendar date", value) from exc
    return parsed.astimezone(dt.UTC)


def format_timestamp(moment: dt.datetime) -> str:
    """Format an aware datetime the way Crypto Pay does: UTC, milliseconds, ``Z``."""
    if moment.tzinfo is None:
        raise ValueError(f"timestamp must be timezone-aware, got {moment!r}")
    utc = moment.astimezone(dt.UTC)
    return utc.strftime("%Y-%m-%dT%H:%M:%S.") + f"{utc.microsecond // 1000:03d}Z"


def _opt(obj: Mapping[str, Any], key: str) -> Any:
    return obj.get(key)


def _opt_str(obj: Mapping[str, Any], key: str, where: str) -> str | None:
    value = obj.get(key)
    return None if value is None else _str(value, f"{where}.{key}")


def _opt_decimal(obj: Mapping[str, Any], key: str, where: str) -> Decimal | None:
    value = obj.get(key)
    return None if value is None else parse_decimal(value, f"{where}.{key}")


def _opt_timestamp(obj: Mapping[str, Any], key: str, where: str) -> dt.datetime | None:
    value = obj.get(key)
    return None if value is None else parse_timestamp(value, f"{where}.{key}")


def _assets(value: Any, field: str) -> tuple[str, ...]:
    # The documentation calls it a comma-separated string; the live API answers with an array.
    if value is None:
        return ()
    if isinstance(value, str):
        items: list[Any] = value.split(",") if value else []
    elif isinstance(value, list):
        items = value
    else:
        raise WireFormatError(field, "a list of asset codes", value)
    assets: list[str] = []
    for item in items:
        if not isinstance(item, str) or not item or "," in item:
            raise WireFormatError(field, "non-empty asset codes", value)
        assets.append(item)
    return tuple(assets)


def _object(value: Any, field: str) -> Mapping[str, Any]:
    if not isinstance(value, dict):
        raise WireFormatError(field, "a JSON object", value)
    return value


# ---------------------------------------------------------------------------------------------
# Object parsers.


def parse_app_info(value: Any) -> AppInfo:
    """Parse the ``getMe`` result."""
    obj = _object(value, "app")
    return AppInfo(
        app_id=_int(_req(obj, "app_id", "app"), "app.app_id"),
        name=_str(_req(obj, "name", "app"), "app.name"),
        payment_processing_bot_username=_str(
            _req(obj, "payment_processing_bot_username", "app"), "app.payment_processing_bot_username"
        ),
    )


def parse_invoice(value: Any, where: str = "invoice") -> Invoice:
    """Parse one Invoice object strictly; ``where`` prefixes field names in errors."""
    obj = _object(value, where)
    status = _str(_req(obj, "status", where), f"{where}.status")
    if status not in _STATUSES:
        raise WireFormatError(f"{where}.status", f"one of {_STATUSES}", status)
    currency_type = _str(_req(obj, "currency_type", where), f"{where}.currency_type")
    if currency_type not in _CURRENCY_TYPES:
        raise WireFormatError(f"{where}.currency_type", f"one of {_CURRENCY_TYPES}", currency_type)
    paid_anonymously = _opt(obj, "paid_anonymously")
    if paid_anonymously is not None:
        paid_anonymously = _bool(paid_anonymously, f"{where}.paid_anonymously")
    invoice = Invoice(
        invoice_id=_int(_req(obj, "invoice_id", where), f"{where}.invoice_id"),
        hash=_str(_req(obj, "hash", where), f"{where}.hash"),
        status=status,  # type: ignore[arg-type]  # checked against the Literal's values above
        currency_type=currency_type,  # type: ignore[arg-type]  # checked above
        amount=parse_decimal(_req(obj, "amount", where), f"{where}.amount"),
        bot_invoice_url=_str(_req(obj, "bot_invoice_url", where), f"{where}.bot_invoice_url"),
        created_at=parse_timestamp(_req(obj, "created_at", where), f"{where}.created_at"),
        allow_comments=_bool(_req(obj, "allow_comments", where), f"{where}.allow_comments"),
        allow_anonymous=_bool(_req(obj, "allow_anonymous", where), f"{where}.allow_anonymous"),
        asset=_opt_str(obj, "asset", where),
        fiat=_opt_str(obj, "fiat", where),
        accepted_assets=_assets(_opt(obj, "accepted_assets"), f"{where}.accepted_assets"),
        mini_app_invoice_url=_opt_str(obj, "mini_app_invoice_url", where),
        web_app_invoice_url=_opt_str(obj, "web_app_invoice_url", where),
        description=_opt_str(obj, "description", where),
        hidden_message=_opt_str(obj, "hidden_message", where),
        payload=_opt_str(obj, "payload", where),
        paid_btn_name=_opt_str(obj, "paid_btn_name", where),
        paid_btn_url=_opt_str(obj, "paid_btn_url", where),
        expiration_date=_opt_timestamp(obj, "expiration_date", where),
        paid_at=_opt_timestamp(obj, "paid_at", where),
        paid_asset=_opt_str(obj, "paid_asset", where),
        paid_amount=_opt_decimal(obj, "paid_amount", where),
        paid_fiat_rate=_opt_decimal(obj, "paid_fiat_rate", where),
        paid_usd_rate=_opt_decimal(obj, "paid_usd_rate", where),
        fee_asset=_opt_str(obj, "fee_asset", where),
        fee_amount=_opt_decimal(obj, "fee_amount", where),
        paid_anonymously=paid_anonymously,
        comment=_opt_str(obj, "comment", where),
        swap_to=_opt_str(obj, "swap_to", where),
    )
    if invoice.currency_type == "fiat" and invoice.fiat is None:
        raise WireFormatError(f"{where}.fiat", "a fiat code on a fiat invoice", None)
    if invoice.currency_type == "crypto" and invoice.asset is None:
        raise WireFormatError(f"{where}.asset", "an asset code on a crypto invoice", None)
    if invoice.status == "paid" and invoice.paid_at is None:
        raise WireFormatError(f"{where}.paid_at", "a timestamp on a paid invoice", None)
    return invoice


def parse_invoice_items(value: Any) -> list[Invoice]:
    """Parse the ``getInvoices`` result: ``{"items": [Invoice, ...]}``."""
    obj = _object(value, "result")
    items = obj.get("items")
    if not isinstance(items, list):
        raise WireFormatError("result.items", "a list of invoices", items)
    return [parse_invoice(item, f"result.items[{index}]") for index, item in enumerate(items)]


def _list(value: Any, field: str) -> list[Any]:
    if not isinstance(value, list):
        raise WireFormatError(field, "a JSON array", value)
    return value


def parse_currencies(value: Any) -> list[CurrencyInfo]:
    """Parse the ``getCurrencies`` result (an array of currency objects)."""
    out: list[CurrencyInfo] = []
    for index, item in enumerate(_list(value, "result")):
        where = f"result[{index}]"
        obj = _object(item, where)
        decimals = _opt(obj, "decimals")
        out.append(
            CurrencyInfo(
                code=_str(_req(obj, "code", where), f"{where}.code"),
                name=_opt_str(obj, "name", where) or "",
                is_fiat=_bool(_req(obj, "is_fiat", where), f"{where}.is_fiat"),
                is_blockchain=_bool(obj.get("is_blockchain", False), f"{where}.is_blockchain"),
                is_stablecoin=_bool(obj.get("is_stablecoin", False), f"{where}.is_stablecoin"),
                decimals=None if decimals is None else _int(decimals, f"{where}.decimals"),
            )
        )
    return out


def parse_exchange_rates(value: Any) -> list[ExchangeRate]:
    """Parse the ``getExchangeRates`` result (an array of rate objects; rates are decimal strings)."""
    out: list[ExchangeRate] = []
    for index, item in enumerate(_list(value, "result")):
        where = f"result[{index}]"
        obj = _object(item, where)
        out.append(
            ExchangeRate(
                source=_str(_req(obj, "source", where), f"{where}.source"),
                target=_str(_req(obj, "target", where), f"{where}.target"),
                rate=parse_decimal(_req(obj, "rate", where), f"{where}.rate"),
                is_valid=_bool(_req(obj, "is_valid", where), f"{where}.is_valid"),
                is_crypto=_bool(obj.get("is_crypto", False), f"{where}.is_crypto"),
                is_fiat=_bool(obj.get("is_fiat", False), f"{where}.is_fiat"),
            )
        )
    return out


def parse_balances(value: Any) -> list[Balance]:
    """Parse the ``getBalance`` result (an array of ``{currency_code, available, onhold}``)."""
    out: list[Balance] = []
    for index, item in enumerate(_list(value, "result")):
        where = f"result[{index}]"
        obj = _object(item, where)
        out.append(
            Balance(
                currency_code=_str(_req(obj, "currency_code", where), f"{where}.currency_code"),
                available=parse_decimal(_req(obj, "available", where), f"{where}.available"),
                onhold=parse_decimal(obj.get("onhold", "0"), f"{where}.onhold"),
            )
        )
    return out


@dataclass(frozen=True, slots=True)
class UnreadableItem:
    """One item of a list the API returned that failed the strict parser; the rest were read.

    ``invoice_id`` is set when at least the id could be read; ``raw`` is the item as JSON text (for
    an operator; no secret is in an invoice); ``reason`` names the field.
    """

    index: int
    invoice_id: int | None
    reason: str
    raw: bytes


def parse_invoice_items_skipping(value: Any) -> tuple[list[Invoice], list[UnreadableItem]]:
    """Parse a ``getInvoices`` result item by item: the readable invoices and the unreadable items.

    The envelope itself (an object with an ``items`` list) is still strict: without it nothing can
    be trusted, and :class:`WireFormatError` is raised.
    """
    obj = _object(value, "result")
    items = obj.get("items")
    if not isinstance(items, list):
        raise WireFormatError("result.items", "a list of invoices", items)
    invoices: list[Invoice] = []
    unreadable: list[UnreadableItem] = []
    for index, item in enumerate(items):
        try:
            invoices.append(parse_invoice(item, f"result.items[{index}]"))
        except WireFormatError as exc:
            raw_id = item.get("invoice_id") if isinstance(item, dict) else None
            readable_id = raw_id if isinstance(raw_id, int) and not isinstance(raw_id, bool) else None
            unreadable.append(UnreadableItem(index, readable_id, str(exc), _as_json(item)))
    return invoices, unreadable


def _as_json(item: Any) -> bytes:
    return json.dumps(item, default=str, sort_keys=True, ensure_ascii=False).encode("utf-8")


UPDATE_TYPES = ("invoice_paid",)
"""The webhook ``update_type`` values Atlas acts on; any other signed update is kept, not refused."""


def parse_invoice_paid(value: Any) -> InvoicePaid:
    """Parse a decoded webhook body: ``{"update_id", "update_type": "invoice_paid", ...}``.

    Only ``invoice_paid`` exists today; any other ``update_type`` is rejected rather than guessed
    at, and the embedded invoice must itself say ``paid``.
    """
    obj = _object(value, "update")
    update_type = _req(obj, "update_type", "update")
    if update_type != "invoice_paid":
        raise WireFormatError("update.update_type", "'invoice_paid'", update_type)
    invoice = parse_invoice(_req(obj, "payload", "update"), "update.payload")
    if invoice.status != "paid":
        raise WireFormatError("update.payload.status", "'paid' in an invoice_paid update", invoice.status)
    return InvoicePaid(
        update_id=_int(_req(obj, "update_id", "update"), "update.update_id"),
        request_date=parse_timestamp(_req(obj, "request_date", "update"), "update.request_date"),
        invoice=invoice,
    )
