"""Crash reports reach the operators: an alert to every admin chat, through the outbox, throttled per actor.

Why the outbox and not a direct ``sendMessage``: a crash is often *caused* by Telegram or the
database being in trouble; an alert written as an outbox row is delivered by the sender with its
rate limits and retries once things recover, and a report sink must never do slow network I/O while
a supervisor waits for it.

Throttle (:class:`AlertThrottle`, pure): at most one alert per actor path per ``interval`` seconds
of business time. Reports of the same actor inside the interval are counted, and the next alert
says how many were suppressed. The dedupe key carries the interval's bucket
(``crash-alert:<admin>:<path>:<bucket>``), so several processes sharing the database still send one
alert per actor per bucket between them.

An alert that cannot be written (storage down) is logged and dropped: the report itself still
reaches the log, ``/status`` and, once storage is back, ``atlas crashes``.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

from atlas.storage import Database, StorageError
from atlas.storage.units.outbox import enqueue_many
from atlas.supervision import CrashReport

_log = logging.getLogger("atlas.runtime.crash_alerts")

ALERT_KIND = "admin.crash_alert"
ALERT_KIND_AFTER_SUPPRESSED = "admin.crash_alert_again"
MAX_MESSAGE = 300


@dataclass(frozen=True, slots=True)
class AlertDecision:
    """Send an alert for ``path`` in ``bucket``, mentioning ``suppressed`` reports since the last one."""

    path: str
    bucket: int
    suppressed: int


@dataclass
class AlertThrottle:
    """One alert per actor path per ``interval`` seconds; counts what it holds back."""

    interval: float
    _last_bucket: dict[str, int] = field(default_factory=dict)
    _suppressed: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.interval > 0:
            raise ValueError(f"interval must be > 0 seconds, got {self.interval!r}")

    def decide(self, path: str, at: dt.datetime) -> AlertDecision | None:
        """The alert to send for a report of ``path`` at ``at``, or None when it is held back."""
        bucket = int(at.timestamp() // self.interval)
        if self._last_bucket.get(path) == bucket:
            self._suppressed[path] = self._suppressed.get(path, 0) + 1
            return None
        self._last_bucket[path] = bucket
        return AlertDecision(path, bucket, self._suppressed.pop(path, 0))


def _payload(report: CrashReport, suppressed: int) -> dict[str, object]:
    message = report.message if len(report.message) <= MAX_MESSAGE else report.message[:MAX_MESSAGE] + "…"
    return {
        "path": report.path,
        "report_kind": str(report.kind),
        "exc_type": report.exc_type or "—",
        "message": message or "—",
        "decision": report.decision or "—",
        # ISO 8601: formatted for the admin's language and the operator's zone at send time.
        "time": report.time.isoformat(),
        "suppressed": suppressed,
    }


def admin_alert_sink(
    admin_ids: Sequence[int], throttle: AlertThrottle, db: Callable[[], Database | None]
) -> Callable[[CrashReport], Awaitable[None]]:
    """The crash-report sink that writes throttled alerts for every admin in ``admin_ids``."""

    async def sink(report: CrashReport) -> None:
        if not admin_ids:
            return
        decision = throttle.decide(report.path, report.time)
        if decision is None:
            return
        database = db()
        if database is None:
            _log.warning("crash alert for %s not queued: storage is down", report.path)
            return
        payload = _payload(report, decision.suppressed)
        kind = ALERT_KIND_AFTER_SUPPRESSED if decision.suppressed else ALERT_KIND
        messages = [
            (admin, kind, payload, f"crash-alert:{admin}:{report.path}:{decision.bucket}"[:200])
            for admin in admin_ids
        ]
        try:
            await database.run(enqueue_many, messages=messages, now=report.time)
        except StorageError as exc:
            _log.warning("crash alert for %s not queued: %s", report.path, exc.__class__.__name__)

    return sink
