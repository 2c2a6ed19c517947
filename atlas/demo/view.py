"""The terminal: a rich live view on a TTY (progress over virtual days, counters, the supervision
tree with state, restarts and the last crash per actor); plain log lines when stdout is not one.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass

import trio
from rich.console import Console, Group
from rich.live import Live
from rich.panel import Panel
from rich.progress import BarColumn, Progress, TextColumn
from rich.table import Table

from atlas.demo.counts import ShopCounts
from atlas.demo.observer import ActorRow

_REFRESH = 0.5  # trio seconds between redraws on a TTY
_PLAIN_EVERY = 5.0  # trio seconds between plain progress lines


@dataclass(frozen=True)
class Frame:
    """Everything one redraw shows."""

    day: float
    days: int
    users_started: int
    users: int
    counts: ShopCounts | None
    messages: int
    restarts: int
    crash_reports: int
    faults: list[str]
    rows: list[ActorRow]


def _counters(frame: Frame) -> Table:
    table = Table.grid(padding=(0, 2))
    table.add_column(style="bold")
    table.add_column(justify="right")
    counts = frame.counts
    table.add_row("users", f"{frame.users_started}/{frame.users}")
    if counts is not None:
        table.add_row("payments: Stars", str(counts.paid_stars))
        table.add_row("payments: Crypto Pay", str(counts.paid_cryptopay))
        table.add_row("top-ups / from balance", f"{counts.topups} / {counts.balance_purchases}")
        table.add_row("renewals", str(counts.renewals))
        table.add_row("keys active / revoked", f"{counts.keys_present} / {counts.keys_revoked}")
    table.add_row("messages", str(frame.messages))
    table.add_row("restarts", str(frame.restarts))
    table.add_row("crash reports", str(frame.crash_reports))
    return table


def _tree(rows: list[ActorRow]) -> Table:
    table = Table(title="supervision tree", expand=True)
    table.add_column("actor")
    table.add_column("state")
    table.add_column("restarts", justify="right")
    table.add_column("last crash", overflow="fold")
    for row in rows:
        style = "green" if row.state == "running" else "yellow"
        table.add_row(row.path, f"[{style}]{row.state}[/]", str(row.restarts), row.last_crash or "")
    return table


def plain_line(frame: Frame) -> str:
    """One progress line for a log (stdout is not a TTY)."""
    counts = frame.counts
    money = (
        ""
        if counts is None
        else f" stars={counts.paid_stars} cryptopay={counts.paid_cryptopay} renewals={counts.renewals}"
    )
    return (
        f"demo: day {frame.day:.2f}/{frame.days} users={frame.users_started}/{frame.users}{money}"
        f" messages={frame.messages} restarts={frame.restarts} crash_reports={frame.crash_reports}"
        + (f" faults={','.join(frame.faults)}" if frame.faults else "")
    )


class DemoView:
    """Renders frames for rich's Live (the progress bar keeps its state between frames)."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self._progress = Progress(
            TextColumn("virtual day"), BarColumn(), TextColumn("{task.fields[day]}"), console=console
        )
        self._task = self._progress.add_task("days", total=1.0, day="")

    def render(self, frame: Frame) -> Group:
        """The live view of ``frame``."""
        self._progress.update(
            self._task, total=float(frame.days), completed=min(frame.day, frame.days),
            day=f"{frame.day:.2f} / {frame.days}",
        )  # fmt: skip
        faults = ", ".join(frame.faults) if frame.faults else "none yet"
        return Group(
            self._progress,
            Panel(_counters(frame), title="Atlas demo", subtitle=f"faults: {faults}"),
            _tree(frame.rows),
        )


async def show(console: Console, next_frame: Callable[[], Frame]) -> None:
    """Redraw until cancelled: the live view on a terminal, plain lines otherwise."""
    if console.is_terminal:
        await _show_live(console, next_frame)
    else:
        await _show_plain(console, next_frame)


async def _show_live(console: Console, next_frame: Callable[[], Frame]) -> None:
    view = DemoView(console)
    # auto_refresh off: rich would redraw from a thread of its own; this task redraws instead.
    with Live(view.render(next_frame()), console=console, auto_refresh=False) as live:
        while True:
            await trio.sleep(_REFRESH)
            live.update(view.render(next_frame()), refresh=True)


async def _show_plain(console: Console, next_frame: Callable[[], Frame]) -> None:
    while True:
        console.print(plain_line(next_frame()), highlight=False, soft_wrap=True)
        await trio.sleep(_PLAIN_EVERY)


def day_of(start: dt.datetime, now: dt.datetime) -> float:
    """Virtual days since ``start``."""
    return (now - start).total_seconds() / 86_400
