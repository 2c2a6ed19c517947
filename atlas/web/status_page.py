"""The operator's ``/status`` page: the status document rendered as server-side HTML.

A pure function of the JSON snapshot (the same one ``/status.json`` serves), so the page can never
show something the JSON does not, and it can be tested without a running process. No front-end
build and no script: the page reloads itself every ``refresh`` seconds (``<meta http-equiv=refresh>``).
Every value is HTML-escaped: actor paths, exception messages and frames come from code, but a
message can quote user input.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from html import escape
from typing import Any

REFRESH_SECONDS = 5

_STYLE = """
body{font:14px/1.4 system-ui,sans-serif;margin:1.5em;color:#222;background:#fafafa}
h1{font-size:1.3em;margin:0 0 .2em} h2{font-size:1.05em;margin:1.4em 0 .4em}
table{border-collapse:collapse;background:#fff}
td,th{padding:.25em .7em;border:1px solid #ddd;text-align:left}
th{background:#f0f0f0} .num{text-align:right;font-variant-numeric:tabular-nums}
.state-running{color:#17702b} .state-restarting,.state-starting{color:#a36a00}
.state-stopped,.state-failed,.state-gave_up{color:#b00020;font-weight:600}
.muted{color:#777} pre{margin:.3em 0;font-size:12px;white-space:pre-wrap}
details{background:#fff;border:1px solid #ddd;padding:.3em .6em;margin:.3em 0}
"""


def _cell(value: object, *, numeric: bool = False, css: str | None = None) -> str:
    classes = " ".join(c for c in ("num" if numeric else None, css) if c)
    shown = "—" if value is None else escape(str(value))
    return f'<td class="{classes}">{shown}</td>' if classes else f"<td>{shown}</td>"


def _table(headers: Sequence[str], rows: Iterable[str]) -> str:
    head = "".join(f"<th>{escape(h)}</th>" for h in headers)
    body = "".join(rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _seconds(value: object) -> str | None:
    return None if not isinstance(value, int | float) else f"{value:.1f} s"


def _tree(snapshot: Mapping[str, Any]) -> str:
    windows = {
        str(s["path"]): f"{s['restarts_in_window']} / {s['max_restarts']} in {s['period_seconds']:g} s"
        for s in snapshot.get("tree", [])
    }
    rows = []
    for child in snapshot.get("supervisors", []):
        path = str(child["path"])
        parent = path.rpartition("/")[0]
        mailbox = child.get("mailbox")
        crash = child.get("last_crash")
        crash_text = None
        if crash:
            crash_text = f"{crash['kind']} {crash['time']}: {crash['exc_type']}: {crash['message']}"
        rows.append(
            "<tr>"
            + _cell(path)
            + _cell(child["state"], css=f"state-{child['state']}")
            + _cell(child["restarts"], numeric=True)
            + _cell(windows.get(parent))
            + _cell(_seconds(child.get("heartbeat_age")), numeric=True)
            + _cell(None if mailbox is None else f"{mailbox['depth']} / {mailbox['capacity']}", numeric=True)
            + _cell(child.get("busy_with"))
            + _cell(crash_text)
            + "</tr>"
        )
    headers = ["actor", "state", "restarts", "supervisor window / limit", "heartbeat age", "mailbox",
               "busy with", "last crash"]  # fmt: skip
    return _table(headers, rows)


def _budget(snapshot: Mapping[str, Any]) -> str:
    database = snapshot.get("database")
    if not database:
        return '<p class="state-stopped">storage is down: no connection budget</p>'
    budget = database["budget"]
    row = (
        "<tr>"
        + _cell(budget["in_use"], numeric=True)
        + _cell(budget["total"], numeric=True)
        + _cell(budget["waiting"], numeric=True)
        + _cell(budget["exhausted"], numeric=True)
        + _cell(f"{budget['max_wait_seconds'] * 1000:.1f} ms", numeric=True)
        + _cell(database["units_run"], numeric=True)
        + _cell(database["units_failed"], numeric=True)
        + "</tr>"
    )
    headers = ["in use", "total", "waiting", "exhausted", "longest wait", "units run", "units failed"]
    return _table(headers, [row])


def _work(snapshot: Mapping[str, Any]) -> str:
    work = snapshot.get("work")
    if not work:
        return '<p class="muted">work counts unavailable (database down or slow)</p>'
    cap = int(work["cap"])

    def capped(n: int) -> str:
        return f"≥ {cap:,}" if n >= cap else f"{n:,}"

    outbox = work["outbox"]
    outbox_row = (
        "<tr>"
        + _cell(capped(outbox["pending"]), numeric=True)
        + _cell(capped(outbox["due"]), numeric=True)
        + _cell(f"{outbox['send_rate_per_second']:.2f}/s", numeric=True)
        + _cell(capped(outbox["failed_last_hour"]), numeric=True)
        + "</tr>"
    )
    headers = ["outbox pending", "due now", "send rate (last minute)", "failed (last hour)"]
    outbox_table = _table(headers, [outbox_row])
    nodes = work.get("keys_pending") or {}
    node_rows = [
        f"<tr>{_cell(name)}{_cell(capped(count), numeric=True)}</tr>" for name, count in nodes.items()
    ]
    if not node_rows:
        return outbox_table + '<h2>VPN nodes</h2><p class="muted">no nodes</p>'
    return outbox_table + "<h2>VPN nodes</h2>" + _table(["node", "keys pending"], node_rows)


def _reports(snapshot: Mapping[str, Any]) -> str:
    reports = snapshot.get("crash_reports") or []
    if not reports:
        return '<p class="muted">no crash reports since this process started</p>'
    parts = []
    for report in reports:
        summary = (
            f"{report.get('time')} {report.get('kind')} {report.get('path')} — "
            f"{report.get('exc_type')}: {report.get('message')}"
        )
        frames = "\n".join(str(f) for f in report.get("frames") or [])
        decision = report.get("decision")
        parts.append(
            f"<details><summary>{escape(summary)}</summary>"
            + (f"<p>decision: {escape(str(decision))}</p>" if decision else "")
            + f"<pre>{escape(frames)}</pre></details>"
        )
    return "".join(parts)


def render_status_page(snapshot: Mapping[str, Any], *, refresh: int = REFRESH_SECONDS) -> str:
    """The whole page for ``snapshot`` (the ``/status.json`` document)."""
    scheduler = snapshot.get("scheduler") or {}
    longest = scheduler.get("longest_step_seconds")
    return (
        "<!doctype html><html lang=en><head><meta charset=utf-8>"
        f'<meta http-equiv="refresh" content="{int(refresh)}">'
        "<title>Atlas status</title>"
        f"<style>{_STYLE}</style></head><body>"
        "<h1>Atlas status</h1>"
        f'<p class="muted">{escape(str(snapshot.get("time")))} · pid {escape(str(snapshot.get("pid")))}'
        f" · up {_seconds(snapshot.get('uptime_seconds')) or '—'}"
        f" · slow scheduler steps {escape(str(scheduler.get('slow_steps', 0)))}"
        f" (longest {'—' if longest is None else f'{float(longest) * 1000:.0f} ms'})"
        f' · refreshes every {int(refresh)} s · <a href="/status.json">JSON</a></p>'
        "<h2>Supervision tree</h2>" + _tree(snapshot)
        + "<h2>Connection budget</h2>" + _budget(snapshot)
        + "<h2>Outbox</h2>" + _work(snapshot)
        + "<h2>Latest crash reports</h2>" + _reports(snapshot)
        + "</body></html>"
    )  # fmt: skip
