"""Crash reports: one frozen record per crash, stall, start error, shutdown error or give-up.

After OTP's crash and supervisor reports, every report has the same fields, so the sinks (a JSON
log line, the ``crash_reports`` table, an alert to the admin chat, ``/status``) never special-case
a kind. A sink is any ``async def sink(report) -> None``.

Delivery rules (:meth:`CrashReporter.report`): sinks are called one after another, each in a
shielded scope with its own time box (``sink_timeout``), because a report is usually written while
the supervisor is being cancelled and must still get out, but a hung sink must not hold the tree
hostage. A sink that fails is logged with its traceback and the next sink still runs.
"""

from __future__ import annotations

import datetime as dt
import enum
import json
import logging
import os
import socket
import traceback
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from types import FrameType, TracebackType

import trio

logger = logging.getLogger(__name__)

MAX_FRAMES = 30
MAX_TEXT = 2000

Sink = Callable[["CrashReport"], Awaitable[None]]
BudgetProbe = Callable[[], tuple[int, int, int] | None]  # None: no budget right now (storage down)


class ReportKind(enum.StrEnum):
    """What happened. ``ReportKind.CRASH == "crash"``."""

    CRASH = "crash"
    STALL = "stall"
    START_ERROR = "start_error"
    SHUTDOWN_ERROR = "shutdown_error"
    GAVE_UP = "gave_up"


@dataclass(frozen=True, slots=True)
class CrashReport:
    """One report. Times: ``time`` is business time (injected clock), ``uptime`` seconds.

    ``frames`` are ``"file:line in func"`` strings, innermost last, at most 30 (the innermost ones).
    ``handling`` is the message being handled (None when idle), ``mailbox_depth`` None without a
    probe, ``budget`` the connection budget as (in use, total, waiting) or None without a probe.
    ``decision`` says what the supervisor did: ``"restart in 0.20s"``, ``"not restarted
    (temporary)"``, ``"escalate"``, ...
    """

    kind: ReportKind
    time: dt.datetime
    host: str
    pid: int
    path: str
    exc_type: str
    message: str
    frames: tuple[str, ...]
    handling: str | None
    mailbox_depth: int | None
    restarts_in_window: int
    max_restarts: int
    period: float
    decision: str
    uptime: float
    budget: tuple[int, int, int] | None

    def to_json_dict(self) -> dict[str, object]:
        """A dict of JSON-native values (time in ISO 8601, tuples as lists)."""
        return {
            "kind": str(self.kind),
            "time": self.time.isoformat(),
            "host": self.host,
            "pid": self.pid,
            "path": self.path,
            "exc_type": self.exc_type,
            "message": self.message,
            "frames": list(self.frames),
            "handling": self.handling,
            "mailbox_depth": self.mailbox_depth,
            "restarts_in_window": self.restarts_in_window,
            "max_restarts": self.max_restarts,
            "period": self.period,
            "decision": self.decision,
            "uptime": self.uptime,
            "budget": list(self.budget) if self.budget is not None else None,
        }


# ---------------------------------------------------------------------------------------------
# Frames


def _format_frame(filename: str, lineno: int | None, name: str) -> str:
    return f"{filename}:{lineno} in {name}"


def _bounded(frames: Iterable[str]) -> tuple[str, ...]:
    return tuple(deque(frames, maxlen=MAX_FRAMES))


def frames_of_exception(exc: BaseException) -> tuple[str, ...]:
    """The traceback of ``exc``, innermost last; for an exception group, followed by its first leaf's."""
    summaries: list[str] = []
    current: BaseException | None = exc
    while current is not None:
        tb: TracebackType | None = current.__traceback__
        summaries.extend(_format_frame(f.filename, f.lineno, f.name) for f in traceback.extract_tb(tb))
        current = current.exceptions[0] if isinstance(current, BaseExceptionGroup) else None
    return _bounded(summaries)


def frames_of_task(task: trio.lowlevel.Task | None) -> tuple[str, ...]:
    """Where ``task`` is waiting now (its await stack), innermost last; () if it is gone."""
    if task is None:
        return ()
    frames: list[tuple[FrameType, int]] = list(task.iter_await_frames())
    return _bounded(_format_frame(f.f_code.co_filename, line, f.f_code.co_name) for f, line in frames)


def _clip(text: str) -> str:
    return text if len(text) <= MAX_TEXT else text[: MAX_TEXT - 1] + "…"


# ---------------------------------------------------------------------------------------------
# Reporter


