"""What the tree is doing, for the view and the summary: supervisors' children and crash reports.

A crash-report sink of the demo's own counts every report by actor path, so that actors below a
subtree the status document does not list (``root/telegram/intake``) still show their restarts.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from atlas.runtime.services import Services
from atlas.supervision import CrashReport


@dataclass(frozen=True)
class ActorRow:
    """One line of the live tree: path, state, restarts, the last crash (or None)."""

    path: str
    state: str
    restarts: int
    last_crash: str | None


@dataclass
class TreeObserver:
    """Counts crash reports by path (registered as a sink) and snapshots the tree on demand."""

    services: Services
    reports: Counter[str] = field(default_factory=Counter)
    restarts_by_path: Counter[str] = field(default_factory=Counter)
    last_crash: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.services.reporter.add_sink(self._sink)

    async def _sink(self, report: CrashReport) -> None:
        self.reports[str(report.kind)] += 1
        if report.decision.startswith("restart"):
            self.restarts_by_path[report.path] += 1
        message = report.message or ""
        text = message if message.startswith(report.exc_type or "") else f"{report.exc_type}: {message}"
        self.last_crash[report.path] = text[:80]

    @property
    def restarts(self) -> int:
        """Restarts decided by any supervisor of the tree so far."""
        return sum(self.restarts_by_path.values())

    @property
    def crash_reports(self) -> int:
        """Crash reports of every kind so far."""
        return sum(self.reports.values())

    def rows(self) -> list[ActorRow]:
        """The supervised children (start order), then actors seen only in crash reports."""
        rows: list[ActorRow] = []
        for supervisor in self.services.supervisors:
            for child in supervisor.statistics().children:
                rows.append(
                    ActorRow(child.path, child.state.value, child.restarts, self.last_crash.get(child.path))
                )
        listed = {row.path for row in rows}
        for path in sorted(set(self.last_crash) - listed):
            # Inside a subtree /status does not list (telegram's dispatch and intake): what its
            # crash reports say, not a live state.
            restarts = self.restarts_by_path[path]
            state = "restarted" if restarts else "reported"
            rows.append(ActorRow(path, state, restarts, self.last_crash[path]))
        return rows
