"""Crash reports: fields, JSON shape, and delivery rules (shielded, time-boxed, failures logged)."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import logging

import pytest
import trio
import trio.testing

from atlas.supervision import CrashReport, CrashReporter, LogSink, ReportKind, RingSink

NOW = dt.datetime(2025, 3, 1, 12, 0, tzinfo=dt.UTC)


def _compose(reporter: CrashReporter, error: BaseException, **kw: object) -> CrashReport:
    fields: dict[str, object] = {
        "kind": ReportKind.CRASH,
        "path": "root/workers/renewal",
        "error": error,
        "decision": "restart in 0.20s",
        "restarts_in_window": 1,
        "max_restarts": 3,
        "period": 5.0,
        "uptime": 12.5,
        "handling": "'renew user 7'",
        "mailbox_depth": 4,
    }
    fields.update(kw)
    return reporter.compose(**fields)  # type: ignore[arg-type]


def _raised(depth: int) -> Exception:
    def recurse(n: int) -> None:
        if n == 0:
            raise ValueError("deep failure")
        recurse(n - 1)

    try:
        recurse(depth)
    except ValueError as exc:
        return exc
    raise AssertionError("unreachable")


def test_compose_fills_every_field() -> None:
    reporter = CrashReporter([], now=lambda: NOW, budget_probe=lambda: (3, 10, 2))
    report = _compose(reporter, _raised(2))
    assert all(getattr(report, f.name) is not None for f in dataclasses.fields(report))
    assert report.kind == "crash" and report.time == NOW
    assert report.exc_type == "ValueError" and report.message == "deep failure"
    assert report.frames[-1].endswith("in recurse")  # innermost last
    assert report.budget == (3, 10, 2)
    assert report.host and report.pid > 0


def test_frames_are_bounded_to_the_innermost_thirty() -> None:
    reporter = CrashReporter([], now=lambda: NOW)
    report = _compose(reporter, _raised(100))
    assert len(report.frames) == 30
    assert all(frame.endswith("in recurse") for frame in report.frames)


def test_exception_groups_show_the_leaf_frames() -> None:
    leaf = _raised(1)
    try:
        raise ExceptionGroup("nursery failed", [leaf])
    except ExceptionGroup as group:
        report = _compose(CrashReporter([], now=lambda: NOW), group)
    assert report.exc_type == "ExceptionGroup"
    assert report.frames[-1].endswith("in recurse")


def test_json_dict_is_json_native() -> None:
    reporter = CrashReporter([], now=lambda: NOW, budget_probe=lambda: (1, 2, 0))
    data = _compose(reporter, _raised(0)).to_json_dict()
    assert json.loads(json.dumps(data)) == data
    assert data["time"] == "2025-03-01T12:00:00+00:00"
    assert data["budget"] == [1, 2, 0]
    assert data["kind"] == "crash"


def test_a_failing_budget_probe_is_logged_not_raised(caplog: pytest.LogCaptureFixture) -> None:
    def broken() -> tuple[int, int, int]:
        raise RuntimeError("probe broke")

    reporter = CrashReporter([], now=lambda: NOW, budget_probe=broken)
    report = _compose(reporter, _raised(0))
    assert report.budget is None
    assert any(r.exc_info and "budget probe failed" in r.getMessage() for r in caplog.records)


async def test_a_failing_sink_is_logged_and_the_others_still_run(caplog: pytest.LogCaptureFixture) -> None:
    ring = RingSink()

    async def broken(report: CrashReport) -> None:
        raise OSError("disk full")

    reporter = CrashReporter([broken, ring], now=lambda: NOW)
    await reporter.report(_compose(reporter, _raised(0)))
    assert len(ring) == 1
    [record] = [r for r in caplog.records if "sink" in r.getMessage()]
    assert record.levelno == logging.ERROR
    assert record.exc_info is not None and isinstance(record.exc_info[1], OSError)


async def test_a_hanging_sink_is_time_boxed(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    ring = RingSink()

    async def hangs(report: CrashReport) -> None:
        await trio.sleep_forever()

    reporter = CrashReporter([hangs, ring], now=lambda: NOW, sink_timeout=2.0)
    t0 = trio.current_time()
    await reporter.report(_compose(reporter, _raised(0)))
    assert trio.current_time() - t0 == pytest.approx(2.0)
    assert len(ring) == 1
    assert any("timed out after 2s" in r.getMessage() for r in caplog.records)


async def test_reports_get_out_while_the_caller_is_cancelled(autojump_clock: trio.testing.MockClock) -> None:
    delivered: list[str] = []

    async def slow_db_sink(report: CrashReport) -> None:
        await trio.sleep(0.5)  # a real sink does I/O: it must not be cut off by the cancellation
        delivered.append(report.path)

    reporter = CrashReporter([slow_db_sink], now=lambda: NOW)
    with trio.CancelScope() as scope:
        scope.cancel()
        await reporter.report(_compose(reporter, _raised(0)))
    assert delivered == ["root/workers/renewal"]


async def test_log_sink_writes_one_json_line_at_error(caplog: pytest.LogCaptureFixture) -> None:
    logger = logging.getLogger("atlas.test.crashes")
    reporter = CrashReporter([LogSink(logger)], now=lambda: NOW)
    report = _compose(reporter, _raised(0))
    with caplog.at_level(logging.ERROR, logger="atlas.test.crashes"):
        await reporter.report(report)
    [record] = [r for r in caplog.records if r.name == "atlas.test.crashes"]
    assert record.levelno == logging.ERROR
    line = record.getMessage()
    assert "\n" not in line
    assert json.loads(line) == report.to_json_dict()


async def test_ring_sink_keeps_the_newest_first() -> None:
    reporter = CrashReporter([], now=lambda: NOW)
    ring = RingSink(maxlen=3)
    for i in range(5):
        await ring(_compose(reporter, _raised(0), path=f"root/w{i}"))
    assert [r.path for r in ring.latest()] == ["root/w4", "root/w3", "root/w2"]
    assert [r.path for r in ring.latest(2)] == ["root/w4", "root/w3"]
    with pytest.raises(ValueError, match="maxlen"):
        RingSink(maxlen=0)
