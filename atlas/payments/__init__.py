"""Payments: the Crypto Pay (CryptoBot) client, its webhook check, the values they share, and Stars.

``atlas.payments`` does the talking and the checking; applying a payment (exactly once, contract 6
in DESIGN.md) belongs to a unit of work in ``atlas.storage``. :func:`apply_paid_invoice` is the one
path from a paid invoice to that unit, shared by the webhook route (``atlas.web.cryptopay_webhook``)
and the ``payment_watcher`` actor. :func:`open_cryptopay_invoice` creates an intent's invoice;
:mod:`.stars` sends Stars invoices and refunds them (Telegram first, then the ledger).
"""

from atlas.payments.apply_flow import apply_paid_invoice as apply_paid_invoice
from atlas.payments.apply_flow import invoice_amount_minor as invoice_amount_minor
from atlas.payments.checkout import open_cryptopay_invoice as open_cryptopay_invoice
from atlas.payments.cryptopay import BASE_URLS as BASE_URLS
from atlas.payments.cryptopay import CryptoPayApiError as CryptoPayApiError
from atlas.payments.cryptopay import CryptoPayAuthError as CryptoPayAuthError
from atlas.payments.cryptopay import CryptoPayClient as CryptoPayClient
from atlas.payments.cryptopay import CryptoPayError as CryptoPayError
from atlas.payments.cryptopay import CryptoPayProtocolError as CryptoPayProtocolError
from atlas.payments.cryptopay import CryptoPayUnavailable as CryptoPayUnavailable
from atlas.payments.cryptopay import InvoiceStatusFilter as InvoiceStatusFilter
from atlas.payments.cryptopay import Network as Network
from atlas.payments.cryptopay import PaidButtonName as PaidButtonName
from atlas.payments.cryptopay_types import AppInfo as AppInfo
from atlas.payments.cryptopay_types import CurrencyType as CurrencyType
from atlas.payments.cryptopay_types import Invoice as Invoice
from atlas.payments.cryptopay_types import InvoicePaid as InvoicePaid
from atlas.payments.cryptopay_types import InvoiceStatus as InvoiceStatus
from atlas.payments.cryptopay_types import WireFormatError as WireFormatError
from atlas.payments.cryptopay_types import format_timestamp as format_timestamp
from atlas.payments.cryptopay_types import parse_invoice as parse_invoice
from atlas.payments.cryptopay_webhook import SIGNATURE_HEADER as SIGNATURE_HEADER
from atlas.payments.cryptopay_webhook import WebhookError as WebhookError
from atlas.payments.cryptopay_webhook import WebhookMalformed as WebhookMalformed
from atlas.payments.cryptopay_webhook import WebhookSignatureInvalid as WebhookSignatureInvalid
from atlas.payments.cryptopay_webhook import compute_signature as compute_signature
from atlas.payments.cryptopay_webhook import parse_webhook as parse_webhook
from atlas.payments.cryptopay_webhook import verify_signature as verify_signature
from atlas.payments.stars import StarsLedgerNotCorrected as StarsLedgerNotCorrected
from atlas.payments.stars import StarsRefundError as StarsRefundError
from atlas.payments.stars import StarsRefundFailed as StarsRefundFailed
from atlas.payments.stars import refund_stars_payment as refund_stars_payment
from atlas.payments.stars import send_stars_invoice as send_stars_invoice
