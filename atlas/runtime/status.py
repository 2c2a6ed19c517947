"""What operators see: readiness (``/readyz``) and the status document (``/status``, ``/status.json``)."""

from __future__ import annotations

import logging
import os
from typing import Any

import trio

from atlas.runtime.logs import DroppingQueueHandler
from atlas.runtime.services import Services
from atlas.storage import StorageError, Tx
from atlas.storage.units.operator_view import operator_view

_log = logging.getLogger("atlas.runtime.status")


async def _select_one(tx: Tx) -> int:
    return int(await tx.fetchval("SELECT 1"))


def log_drops() -> int:
    """Log records dropped so far because the log queue was full."""
    return sum(h.dropped for h in logging.getLogger().handlers if isinstance(h, DroppingQueueHandler))


async def readiness(services: Services) -> tuple[bool, list[str]]:
    """``(ready, reasons)``: the database answers within 2 s and every supervised child is running."""
    reasons: list[str] = []
    db = services.db
    if db is None:
        reasons.append("storage is down")
    else:
        try:
            with trio.move_on_after(2.0) as probe:
                await db.run(_select_one)
        except StorageError as exc:
            reasons.append(f"database: {exc.__class__.__name__}")
        else:
            if probe.cancelled_caught:
                reasons.append("database did not answer within 2 s")
    for supervisor in services.supervisors:
        for child in supervisor.statistics().children:
            if child.state.value != "running":
                reasons.append(f"{child.path} is {child.state.value}")
            elif child.waiting_for is not None:
                reasons.append(f"{child.path} is waiting for {child.waiting_for}")
    return (not reasons, reasons)


def _last_crash_by_path(services: Services) -> dict[str, dict[str, Any]]:
    latest: dict[str, dict[str, Any]] = {}
    for report in services.ring.latest():  # newest first: keep the first seen per path
        latest.setdefault(report.path, {"kind": report.kind.value, "time": report.time.isoformat(),
                                        "exc_type": report.exc_type, "message": report.message})
    return latest


async def _work_to_do(services: Services) -> dict[str, Any] | None:
    """The outbox backlog and keys pending per node; None when the database gives no answer in 2 s."""
    db = services.db
    if db is None:
        return None
    nodes = [node.name for node in services.nodes if node.enabled]
    try:
        with trio.move_on_after(2.0):
            view = await db.run(operator_view, now=services.clock.now(), nodes=nodes)
            return {
                "cap": view.cap,
                "outbox": {
                    "pending": view.outbox_pending,
                    "due": view.outbox_due,
                    "sent_last_minute": view.outbox_sent_last_minute,
                    "send_rate_per_second": round(view.outbox_sent_last_minute / 60.0, 2),
                    "failed_last_hour": view.outbox_failed_last_hour,
                },
                "keys_pending": view.keys_pending,
            }
    except StorageError as exc:
        _log.warning("status: work counts unavailable (%s)", exc.__class__.__name__)
    return None


async def status_snapshot(services: Services) -> dict[str, Any]:
    """The JSON document served at ``/status.json`` (and rendered as the ``/status`` page)."""
    db = services.db
    budget = db.budget_statistics() if db is not None else None
    last_crash = _last_crash_by_path(services)
    supervisors = [supervisor.statistics() for supervisor in services.supervisors]
    return {
        "time": services.clock.now().isoformat(),
        "pid": os.getpid(),
        "uptime_seconds": round(trio.current_time() - services.started_at, 3),
        "database": None
        if db is None or budget is None
        else {
            "budget": {
                "in_use": budget.in_use,
                "total": budget.total,
                "waiting": budget.waiting,
                "borrows": budget.borrows,
                "exhausted": budget.exhausted,
                "max_wait_seconds": round(budget.max_wait, 6),
            },
            "pool": db.pool_statistics(),
            "units_run": db.units_run,
            "units_failed": db.units_failed,
        },
        "tree": [
            {
                "path": stats.path or stats.name,
                "strategy": stats.strategy.value,
                "restarts_in_window": stats.restarts_in_window,
                "max_restarts": stats.max_restarts,
                "period_seconds": stats.period,
            }
            for stats in supervisors
        ],
        "supervisors": [
            {
                "path": child.path,
                "state": child.state.value,
                "restarts": child.restarts,
                "busy_with": child.busy_with,
                "heartbeat_age": child.heartbeat_age,
                "mailbox": _mailbox(services, child.name),
                "last_crash": last_crash.get(child.path),
                "waiting_for": child.waiting_for,
            }
            for stats in supervisors
            for child in stats.children
        ],
        "work": await _work_to_do(services),
        "scheduler": {
            "slow_steps": services.instrument.count,
            "longest_step_seconds": round(services.instrument.longest, 6),
            "longest_step_task": services.instrument.longest_task,
        },
        "crash_reports": [report.to_json_dict() for report in services.ring.latest(20)],
        "log_records_dropped": log_drops(),
    }


def _mailbox(services: Services, name: str) -> dict[str, int] | None:
    actor = services.actors.get(name)
    if actor is None:
        return None
    stats = actor.statistics()
    return {"depth": stats.depth, "capacity": stats.capacity}
