"""The handles every child of the tree shares, and how they are made from settings.

:class:`Services` carries process resources (clock, crash reporter, bot, HTTP clients, the node
fleet) and the restart-aware ``db`` slot that the storage child fills. It never carries mutable
business state: actors share that only through the database and messages.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

import trio
from aiogram import Bot

from atlas.actors.base import Actor
from atlas.actors.broadcaster import Broadcaster
from atlas.clock import Clock
from atlas.domain import PlanCatalog, load_plan_catalog
from atlas.payments import CryptoPayClient
from atlas.runtime.crash_alerts import AlertThrottle, admin_alert_sink
from atlas.runtime.settings import Settings
from atlas.runtime.telegram_tree import DispatcherSlot
from atlas.storage import BudgetExhausted, Database, DatabaseUnavailable, TransactionConflict
from atlas.storage.crash_reports import record_crash_report
from atlas.supervision import CrashReport, CrashReporter, LogSink, RingSink, SlowStepInstrument, Supervisor
from atlas.telegram.formatting import Formats, load_timezone
from atlas.telegram.i18n import configure_bundled
from atlas.vpn import Fleet, NodeConfig, load_nodes_file

_log = logging.getLogger("atlas.app")


@dataclass
class Services:
    """The shared, restart-aware handles the tree's children read (never mutable business state).

    ``db`` is set by the storage child while it is up and cleared when it stops; children started
    after storage (rest_for_one) can rely on it being set.
    """

    settings: Settings
    clock: Clock
    reporter: CrashReporter
    ring: RingSink
    instrument: SlowStepInstrument
    started_at: float
    catalog: PlanCatalog
    nodes: tuple[NodeConfig, ...]
    fleet: Fleet | None = None
    bot: Bot | None = None
    cryptopay: CryptoPayClient | None = None
    broadcaster: Broadcaster | None = None
    telegram_slot: DispatcherSlot = field(default_factory=DispatcherSlot)
    db: Database | None = None
    web_url: str | None = None
    operator_url: str | None = None  # the operator listener (/status, /metrics), when configured
    crash_counts: dict[str, int] = field(default_factory=dict)
    supervisors: list[Supervisor] = field(default_factory=list)
    actors: dict[str, Actor] = field(default_factory=dict)
    crash_store: DurableCrashSink | None = None

    def require_db(self) -> Database:
        """The open database; raises if storage is not up (a bug in the tree's order)."""
        if self.db is None:
            raise RuntimeError("storage is not up; children that use the database must start after it")
        return self.db


# ----------------------------------------------------------------------------- crash report sinks


# Database errors that mean "not now": the report waits for the database instead of being lost.
_NOT_NOW = (DatabaseUnavailable, BudgetExhausted, TransactionConflict)


class DurableCrashSink:
    """The ``crash_reports`` sink: what it cannot write yet it holds (bounded) and writes later.

    During a database outage the reports that explain it are the ones most worth keeping, so a
    report that meets storage down (no pool, or ``DatabaseUnavailable``) waits in memory, oldest
    first, at most ``capacity`` of them (past that the oldest go, counted in ``dropped``; every
    report is in the JSON log anyway). Each new report, and the storage child once it is up (and
    every few seconds while reports wait), calls :meth:`flush`, which writes them in order.

    One flush at a time: two writers that both took the oldest report wrote it twice and then
    popped one report too many (``IndexError`` in the storage child, found by ``atlas demo``:
    a report arrived while the storage child's own flush was writing). A report that arrives
    during a flush is left to that flush, which goes on while reports wait.
    """

    def __init__(self, db: Callable[[], Database | None], capacity: int = 500) -> None:
        self._db = db
        self.pending: deque[dict[str, Any]] = deque(maxlen=capacity)
        self.dropped = 0
        # One writer at a time: the storage child's periodic flush and a new report's flush used to
        # interleave at the await and both pop the same report (IndexError in the storage child,
        # whose restart took the whole tree down mid-outage; found by the real PostgreSQL kill test).
        self._writing = trio.Lock()

    async def __call__(self, report: CrashReport) -> None:
        """Queue ``report`` behind any that wait, then write what can be written."""
        if len(self.pending) == self.pending.maxlen:
            self.dropped += 1
        self.pending.append(report.to_json_dict())
        await self.flush()

    async def flush(self) -> int:
        """Write the waiting reports in order until done or the database says "not now".

        When another flush is already writing, returns 0 at once: that one writes what was just
        queued too (it loops until nothing waits), or leaves it for the next flush on "not now".
        """
        if self._writing.locked():
            return 0
        async with self._writing:
            return await self._write_waiting()

    async def _write_waiting(self) -> int:
        written = 0
        while self.pending:
            db = self._db()
            if db is None:
                _log.warning("%d crash report(s) wait for storage to come up", len(self.pending))
                return written
            report = self.pending[0]
            try:
                await db.run(record_crash_report, report=report)
            except _NOT_NOW as exc:
                _log.warning("%d crash report(s) wait for the database: %s", len(self.pending), exc)
                return written
            except Exception:  # noqa: BLE001 - logged with its traceback, then skipped
                # Not an outage: this one report cannot be stored. It is in the JSON log; do not
                # let it hold back the others.
                _log.exception("crash report %s %s cannot be stored", report.get("kind"), report.get("path"))
            if self.pending and self.pending[0] is report:  # not already pushed out by a full queue
                self.pending.popleft()
            written += 1
        return written


def _counting_sink(services: Services) -> Any:
    async def sink(report: CrashReport) -> None:
        kind = str(report.kind)
        services.crash_counts[kind] = services.crash_counts.get(kind, 0) + 1

    return sink


# ----------------------------------------------------------------------------- from settings


def load_catalog(settings: Settings) -> PlanCatalog:
    """The plan catalogue from ``ATLAS_PLANS_FILE``, or the example shipped with Atlas."""
    if settings.plans_file is not None:
        text = settings.plans_file.read_text(encoding="utf-8")
    else:
        text = resources.files("atlas.domain").joinpath("plans.example.toml").read_text(encoding="utf-8")
    return load_plan_catalog(text, required_currencies=(settings.currency,))


def load_nodes(settings: Settings) -> tuple[NodeConfig, ...]:
    """The VPN nodes from ``ATLAS_NODES_FILE`` (none when unset)."""
    if settings.nodes_file is None:
        return ()
    return load_nodes_file(settings.nodes_file.read_text(encoding="utf-8"))


def make_services(settings: Settings, clock: Clock | None = None) -> Services:
    """Services with the log, ring, counting, database and admin-alert crash-report sinks wired.

    ``clock`` defaults to a real-time anchored one at ``settings.clock_speed``; tests pass their own
    (a fixed anchor, the same speed).

    Reads the plan and node files: a malformed one fails here, naming the field, before anything
    starts.
    """
    clock = clock if clock is not None else Clock(speed=settings.clock_speed)
    # Every text of this process (screens and notices) shows times in the operator's zone.
    configure_bundled(Formats(timezone=load_timezone(settings.timezone), currency=settings.currency))
    ring = RingSink(maxlen=200)
    reporter = CrashReporter([LogSink(logging.getLogger("atlas.crash"))], now=clock.now)
    services = Services(
        settings=settings,
        clock=clock,
        reporter=reporter,
        ring=ring,
        instrument=SlowStepInstrument(settings.slow_step_threshold, logging.getLogger("atlas.scheduler")),
        started_at=trio.current_time(),
        catalog=load_catalog(settings),
        nodes=load_nodes(settings),
    )
    reporter.add_sink(ring)
    reporter.add_sink(_counting_sink(services))
    services.crash_store = DurableCrashSink(lambda: services.db)
    reporter.add_sink(services.crash_store)
    if settings.bot_token is not None and settings.admin_ids:
        # The interval is operational (alerts are read by people, in real time); the throttle buckets
        # business timestamps, so scale it by the clock's speed.
        throttle = AlertThrottle(settings.crash_alert_interval * clock.speed)
        reporter.add_sink(admin_alert_sink(settings.admin_ids, throttle, lambda: services.db))
    reporter.set_budget_probe(
        lambda: None if services.db is None else services.db.budget_statistics().as_tuple()
    )
    return services
