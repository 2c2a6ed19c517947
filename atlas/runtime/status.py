"""What operators see: readiness (``/readyz``) and the status document (``/status``)."""

from __future__ import annotations

import logging
import os
from typing import Any

import trio

from atlas.runtime.logs import DroppingQueueHandler
from atlas.runtime.services import Services
from atlas.storage import StorageError, Tx


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


async def status_snapshot(services: Services) -> dict[str, Any]:
    """The JSON document served at ``/status``."""
    db = services.db
    budget = db.budget_statistics() if db is not None else None
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
        "supervisors": [
            {
                "path": child.path,
                "state": child.state.value,
                "restarts": child.restarts,
                "busy_with": child.busy_with,
                "heartbeat_age": child.heartbeat_age,
                "waiting_for": child.waiting_for,
            }
            for supervisor in services.supervisors
            for child in supervisor.statistics().children
        ],
        "scheduler": {
            "slow_steps": services.instrument.count,
            "longest_step_seconds": round(services.instrument.longest, 6),
            "longest_step_task": services.instrument.longest_task,
        },
        "crash_reports": [report.to_json_dict() for report in services.ring.latest(20)],
        "log_records_dropped": log_drops(),
    }
