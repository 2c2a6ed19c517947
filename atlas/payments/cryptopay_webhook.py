"""Checking and parsing Crypto Pay webhook requests; pure functions, no I/O.

Crypto Pay signs each webhook: header ``crypto-pay-api-signature`` is the hex HMAC-SHA-256 of the
**raw body bytes**, keyed with the raw SHA-256 digest of the app's API token. The route must hand
over the body exactly as received (before any JSON decoding) and bound its size itself.

Error hierarchy::

    WebhookError                  the request must be refused; nothing was applied
    ├── WebhookSignatureInvalid   signature header missing or not matching: not from Crypto Pay
    │                             (answer 401; never look at the body)
    └── WebhookMalformed          correctly signed but not an invoice_paid update we can use (a
                                  new ``update_type``, a field value the strict parser refuses):
                                  the route answers 200 and keeps the bytes for an operator, since
                                  the provider retries a non-2xx and then switches the webhook off

There is deliberately no freshness window on ``request_date``: Crypto Pay retries a failed delivery
for up to three days, so an old date is normal. Replays are harmless because applying a payment is
idempotent on ``invoice_id`` (contract 6 in DESIGN.md), not because of the clock.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Mapping
from decimal import Decimal

from atlas.payments.cryptopay_types import InvoicePaid, WireFormatError, parse_invoice_paid

SIGNATURE_HEADER = "crypto-pay-api-signature"


class WebhookError(Exception):
    """A webhook request that must be refused; nothing was applied."""


class WebhookSignatureInvalid(WebhookError):
    """The signature header is missing or does not match the body: not from Crypto Pay."""


class WebhookMalformed(WebhookError):
    """The request is signed correctly but is not an ``invoice_paid`` update we can use.

    Authentic, so not refused: the caller keeps it for an operator and answers 2xx.
    """


def compute_signature(token: str, raw_body: bytes) -> str:
    """Return the hex signature Crypto Pay sends for ``raw_body`` under ``token``."""
    if not token:
        raise ValueError("token must be a non-empty string")
    key = hashlib.sha256(token.encode("utf-8")).digest()
    return hmac.new(key, raw_body, hashlib.sha256).hexdigest()


def verify_signature(token: str, raw_body: bytes, signature_header: str | None) -> bool:
    """Return True iff ``signature_header`` is the signature of ``raw_body`` under ``token``.

    The comparison is constant-time, so response timing does not leak how many leading characters
    of a forged signature were right. Any header value (None, non-hex, non-ASCII) gives False, never
    an exception.
    """
    if signature_header is None:
        return False
    try:
        provided = signature_header.strip().lower().encode("ascii")
    except UnicodeEncodeError:
        return False
    expected = compute_signature(token, raw_body).encode("ascii")
    return hmac.compare_digest(expected, provided)


def _header(headers: Mapping[str, str], name: str) -> str | None:
    # HTTP header names are case-insensitive; a plain dict is not.
    direct = headers.get(name)
    if direct is not None:
        return direct
    for key, value in headers.items():
        if key.lower() == name:
            return value
    return None


def parse_webhook(token: str, raw_body: bytes, headers: Mapping[str, str]) -> InvoicePaid:
    """Verify and parse one webhook request into an :class:`InvoicePaid` event.

    The signature is checked first and the body is only decoded once it matched, so an unsigned
    request cannot make us parse anything. Raises :class:`WebhookSignatureInvalid` or
    :class:`WebhookMalformed`; nothing else for any body or header value.
    """
    signature = _header(headers, SIGNATURE_HEADER)
    if signature is None:
        raise WebhookSignatureInvalid(f"missing {SIGNATURE_HEADER} header")
    if not verify_signature(token, raw_body, signature):
        raise WebhookSignatureInvalid(f"{SIGNATURE_HEADER} does not match the body")
    try:
        # parse_float=Decimal: a number in the body must never pass through float.
        decoded = json.loads(raw_body, parse_float=Decimal)
    except (ValueError, RecursionError) as exc:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        raise WebhookMalformed(f"body is not JSON: {exc.__class__.__name__}") from exc
    try:
        return parse_invoice_paid(decoded)
    except WireFormatError as exc:
        raise WebhookMalformed(str(exc)) from exc
