"""What the crowd did, counted as it happens (the view shows it; the summary prints it)."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

# The flows every demo run must exercise; the summary shows each one's count.
FLOWS = (
    "start",
    "start_referred",
    "trial",
    "trial_warned",
    "trial_expired",
    "buy_stars",
    "buy_cryptopay",
    "topup",
    "promo",
    "buy_balance",
    "auto_renew_on",
    "renewed",
    "paid_expired",
    "reissue",
    "broadcast",
)


@dataclass
class Tally:
    """Counters the crowd and the faults update; plain ints, read by the view at any time."""

    flows: Counter[str] = field(default_factory=Counter)
    users_started: int = 0
    users_done: int = 0
    unanswered: int = 0
    crypto_retries: int = 0
    faults: list[str] = field(default_factory=list)

    def did(self, flow: str) -> None:
        """Count one completed ``flow``."""
        self.flows[flow] += 1

    def no_answer(self) -> None:
        """Count a step the bot did not answer in time (the user moves on)."""
        self.unanswered += 1
