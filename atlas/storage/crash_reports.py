"""Units of work for the ``crash_reports`` table: the durable sink of supervision reports."""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass
from typing import Any

from atlas.storage.tx import Tx

MAX_LISTED = 1000


@dataclass(frozen=True, slots=True)
class StoredCrashReport:
    """A crash report as read back from the table."""

    id: int
    kind: str
    occurred_at: dt.datetime
    host: str
    pid: int
    path: str
    exc_type: str | None
    message: str | None
    report: dict[str, Any]


async def record_crash_report(tx: Tx, *, report: dict[str, Any]) -> int:
    """Insert one report (the dict of ``CrashReport.to_json_dict()``); return its id."""
    occurred = report.get("time")
    occurred_at = dt.datetime.fromisoformat(occurred) if isinstance(occurred, str) else occurred
    row_id = await tx.fetchval(
        """
        INSERT INTO crash_reports (kind, occurred_at, host, pid, path, exc_type, message, report)
        VALUES ($1, $2, $3, $4, $5, $6, $7, $8::jsonb)
        RETURNING id
        """,
        report["kind"],
        occurred_at,
        str(report.get("host", "")),
        int(report.get("pid", 0)),
        str(report.get("path", "")),
        report.get("exc_type"),
        report.get("message"),
        json.dumps(report, default=str),
    )
    return int(row_id)


@dataclass(frozen=True, slots=True)
class CrashReportFilter:
    """Which reports to list; every field optional (None: no condition).

    - ``actor``: an actor path (``root/workers/renewal``), a subtree (``root/workers`` matches
      everything under it) or a last segment (``renewal`` matches ``.../renewal``).
    - ``kind``: ``crash``, ``stall``, ``start_error``, ``shutdown_error`` or ``gave_up``.
    - ``since``: only reports that occurred at or after this time.
    """

    actor: str | None = None
    kind: str | None = None
    since: dt.datetime | None = None


def _like_literal(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


async def latest_crash_reports(
    tx: Tx, *, limit: int = 20, where: CrashReportFilter | None = None
) -> list[StoredCrashReport]:
    """The newest reports first, at most ``limit`` (capped at 1000), filtered by ``where``."""
    where = where or CrashReportFilter()
    actor = None if where.actor is None else where.actor.strip("/")
    rows = await tx.fetch(
        """
        SELECT id, kind, occurred_at, host, pid, path, exc_type, message, report
        FROM crash_reports
        WHERE ($2::text IS NULL OR path = $2 OR path LIKE $3 || '/%' OR path LIKE '%/' || $3)
          AND ($4::text IS NULL OR kind = $4)
          AND ($5::timestamptz IS NULL OR occurred_at >= $5)
        ORDER BY occurred_at DESC, id DESC LIMIT $1
        """,
        max(1, min(limit, MAX_LISTED)),
        actor,
        None if actor is None else _like_literal(actor),
        where.kind,
        where.since,
    )
    return [
        StoredCrashReport(
            id=row["id"],
            kind=row["kind"],
            occurred_at=row["occurred_at"],
            host=row["host"],
            pid=row["pid"],
            path=row["path"],
            exc_type=row["exc_type"],
            message=row["message"],
            report=json.loads(row["report"]),
        )
        for row in rows
    ]


async def prune_crash_reports(tx: Tx, *, before: dt.datetime, limit: int) -> int:
    """Delete at most ``limit`` reports older than ``before`` (oldest first); return how many."""
    status = await tx.execute(
        """
        DELETE FROM crash_reports WHERE id IN (
            SELECT id FROM crash_reports WHERE occurred_at < $1 ORDER BY id LIMIT $2
        )
        """,
        before,
        limit,
    )
    return int(status.split()[-1])
