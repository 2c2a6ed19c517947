"""What ``atlas demo`` was asked to do: its flags, validated, with the defaults derived from them."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Final

DEFAULT_USERS: Final = 200
DEFAULT_DAYS: Final = 3
# The defaults should finish in about a minute: business time runs days * 86400 / this many
# trio seconds, plus start-up (about 10 s) and the last notices draining.
TARGET_RUN_SECONDS: Final = 50.0
DEFAULT_CONCURRENCY: Final = 40


@dataclass(frozen=True)
class DemoOptions:
    """The demo's choices. ``speed`` None: derived from ``days`` (see :meth:`business_speed`)."""

    users: int = DEFAULT_USERS
    days: int = DEFAULT_DAYS
    speed: float | None = None
    seed: int = 1
    interactive: bool = False
    data_dir: Path | None = None
    concurrency: int = DEFAULT_CONCURRENCY
    # For the tests of the exit code only: corrupt one balance after the run, so that the
    # invariant check must fail (a hidden flag, never documented as a feature).
    corrupt_balance_for_test: bool = False

    def __post_init__(self) -> None:
        if self.users < 1:
            raise ValueError(f"--users must be at least 1, got {self.users}")
        if not 1 <= self.days <= 365:
            raise ValueError(f"--days must be in 1..365, got {self.days}")
        if self.speed is not None and not 1.0 <= self.speed <= 1_000_000.0:
            raise ValueError(f"--speed must be in 1..1000000 business seconds per second, got {self.speed}")
        if self.concurrency < 1:
            raise ValueError(f"--concurrency must be at least 1, got {self.concurrency}")

    def business_speed(self) -> float:
        """Business seconds per trio second: ``--speed``, or what lasts about a minute."""
        if self.speed is not None:
            return self.speed
        return self.days * 86_400 / TARGET_RUN_SECONDS
