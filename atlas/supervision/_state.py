"""What a supervisor says about its children: their states and the snapshots behind ``/status``."""

from __future__ import annotations

import enum
from dataclasses import dataclass

from atlas.supervision._spec import Strategy


class ChildState(enum.Enum):
    """Where a child is in its life under the current run of its supervisor."""

    STARTING = "starting"  # start() called, started() not yet
    RUNNING = "running"  # up
    WAITING = "waiting"  # stopped, restart due at a known time (backoff)
    STOPPED = "stopped"  # ended for good (transient/temporary rules), or the supervisor stopped
    STUCK = "stuck"  # cancelled but still running past its shutdown timeout: never started again


@dataclass(frozen=True, slots=True)
class ChildStatistics:
    """A snapshot of one child (for ``/status``). Ages and uptimes in seconds, None when not running."""

    name: str
    path: str
    state: ChildState
    restarts: int
    consecutive_failures: int
    uptime: float | None
    busy_with: str | None
    heartbeat_age: float | None
    restart_in: float | None
    waiting_for: str | None = None  # a dependency the running child is waiting for (mark_waiting)


@dataclass(frozen=True, slots=True)
class SupervisorStatistics:
    """A snapshot of a supervisor: its intensity window and its children in start order."""

    name: str
    path: str | None
    strategy: Strategy
    running: bool
    restarts_in_window: int
    max_restarts: int
    period: float
    children: tuple[ChildStatistics, ...]