class CrashReporter:
    """Builds reports (stamping time, host, pid and budget) and hands them to every sink.

    ``now`` is the business clock (``Clock.now`` in production). ``budget_probe`` returns the
    connection budget as (in use, total, waiting); it is read when a report is composed.
    """

    def __init__(
        self,
        sinks: Sequence[Sink],
        *,
        now: Callable[[], dt.datetime],
        budget_probe: BudgetProbe | None = None,
        sink_timeout: float = 2.0,
    ) -> None:
        if not sink_timeout > 0:
            raise ValueError(f"sink_timeout must be > 0, got {sink_timeout!r}")
        self._sinks: list[Sink] = list(sinks)
        self._now = now
        self._budget_probe = budget_probe
        self.sink_timeout = sink_timeout
        self.host = socket.gethostname()

    def add_sink(self, sink: Sink) -> None:
        """Add a sink after construction (e.g. the DB sink once storage is up)."""
        self._sinks.append(sink)

    def set_budget_probe(self, probe: BudgetProbe | None) -> None:
        """Install (or remove) the connection budget probe."""
        self._budget_probe = probe

    def _budget(self) -> tuple[int, int, int] | None:
        if self._budget_probe is None:
            return None
        try:
            budget = self._budget_probe()
        except Exception:
            logger.exception("connection budget probe failed while composing a crash report")
            return None
        if budget is None:
            return None
        in_use, total, waiting = budget
        return (int(in_use), int(total), int(waiting))

    def compose(
        self,
        *,
        kind: ReportKind,
        path: str,
        error: BaseException,
        decision: str,
        restarts_in_window: int,
        max_restarts: int,
        period: float,
        uptime: float,
        frames: tuple[str, ...] | None = None,
        handling: str | None = None,
        mailbox_depth: int | None = None,
        message: str | None = None,
    ) -> CrashReport:
        """Build a report about ``error``; ``frames`` default to its traceback, ``message`` to str(error)."""
        return CrashReport(
            kind=kind,
            time=self._now(),
            host=self.host,
            pid=os.getpid(),
            path=path,
            exc_type=type(error).__qualname__,
            message=_clip(str(error) if message is None else message),
            frames=frames_of_exception(error) if frames is None else _bounded(frames),
            handling=None if handling is None else _clip(handling),
            mailbox_depth=mailbox_depth,
            restarts_in_window=restarts_in_window,
            max_restarts=max_restarts,
            period=period,
            decision=decision,
            uptime=max(0.0, uptime),
            budget=self._budget(),
        )

    async def report(self, report: CrashReport) -> None:
        """Give ``report`` to every sink, each shielded and time-boxed; never raises for a sink.

        Safe to call while being cancelled: the shield lets the report out, the time box
        (``sink_timeout`` per sink) bounds how long that takes.
        """
        for sink in list(self._sinks):
            with trio.CancelScope(shield=True), trio.move_on_after(self.sink_timeout) as box:
                try:
                    await sink(report)
                except Exception:
                    logger.exception("crash report sink %r failed for %s %s", sink, report.kind, report.path)
            if box.cancelled_caught:
                logger.error(
                    "crash report sink %r timed out after %gs for %s %s",
                    sink,
                    self.sink_timeout,
                    report.kind,
                    report.path,
                )


# ---------------------------------------------------------------------------------------------
# Built-in sinks


class LogSink:
    """Writes each report as one JSON line at ERROR level on ``logger``."""

    def __init__(self, logger: logging.Logger) -> None:
        self._logger = logger

    async def __call__(self, report: CrashReport) -> None:
        """Log ``report`` (synchronous; the logging setup keeps handlers off the event loop)."""
        self._logger.error("%s", json.dumps(report.to_json_dict(), sort_keys=True, ensure_ascii=False))


class RingSink:
    """Keeps the last ``maxlen`` reports in memory, for ``/status``."""

    def __init__(self, maxlen: int = 200) -> None:
        if isinstance(maxlen, bool) or not isinstance(maxlen, int) or maxlen < 1:
            raise ValueError(f"maxlen must be an int >= 1, got {maxlen!r}")
        self._reports: deque[CrashReport] = deque(maxlen=maxlen)

    async def __call__(self, report: CrashReport) -> None:
        """Remember ``report``, forgetting the oldest one when full."""
        self._reports.appendleft(report)

    def latest(self, n: int | None = None) -> list[CrashReport]:
        """The newest ``n`` reports (all when None), newest first."""
        items = list(self._reports)
        return items if n is None else items[: max(0, n)]

    def __len__(self) -> int:
        return len(self._reports)
