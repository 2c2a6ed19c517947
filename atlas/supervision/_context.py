"""What a running child receives: its path, a heartbeat, a busy marker and a mailbox probe.

The watchdog is a policy, not a task: a child is judged stalled only while it says it is busy
(``with ctx.busy("invoice 42"): ...``) and has not called ``ctx.heartbeat()`` for longer than its
``stall_after``. An idle actor waiting on an empty mailbox is never a stall, however long it waits.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import trio

logger = logging.getLogger(__name__)


class ChildContext:
    """The handle a child gets from its supervisor; one per incarnation (a restart gets a new one).

    Attributes:
        path: the child's place in the tree, e.g. ``"root/workers/renewal"``.
        started_at: trio clock time at which this incarnation was started.

    Everything here is synchronous and cheap, so a child may call it as often as it likes; it must
    be called from the trio thread (it reads ``trio.current_time()``).
    """

    def __init__(self, path: str, on_stuck: Callable[[BaseException], None] | None = None) -> None:
        self.path = path
        self._on_stuck = on_stuck
        self.started_at = trio.current_time()
        self._last_heartbeat = self.started_at
        self._busy: list[str] = []
        self._failed_while: str | None = None
        self._waiting_for: str | None = None
        self._mailbox_probe: Callable[[], int] | None = None

    @property
    def name(self) -> str:
        """The last segment of :attr:`path`."""
        return self.path.rsplit("/", 1)[-1]

    def heartbeat(self) -> None:
        """Record progress now: the stall clock restarts from here."""
        self._last_heartbeat = trio.current_time()

    @property
    def last_heartbeat(self) -> float:
        """Trio clock time of the last heartbeat (or of the start)."""
        return self._last_heartbeat

    @contextmanager
    def busy(self, what: str) -> Iterator[None]:
        """Mark the child busy handling ``what`` for the duration of the block.

        Entering and leaving count as heartbeats. ``what`` is what crash reports show as "the
        message being handled": if the block raises, it is remembered as such for the report.
        Blocks may nest; the innermost ``what`` is the one shown.
        """
        self.heartbeat()
        self._busy.append(what)
        try:
            yield
        except BaseException:
            # Remember the innermost thing we were doing when it failed; outer blocks must not
            # overwrite it on the way out. Re-raised unchanged (Cancelled included).
            if self._failed_while is None:
                self._failed_while = what
            raise
        finally:
            self._busy.pop()
            self.heartbeat()

    @property
    def busy_with(self) -> str | None:
        """What the child is busy with now (innermost ``busy`` block), or None when idle."""
        return self._busy[-1] if self._busy else None

    @property
    def handling(self) -> str | None:
        """What a report should name as being handled: the current work or the one that failed."""
        return self.busy_with or self._failed_while

    def mark_waiting(self, what: str | None) -> None:
        """Say the child is waiting for a dependency (``"database"``), or no longer (None).

        A waiting child is alive and backing off on its own, not crashing: it keeps its
        incarnation (no restart, no intensity spent) and shows up as waiting in the supervisor's
        statistics (``/status``, and ``/readyz`` is not ready meanwhile). Which errors mean
        "wait" is the child's business; supervision knows only the marker. Counts as a heartbeat.
        """
        self._waiting_for = what
        self.heartbeat()

    @property
    def waiting_for(self) -> str | None:
        """What the child is waiting for (see :meth:`mark_waiting`), None when it is not."""
        return self._waiting_for

    def report_stuck(self, error: BaseException) -> None:
        """For a nested supervisor: a task under this child would not stop, so never restart it.

        The nested supervisor cannot end while that task runs (it waits in its nursery), so it says
        so here, at once, and its parent escalates instead of waiting for an end that will not come.
        Without a supervisor (a context built by hand), this only logs.
        """
        if self._on_stuck is None:
            logger.error("%s: %s (no supervisor to tell)", self.path, error)
            return
        self._on_stuck(error)

    def set_mailbox_probe(self, probe: Callable[[], int]) -> None:
        """Tell the supervisor how to read this child's mailbox depth (shown in crash reports)."""
        self._mailbox_probe = probe

    def mailbox_depth(self) -> int | None:
        """The probe's answer, or None without a probe (a failing probe is logged, not raised)."""
        if self._mailbox_probe is None:
            return None
        try:
            return int(self._mailbox_probe())
        except Exception:
            logger.exception("mailbox probe of %s failed", self.path)
            return None
