"""A circuit breaker: stop calling a node that keeps failing, and probe it now and then.

States (Nygard, *Release It!*)::

    CLOSED  --N consecutive failures-->  OPEN  --reset_timeout elapsed-->  HALF_OPEN
       ^                                  ^                                    |
       |                                  +------- the probe failed ----------+
       +------------------------------ the probe succeeded -------------------+

* CLOSED: calls go through; a success resets the consecutive-failure count.
* OPEN: calls are rejected at once with :class:`CircuitOpen` (no I/O), so a dead node costs the
  controller nothing but a counter increment.
* HALF_OPEN: exactly ONE call (the probe) goes through; everybody else is still rejected. The
  probe's outcome decides: success closes the circuit, failure re-opens it for another
  ``reset_timeout``.

Use: ``ticket = breaker.acquire()`` (raises :class:`CircuitOpen`), do the call, then report
exactly one of ``success(ticket)``, ``failure(ticket)`` or ``release(ticket)``. ``release`` is for an
outcome that says nothing about the node's health (the call was cancelled, or the node rejected
our request): a released probe frees the half-open slot for the next caller.

Tickets carry the generation they were issued in. An outcome from an older generation (a slow call
admitted before the circuit opened) is counted in the statistics but does not move the state,
otherwise a late success could close a circuit that a probe has not yet confirmed.

Time comes from ``clock`` (``trio.current_time`` by default), so tests drive it with ``MockClock``.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass

import trio


class BreakerState(enum.StrEnum):
    """Where the breaker is in its cycle (see the module docstring)."""

    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


class CircuitOpen(Exception):
    """The circuit is open (or half-open with its probe in flight): the call was not attempted.

    ``retry_after`` is the number of seconds until a probe may be tried (0 when half-open).
    """

    def __init__(self, name: str, retry_after: float) -> None:
        self.name = name
        self.retry_after = retry_after
        super().__init__(f"circuit {name or 'breaker'} is open; retry in {retry_after:.1f} s")


@dataclass(frozen=True, slots=True)
class Ticket:
    """Permission for one call; hand it back with ``success``, ``failure`` or ``release``."""

    generation: int
    probe: bool


@dataclass(frozen=True, slots=True)
class BreakerStatistics:
    """A snapshot for metrics: state, consecutive failures, and lifetime counters."""

    state: BreakerState
    consecutive_failures: int
    total_failures: int
    total_successes: int
    opened: int
    rejected: int


class CircuitBreaker:
    """Consecutive-failure circuit breaker with a single half-open probe.

    ``failure_threshold``: consecutive failures that open the circuit (>= 1).
    ``reset_timeout``: seconds the circuit stays open before a probe is allowed (> 0).
    Not thread-safe; meant for one trio run (all methods are synchronous and never block).
    """

    def __init__(
        self,
        failure_threshold: int = 5,
        reset_timeout: float = 30.0,
        *,
        clock: Callable[[], float] = trio.current_time,
        name: str = "",
    ) -> None:
        if (
            isinstance(failure_threshold, bool)
            or not isinstance(failure_threshold, int)
            or failure_threshold < 1
        ):
            raise ValueError(f"failure_threshold must be an integer >= 1, got {failure_threshold!r}")
        if not reset_timeout > 0:
            raise ValueError(f"reset_timeout must be positive, got {reset_timeout!r}")
        self.failure_threshold = failure_threshold
        self.reset_timeout = float(reset_timeout)
        self.name = name
        self._clock = clock
        self._state = BreakerState.CLOSED
        self._generation = 0
        self._consecutive = 0
        self._opened_at = 0.0
        self._probe_in_flight = False
        self._total_failures = 0
        self._total_successes = 0
        self._opened = 0
        self._rejected = 0

    # -- observation ---------------------------------------------------------------------------

    @property
    def state(self) -> BreakerState:
        """The current state; an OPEN circuit whose timeout has elapsed reads as HALF_OPEN."""
        self._refresh()
        return self._state

    def statistics(self) -> BreakerStatistics:
        """Return a snapshot of the state and the counters."""
        return BreakerStatistics(
            state=self.state,
            consecutive_failures=self._consecutive,
            total_failures=self._total_failures,
            total_successes=self._total_successes,
            opened=self._opened,
            rejected=self._rejected,
        )

    # -- the protocol --------------------------------------------------------------------------

    def acquire(self) -> Ticket:
        """Admit one call or raise :class:`CircuitOpen` (counted as rejected)."""
        self._refresh()
        if self._state is BreakerState.CLOSED:
            return Ticket(self._generation, probe=False)
        if self._state is BreakerState.HALF_OPEN and not self._probe_in_flight:
            self._probe_in_flight = True
            return Ticket(self._generation, probe=True)
        self._rejected += 1
        retry_after = 0.0
        if self._state is BreakerState.OPEN:
            retry_after = max(0.0, self._opened_at + self.reset_timeout - self._clock())
        raise CircuitOpen(self.name, retry_after)

    def success(self, ticket: Ticket) -> None:
        """Report that the admitted call succeeded (the node answered sensibly)."""
        self._total_successes += 1
        if ticket.generation != self._generation:
            return
        if ticket.probe:
            self._probe_in_flight = False
            self._state = BreakerState.CLOSED
            self._generation += 1
        self._consecutive = 0

    def failure(self, ticket: Ticket) -> None:
        """Report that the admitted call failed in a way that counts against the node."""
        self._total_failures += 1
        if ticket.generation != self._generation:
            return
        if ticket.probe:
            self._probe_in_flight = False
            self._open()
            return
        self._consecutive += 1
        if self._consecutive >= self.failure_threshold:
            self._open()

    def release(self, ticket: Ticket) -> None:
        """Hand back a ticket whose call told nothing about the node (cancelled, or a 4xx)."""
        if ticket.probe and ticket.generation == self._generation:
            self._probe_in_flight = False

    # -- internals -----------------------------------------------------------------------------

    def _open(self) -> None:
        self._state = BreakerState.OPEN
        self._opened_at = self._clock()
        self._opened += 1
        self._generation += 1

    def _refresh(self) -> None:
        if self._state is BreakerState.OPEN and self._clock() - self._opened_at >= self.reset_timeout:
            self._state = BreakerState.HALF_OPEN
            self._probe_in_flight = False
