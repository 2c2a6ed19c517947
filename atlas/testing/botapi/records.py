"""What the emulator saw, as frozen values a test can assert on.

Times called ``time`` are trio clock readings (``trio.current_time()``), so they follow a
``MockClock``; ``date`` fields are the Unix seconds the emulator put into the Bot API objects.
JSON sub-objects (reply markups, raw updates) are kept as the decoded JSON the bot sent.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import Enum
from typing import Any, Literal

RecordKind = Literal["message", "photo", "document", "invoice", "edit_text", "edit_markup", "delete"]
"""What happened in a chat: a new message of some kind, an edit, or a deletion."""

NEW_MESSAGE_KINDS: frozenset[RecordKind] = frozenset({"message", "photo", "document", "invoice"})
"""The record kinds that put a new message into the chat."""


@dataclass(frozen=True, slots=True)
class FileMeta:
    """A file the bot sent: uploaded bytes, a re-used ``file_id``, or a URL."""

    file_id: str
    file_unique_id: str
    source: Literal["upload", "file_id", "url"]
    filename: str | None
    size: int | None
    """Bytes received; None when the bot sent a URL."""
    content_type: str | None
    width: int = 0
    """Photo width in pixels when it could be read from a PNG or JPEG header, else 0."""
    height: int = 0


@dataclass(frozen=True, slots=True)
class InvoiceRecord:
    """An invoice the bot created with ``sendInvoice`` (in a chat) or ``createInvoiceLink`` (a link)."""

    title: str
    description: str
    payload: str
    currency: str
    prices: tuple[tuple[str, int], ...]
    """(label, amount) pairs as sent; amounts in the currency's minor units (Stars for XTR)."""
    chat_id: int | None
    message_id: int | None
    link: str | None
    subscription_period: int | None = None

    @property
    def total_amount(self) -> int:
        """The sum of the prices."""
        return sum(amount for _, amount in self.prices)


@dataclass(frozen=True, slots=True)
class ChatRecord:
    """One thing the bot did to a chat (sent, edited or deleted a message)."""

    kind: RecordKind
    chat_id: int
    message_id: int
    time: float
    date: int
    text: str | None = None
    """Text or caption exactly as the bot sent it (HTML tags and all)."""
    plain_text: str | None = None
    """What the user sees: for ``parse_mode=HTML`` the tags stripped and entities decoded."""
    parse_mode: str | None = None
    reply_markup: Mapping[str, Any] | None = None
    file: FileMeta | None = None
    invoice: InvoiceRecord | None = None

    def inline_buttons(self) -> list[Mapping[str, Any]]:
        """The inline keyboard buttons of this record, row by row flattened; [] if none."""
        if self.reply_markup is None:
            return []
        rows = self.reply_markup.get("inline_keyboard", [])
        return [button for row in rows for button in row]

    def button_texts(self) -> list[str]:
        """The labels of the inline keyboard buttons, in order."""
        return [str(button.get("text", "")) for button in self.inline_buttons()]


@dataclass(frozen=True, slots=True)
class CallbackAnswer:
    """The bot's ``answerCallbackQuery`` for a button press."""

    query_id: str
    user_id: int
    data: str | None
    text: str | None
    show_alert: bool
    url: str | None
    time: float


@dataclass(frozen=True, slots=True)
class PreCheckoutAnswer:
    """The bot's ``answerPreCheckoutQuery``, with how long it took against Telegram's 10 s limit."""

    query_id: str
    user_id: int
    ok: bool
    error_message: str | None
    elapsed: float
    """Seconds (trio clock) between the query being queued and the answer arriving."""
    in_time: bool
    """False when the answer came after the limit: Telegram has already failed the payment then."""


@dataclass(frozen=True, slots=True)
class Charge:
    """A completed Stars payment that the emulator issued."""

    telegram_payment_charge_id: str
    provider_payment_charge_id: str
    user_id: int
    currency: str
    total_amount: int
    invoice_payload: str
    time: float


@dataclass(frozen=True, slots=True)
class Refund:
    """A successful ``refundStarPayment``."""

    telegram_payment_charge_id: str
    user_id: int
    time: float


@dataclass(frozen=True, slots=True)
class PaymentOutcome:
    """How a scripted ``pay_stars`` ended.

    ``ok`` is True only when the bot answered the pre-checkout query with ``ok=True`` in time and
    the ``successful_payment`` message was queued; ``charge`` is then set.
    """

    ok: bool
    query_id: str
    answer: PreCheckoutAnswer | None
    charge: Charge | None
    reason: str | None
    """Why the payment failed (None on success)."""


@dataclass(frozen=True, slots=True)
class WebhookConfig:
    """The webhook the bot set with ``setWebhook``."""

    url: str
    secret_token: str | None
    max_connections: int
    allowed_updates: tuple[str, ...] | None


@dataclass(frozen=True, slots=True)
class WebhookAttempt:
    """One POST of an update to the bot's webhook."""

    update_id: int
    url: str
    time: float
    status: int | None
    """HTTP status of the answer; None when no answer came (connection refused, timeout)."""
    error: str | None
    secret_token: str | None
    """The ``X-Telegram-Bot-Api-Secret-Token`` header value sent."""

    @property
    def delivered(self) -> bool:
        """True for a 2xx answer: the update counts as delivered and is not sent again."""
        return self.status is not None and 200 <= self.status < 300


class SendKind(Enum):
    """What Telegram's flood limits see in a send (:mod:`atlas.testing.botapi.rates`)."""

    BULK = "bulk"
    """A notification: counts against the chat's limit and the bot's 30/s."""
    REPLY = "reply"
    """To a chat that sent the bot an update just now: counts against the chat's limit only."""


@dataclass(frozen=True, slots=True)
class SendStamp:
    """One ``send*`` call as it reached the emulator (accepted or not)."""

    time: float
    method: str
    chat_id: int | str | None
    accepted: bool
    """False when the call was answered with an error (injected, rate limit, validation, 403)."""
    kind: SendKind = SendKind.BULK
    """Bulk, or a reply to a chat that talked to the bot just now (:mod:`.rates`): only bulk sends
    count against the global limit."""


@dataclass(frozen=True, slots=True)
class ServedError:
    """An error answer the emulator gave the bot."""

    time: float
    method: str
    chat_id: int | str | None
    code: int
    description: str
    retry_after: int | None
