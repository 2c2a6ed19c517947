"""Restart backoff: an exponential, jittered delay before a child is started again.

OTP restarts a crashed child at once. Atlas waits, because most crashes here are a dependency that
is down (a VPN node, PostgreSQL, Telegram), and restarting immediately only hammers it and burns the
restart intensity in milliseconds. Jitter keeps sibling actors from retrying in lockstep; it comes
from the supervisor's seeded ``random.Random`` so that tests see the same delays every run.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from atlas.supervision._checks import number_problem
from atlas.supervision._errors import InvalidSupervisorSpec


@dataclass(frozen=True, slots=True)
class Backoff:
    """Delay before the n-th consecutive restart of a child.

    ``delay(n) = min(maximum, initial * factor ** (n - 1)) * uniform(1 - jitter, 1 + jitter)``.

    - ``initial`` (default 0.1 s, >= 0): the first delay.
    - ``factor`` (default 2.0, >= 1): growth per consecutive restart.
    - ``maximum`` (default 30 s, >= initial): the cap before jitter.
    - ``jitter`` (default 0.1, in [0, 1)): the ± fraction; 0 gives the exact sequence.

    The supervisor resets a child's consecutive count once the child has stayed up longer than the
    supervisor's ``period``.
    """

    initial: float = 0.1
    factor: float = 2.0
    maximum: float = 30.0
    jitter: float = 0.1

    def __post_init__(self) -> None:
        checks: tuple[tuple[str, float, str | None], ...] = (
            ("backoff.initial", self.initial, number_problem(self.initial, allow_equal=True)),
            ("backoff.factor", self.factor, number_problem(self.factor, minimum=1.0, allow_equal=True)),
            (
                "backoff.maximum",
                self.maximum,
                number_problem(self.maximum, minimum=_as_float(self.initial), allow_equal=True),
            ),
            ("backoff.jitter", self.jitter, number_problem(self.jitter, allow_equal=True)),
        )
        for field, value, problem in checks:
            if problem:
                raise InvalidSupervisorSpec(field, value, problem)
        if self.jitter >= 1:
            raise InvalidSupervisorSpec("backoff.jitter", self.jitter, "must be < 1 (a fraction)")

    def base_delay(self, n: int) -> float:
        """The delay before jitter for the ``n``-th consecutive restart (``n >= 1``)."""
        if n < 1:
            raise ValueError(f"restart number must be >= 1, got {n}")
        # Cap the exponent: factor**n overflows a float long before anyone restarts 1000 times.
        exponent = min(n - 1, 1000)
        try:
            grown = self.initial * self.factor**exponent
        except OverflowError:
            grown = self.maximum
        return min(self.maximum, grown)

    def delay(self, n: int, rng: random.Random) -> float:
        """The jittered delay for the ``n``-th consecutive restart, drawn from ``rng``."""
        base = self.base_delay(n)
        if self.jitter == 0:
            return base
        return base * rng.uniform(1.0 - self.jitter, 1.0 + self.jitter)


def _as_float(value: object) -> float:
    # maximum is compared against initial; if initial is itself invalid its own check reports it.
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    return 0.0
