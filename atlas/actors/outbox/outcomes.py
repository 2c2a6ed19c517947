"""What Telegram answered → what the outbox row records, as one table. Pure (no I/O, no trio).

Two questions decide a row's next state: what came back from ``sendMessage`` (an :class:`Answer`,
read off aiogram's exceptions by :func:`classify`, the one explicit error map), and what the row
promises (its :class:`Guarantee`). :data:`OUTCOMES` answers them; :func:`decide` adds the one rule
that needs a number (attempts used up → failed). The sender asks, then acts.

The guarantees:

* **at least once** — personal notices ("your key is ready", "payment received"). Losing one is
  worse than a rare second copy, so a send of unknown outcome is tried again.
* **at most once** — the copies of a broadcast. A second copy of an advert to thousands of users
  is worse than a lost one, so a send of unknown outcome is never tried again: it becomes
  ``unknown`` (the admin's counts show it). The attempt is marked in the table *before* the
  send, so that even a crash between the send and its record cannot lead to a resend.

"Unknown outcome" is exactly: the request may have reached Telegram and no answer was read (a
timeout, a dropped connection, an answer that would not decode, the sender cancelled mid-send).
A 5xx *is* an answer — Telegram says it did not take the message — so it is retried for both.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass

import trio
from aiogram.exceptions import (
    ClientDecodeError,
    TelegramAPIError,
    TelegramForbiddenError,
    TelegramNetworkError,
    TelegramRetryAfter,
    TelegramServerError,
    TelegramUnauthorizedError,
)

from atlas.actors.outbox.payloads import SenderError
from atlas.storage.units.delivery import DeliveryStatus


class SenderUnauthorized(SenderError):
    """Telegram answered 401: the bot token is wrong or revoked; nothing can be sent."""


class Answer(enum.Enum):
    """What one send attempt came to, by cause."""

    SENT = "sent"
    """200: Telegram took the message."""
    THROTTLED = "throttled"
    """429 with ``retry_after``: not taken, and not an attempt; the chat (maybe the bot) pauses."""
    BLOCKED = "blocked"
    """403: the user blocked the bot."""
    REFUSED = "refused"
    """400 and other 4xx: Telegram will never take this message."""
    SERVER_ERROR = "server_error"
    """5xx: Telegram answered that it did not take it this time."""
    NO_ANSWER = "no_answer"
    """Timeout, network error, undecodable answer, or cancelled mid-send: maybe delivered."""
    BAD_PAYLOAD = "bad_payload"
    """The payload cannot become a message; nothing was sent."""
    NOT_STARTED = "not_started"
    """Given back unsent: its chat is paused for long, its lease runs out, or the drain ends."""


class Guarantee(enum.Enum):
    """What a row promises when the outcome of its send is unknown."""

    AT_LEAST_ONCE = "at_least_once"
    AT_MOST_ONCE = "at_most_once"


class Step(enum.Enum):
    """What the sender does with the row."""

    RECORD_SENT = "sent"
    RECORD_BLOCKED = "blocked"
    RECORD_FAILED = "failed"
    RECORD_RETRY = "retry"
    """An attempt that failed: ``attempts + 1``, due again after the backoff."""
    RECORD_DEFERRED = "deferred"
    """Not an attempt: due again when the pause ends (or at once)."""
    RECORD_UNKNOWN = "unknown"
    """Final: maybe delivered, never resent."""
    REQUEUE = "requeue"
    """Nothing recorded: the row goes back to its chat's queue in memory (a short 429 pause)."""


_BOTH = (Guarantee.AT_LEAST_ONCE, Guarantee.AT_MOST_ONCE)

OUTCOMES: Mapping[tuple[Answer, Guarantee], Step] = {
    **{(Answer.SENT, g): Step.RECORD_SENT for g in _BOTH},
    **{(Answer.THROTTLED, g): Step.REQUEUE for g in _BOTH},
    **{(Answer.BLOCKED, g): Step.RECORD_BLOCKED for g in _BOTH},
    **{(Answer.REFUSED, g): Step.RECORD_FAILED for g in _BOTH},
    **{(Answer.SERVER_ERROR, g): Step.RECORD_RETRY for g in _BOTH},
    (Answer.NO_ANSWER, Guarantee.AT_LEAST_ONCE): Step.RECORD_RETRY,
    (Answer.NO_ANSWER, Guarantee.AT_MOST_ONCE): Step.RECORD_UNKNOWN,
    **{(Answer.BAD_PAYLOAD, g): Step.RECORD_FAILED for g in _BOTH},
    **{(Answer.NOT_STARTED, g): Step.RECORD_DEFERRED for g in _BOTH},
}
"""(answer, guarantee) → step. Every pair is present (a test checks it)."""

STATUS_OF: Mapping[Step, DeliveryStatus] = {
    Step.RECORD_SENT: DeliveryStatus.SENT,
    Step.RECORD_BLOCKED: DeliveryStatus.BLOCKED,
    Step.RECORD_FAILED: DeliveryStatus.FAILED,
    Step.RECORD_RETRY: DeliveryStatus.RETRY,
    Step.RECORD_DEFERRED: DeliveryStatus.DEFERRED,
    Step.RECORD_UNKNOWN: DeliveryStatus.UNKNOWN,
}
"""The :class:`DeliveryStatus` each recording step writes (REQUEUE writes nothing)."""


def decide(answer: Answer, guarantee: Guarantee, *, attempts: int, max_attempts: int) -> Step:
    """Look up :data:`OUTCOMES`; a retry that would be attempt ``max_attempts`` fails instead.

    ``attempts`` is how many failed attempts the row had before this one.
    """
    step = OUTCOMES[(answer, guarantee)]
    if step is Step.RECORD_RETRY and attempts + 1 >= max_attempts:
        return Step.RECORD_FAILED
    return step


@dataclass(frozen=True, slots=True)
class Verdict:
    """One attempt's :class:`Answer`, with Telegram's words and a 429's ``retry_after``."""

    answer: Answer
    error: str | None = None
    retry_after: float | None = None


def classify(exc: BaseException) -> Verdict:
    """The explicit map from aiogram's send errors to a verdict; anything else is re-raised.

    401 raises :class:`SenderUnauthorized` (chained): no message can be sent with this token.
    """
    if isinstance(exc, TelegramRetryAfter):
        return Verdict(Answer.THROTTLED, exc.message, float(exc.retry_after))
    if isinstance(exc, TelegramUnauthorizedError):
        raise SenderUnauthorized(f"Telegram refused the bot token: {exc.message}") from exc
    if isinstance(exc, TelegramForbiddenError):
        return Verdict(Answer.BLOCKED, exc.message)
    if isinstance(exc, TelegramServerError):
        return Verdict(Answer.SERVER_ERROR, f"{type(exc).__name__}: {exc.message}")
    if isinstance(exc, TelegramNetworkError):
        return Verdict(Answer.NO_ANSWER, f"{type(exc).__name__}: {exc.message}")
    if isinstance(exc, ClientDecodeError | trio.TooSlowError):
        return Verdict(Answer.NO_ANSWER, f"{type(exc).__name__}: {exc}")
    if isinstance(exc, TelegramAPIError):  # 400, 404, 409, 413, migrate_to_chat_id, ...
        return Verdict(Answer.REFUSED, exc.message)
    raise exc
