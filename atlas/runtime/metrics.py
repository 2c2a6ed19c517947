"""Prometheus metrics, read from the live objects at scrape time.

Nothing in the hot paths updates a Prometheus object: the budget, the database, the supervisors and
the scheduler instrument keep plain counters, and this collector reads them when ``/metrics`` is
scraped. That keeps the storage and supervision layers free of a metrics dependency.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from atlas.storage import Database
from atlas.supervision import SlowStepInstrument, Supervisor, SupervisorStatistics


@dataclass
class MetricSources:
    """Where the numbers come from; ``db`` is None while storage is down."""

    db: Callable[[], Database | None]
    supervisors: Callable[[], list[Supervisor]]
    instrument: SlowStepInstrument
    crash_counts: Callable[[], dict[str, int]]
    log_drops: Callable[[], int]


def _walk(stats: SupervisorStatistics) -> Iterator[tuple[str, int, str]]:
    for child in stats.children:
        yield child.path, child.restarts, child.state.value


class AtlasCollector(Collector):
    """Collects Atlas's counters and gauges on each scrape."""

    def __init__(self, sources: MetricSources) -> None:
        self._sources = sources

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        """Yield every metric family (called by the registry at scrape time)."""
        db = self._sources.db()
        if db is not None:
            budget = db.budget_statistics()
            gauge = GaugeMetricFamily("atlas_db_budget", "Connection budget tokens", labels=["state"])
            gauge.add_metric(["in_use"], budget.in_use)
            gauge.add_metric(["total"], budget.total)
            gauge.add_metric(["waiting"], budget.waiting)
            yield gauge
            yield CounterMetricFamily("atlas_db_budget_borrows", "Tokens borrowed", value=budget.borrows)
            yield CounterMetricFamily(
                "atlas_db_budget_exhausted", "Borrows that hit the acquire deadline", value=budget.exhausted
            )
            yield CounterMetricFamily(
                "atlas_db_budget_wait_seconds",
                "Total time spent waiting for a token",
                value=budget.total_wait,
            )
            yield GaugeMetricFamily(
                "atlas_db_budget_max_wait_seconds", "Longest wait for a token", value=budget.max_wait
            )
            yield CounterMetricFamily("atlas_db_units", "Units of work that committed", value=db.units_run)
            yield CounterMetricFamily(
                "atlas_db_units_failed", "Units of work that failed", value=db.units_failed
            )
        restarts = CounterMetricFamily(
            "atlas_child_restarts", "Restarts per supervised child", labels=["path"]
        )
        up = GaugeMetricFamily("atlas_child_running", "1 when the child is running", labels=["path"])
        for supervisor in self._sources.supervisors():
            for path, count, state in _walk(supervisor.statistics()):
                restarts.add_metric([path], count)
                up.add_metric([path], 1 if state == "running" else 0)
        yield restarts
        yield up
        instrument = self._sources.instrument
        yield CounterMetricFamily(
            "atlas_scheduler_slow_steps", "Scheduler steps longer than the threshold", value=instrument.count
        )
        yield GaugeMetricFamily(
            "atlas_scheduler_longest_step_seconds",
            "Longest the scheduler ran without looking at I/O (one batch of steps)",
            value=instrument.longest,
        )
        crashes = CounterMetricFamily("atlas_crash_reports", "Crash reports since start", labels=["kind"])
        for kind, count in sorted(self._sources.crash_counts().items()):
            crashes.add_metric([kind], count)
        yield crashes
        yield CounterMetricFamily(
            "atlas_log_records_dropped", "Log records dropped", value=self._sources.log_drops()
        )


def build_registry(sources: MetricSources) -> CollectorRegistry:
    """A registry holding only Atlas's collector (no process-global default registry)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(AtlasCollector(sources))
    return registry


def render(registry: CollectorRegistry) -> bytes:
    """The Prometheus text exposition of ``registry``."""
    return generate_latest(registry)
