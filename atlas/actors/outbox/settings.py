"""The outbox sender's settings (frozen, validated by field) and its counters."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from atlas.supervision import Backoff

LEASE_SAFETY = 5.0
"""Seconds of lease a row must have left, beyond ``send_timeout``, for its send to start."""


@dataclass(frozen=True, slots=True)
class SenderSettings:
    """How the sender paces, retries and stands by. All optional:

    - ``rate`` (30/s): send starts per second over all chats; ``per_chat_rate`` (1/s) per chat.
    - ``batch`` (100, 1..1000): rows per claim; the sender claims again below half of it.
    - ``max_in_flight`` (50, 1..1000): sends whose answer has not come back. A slot is freed by
      the answer, not by the record, so that the rate does not depend on the database either;
      enough slots for ``rate × answer latency`` keep the rate independent of latency.
    - ``lease`` (120 s): how long a claim holds a row; a dead sender's rows return after it.
    - ``send_timeout`` (20 s): one ``sendMessage`` at most this long (then its outcome is unknown).
    - ``max_attempts`` (8): failed attempts (5xx; no answer, for notices) before a row ``failed``.
    - ``retry``: backoff between those attempts (5 s doubling to 30 min, ±20 %).
    - ``defer_after`` (5 s): a chat paused longer than this gives its rows back to the table.
    - ``global_429_streak`` (5): consecutive 429s from different chats that pause every chat.
    - ``poll_interval`` (1 s): the tick period (how soon a new row is noticed without a wake).
    - ``tick_budget`` (30 s): a drain stops claiming after this long (contract 3).
    - ``elected`` (True): :meth:`~atlas.actors.outbox_sender.OutboxSender.run` sends only while
      it holds the sender's advisory lock, so that N processes share one rate; False: always.
    - ``standby_retry`` (2 s): how often a standby tries to take the lock.
    - ``lock_check_every`` (2 s): how often the elected sender makes sure it still holds it.
    """

    rate: float = 30.0
    per_chat_rate: float = 1.0
    batch: int = 100
    max_in_flight: int = 50
    lease: float = 120.0
    send_timeout: float = 20.0
    max_attempts: int = 8
    retry: Backoff = field(
        default_factory=lambda: Backoff(initial=5.0, factor=2.0, maximum=1800.0, jitter=0.2)
    )
    defer_after: float = 5.0
    global_429_streak: int = 5
    poll_interval: float = 1.0
    tick_budget: float = 30.0
    elected: bool = True
    standby_retry: float = 2.0
    lock_check_every: float = 2.0

    def __post_init__(self) -> None:
        ints = {
            "batch": (1, 1000),
            "max_in_flight": (1, 1000),
            "max_attempts": (1, 100),
            "global_429_streak": (1, 1000),
        }
        for name, (low, high) in ints.items():
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
                raise ValueError(f"SenderSettings.{name} must be an int in {low}..{high}, got {value!r}")
        positive = (
            "rate",
            "per_chat_rate",
            "lease",
            "send_timeout",
            "defer_after",
            "poll_interval",
            "tick_budget",
            "standby_retry",
            "lock_check_every",
        )
        for name in positive:
            value = getattr(self, name)
            if not isinstance(value, int | float) or isinstance(value, bool) or not 0 < value < math.inf:
                raise ValueError(f"SenderSettings.{name} must be a finite number > 0, got {value!r}")
        if not isinstance(self.elected, bool):
            raise ValueError(f"SenderSettings.elected must be a bool, got {self.elected!r}")
        if self.lease <= self.send_timeout + LEASE_SAFETY:
            raise ValueError(
                f"SenderSettings.lease ({self.lease!r}) must exceed send_timeout + {LEASE_SAFETY:g} s "
                f"({self.send_timeout + LEASE_SAFETY!r}), or no row could ever be sent"
            )


@dataclass(frozen=True, slots=True)
class SenderStatistics:
    """Counters since the actor was built (a broadcast's own counts: ``broadcast_progress``).

    ``unknown``: at-most-once sends recorded as maybe-delivered; ``unwritten``: results known and
    not yet in the table (waiting for the recorder, or kept through a database outage);
    ``role``: ``"leader"``, ``"standby"`` or ``"stopped"`` (``"unelected"`` when not elected).
    """

    sent: int
    blocked: int
    failed: int
    retried: int
    deferred: int
    unknown: int
    throttled: int
    global_pauses: int
    not_owned: int
    drains: int
    chats_paced: int
    unwritten: int
    role: str
