"""Benchmark: ``db.run`` of a three-statement transaction against plain asyncpg on a stdlib loop.

Each side runs in its own fresh process per round, against the same embedded PostgreSQL (started
here, fsync off, Unix socket):

* the baseline, ``bench/baseline_asyncpg.py``: stdlib + asyncpg only, no ``atlas`` and no
  ``trio_asyncio`` import, on ``asyncio.Runner(loop_factory=asyncio.SelectorEventLoop)``;
* Atlas, this script with ``--atlas-round``: ``trio.run`` with the one trio-asyncio bridge, the
  real :class:`~atlas.storage.Database` and ``db.run``.

Rounds are interleaved and alternate which side goes first, so machine noise hits both alike. Each
round opens its pool (not timed), warms up, then times ``--calls`` transactions one after another
(latency, 1 caller), ``--calls`` from ``--concurrency`` callers (throughput) and ``--calls`` empty
transactions (``BEGIN`` + ``COMMIT``; for Atlas the per-call cost of an empty ``db.run``: budget,
guard, ``Tx`` proxy, one bridge crossing).

Reported: medians over rounds of each round's median latency and throughput, the ratios (Atlas /
baseline for latency, Atlas / baseline for throughput: goals ≤ 1.3× and ≥ 0.8×), the per-round
ratios, each side's event loop, and the load average before and after.

    .venv/bin/python bench/bench_db_run.py [--rounds 7] [--calls 2000] [--concurrency 10]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import trio

from atlas.runtime.bridge import open_bridge
from atlas.storage import Database, DatabaseSettings, Tx

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _harness as h

SETUP = """
DROP TABLE IF EXISTS bench_events, bench_counters;
CREATE TABLE bench_events (id bigserial PRIMARY KEY, n integer NOT NULL, note text NOT NULL);
CREATE TABLE bench_counters (id integer PRIMARY KEY, total bigint NOT NULL);
INSERT INTO bench_counters VALUES (1, 0);
"""
# The same statements as the baseline's (kept textually equal: pg_stat_statements groups by text).
INSERT = "INSERT INTO bench_events (n, note) VALUES ($1, 'bench')"
UPDATE = "UPDATE bench_counters SET total = total + $1 WHERE id = 1"
SELECT = "SELECT total FROM bench_counters WHERE id = 1"
WARM_UP = 200


# ---------------------------------------------------------------- one Atlas round (own process)


async def _three_statements(tx: Tx, *, n: int) -> int:
    await tx.execute(INSERT, n)
    await tx.execute(UPDATE, n)
    return int(await tx.fetchval(SELECT))


async def _empty(tx: Tx) -> None:
    return None


async def _atlas_round(dsn: str, calls: int, concurrency: int, pool: int) -> dict[str, object]:
    async with open_bridge():
        db = await Database.open(DatabaseSettings(dsn=dsn, pool_size=pool))
        # Where asyncpg runs: the storage loop's thread (not the bridge, which aiogram alone uses).
        loop_type = type(db._loop._loop).__module__ + "." + type(db._loop._loop).__name__
        try:
            for n in range(WARM_UP):
                await db.run(_three_statements, n=n)
            latencies = []
            for n in range(calls):
                started = time.perf_counter()
                await db.run(_three_statements, n=n)
                latencies.append(time.perf_counter() - started)

            async def worker(count: int) -> None:
                for n in range(count):
                    await db.run(_three_statements, n=n)

            per_worker = calls // concurrency
            started = time.perf_counter()
            async with trio.open_nursery() as nursery:
                for _ in range(concurrency):
                    nursery.start_soon(worker, per_worker)
            throughput = per_worker * concurrency / (time.perf_counter() - started)

            empties = []
            for _ in range(calls):
                started = time.perf_counter()
                await db.run(_empty)
                empties.append(time.perf_counter() - started)
            return {
                "latency": statistics.median(latencies),
                "throughput": throughput,
                "empty": statistics.median(empties),
                "loop": f"trio {trio.__version__}; asyncpg on the storage loop, {loop_type}",
            }
        finally:
            await db.close()


# ---------------------------------------------------------------- the harness


async def _create_tables(tx: Tx) -> None:
    await tx.execute(SETUP)


async def _setup(dsn: str) -> None:
    async with open_bridge():
        db = await Database.open(DatabaseSettings(dsn=dsn, pool_size=1))
        try:
            await db.run(_create_tables)
        finally:
            await db.close()


def _atlas_process(dsn: str, calls: int, concurrency: int, pool: int) -> dict[str, float | str]:
    done = subprocess.run(
        [h.PYTHON, __file__, "--atlas-round", "--dsn", dsn, "--calls", str(calls),
         "--concurrency", str(concurrency), "--pool", str(pool)],
        capture_output=True, text=True, timeout=600, check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"the Atlas round failed (exit {done.returncode}):\n{done.stderr[-3000:]}")
    result: dict[str, float | str] = json.loads(done.stdout)
    return result


def _baseline_process(dsn: str, calls: int, concurrency: int, pool: int) -> dict[str, float | str]:
    out = h.run_baseline(
        "baseline_asyncpg.py",
        ["--dsn", dsn, "--calls", str(calls), "--concurrency", str(concurrency), "--pool", str(pool)],
    )
    result: dict[str, float | str] = json.loads(out)
    return result


def main() -> None:
    """Run the interleaved rounds and print a Markdown table."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=10)
    parser.add_argument("--pool", type=int, default=10, help="pool size (Atlas's default)")
    parser.add_argument("--atlas-round", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--dsn", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.atlas_round:
        print(json.dumps(trio.run(_atlas_round, args.dsn, args.calls, args.concurrency, args.pool)))
        return

    load_before = h.load_line()
    base: list[dict[str, float | str]] = []
    atlas: list[dict[str, float | str]] = []
    with tempfile.TemporaryDirectory(prefix="atlas-bench-db-") as tmp:
        # Our own fresh directory: open it for traversal (not listing) so the embedded server's user
        # (atlas-pg, when we run as root) can reach its data directory inside.
        os.chmod(tmp, 0o711)
        server = h.embedded_server(Path(tmp))
        dsn = h.start_server(server)
        try:
            trio.run(_setup, dsn)
            for round_no in range(args.rounds):
                sides = [("baseline", _baseline_process, base), ("atlas", _atlas_process, atlas)]
                if round_no % 2:
                    sides.reverse()
                for _, run, into in sides:
                    into.append(run(dsn, args.calls, args.concurrency, args.pool))
                print(
                    f"round {round_no + 1}/{args.rounds}: "
                    f"baseline {float(base[-1]['latency']) * 1e6:.0f} us, "
                    f"atlas {float(atlas[-1]['latency']) * 1e6:.0f} us; {h.load_line()}",
                    file=sys.stderr,
                )
        finally:
            h.stop_server(server)

    def med(side: list[dict[str, float | str]], key: str) -> float:
        return h.median([float(r[key]) for r in side])

    print(h.machine_line().replace(h.load_line(), f"{load_before} before, {h.load_line()} after"))
    print("PostgreSQL: embedded (fsync off, Unix socket), pool " + str(args.pool))
    print(f"baseline loop: {base[0]['loop']}; Atlas loop: {atlas[0]['loop']}")
    print(
        f"command: .venv/bin/python bench/bench_db_run.py --rounds {args.rounds} --calls {args.calls} "
        f"--concurrency {args.concurrency} --pool {args.pool}"
    )
    print()
    print("| measure | plain asyncpg, stdlib loop (own process) | Atlas `db.run` (trio) | ratio | goal |")
    print("|---|---|---|---|---|")
    bl, al = med(base, "latency"), med(atlas, "latency")
    bt, at = med(base, "throughput"), med(atlas, "throughput")
    be, ae = med(base, "empty"), med(atlas, "empty")
    print(f"| 3-statement tx, median latency, 1 caller | {bl * 1e6:.0f} µs | {al * 1e6:.0f} µs | "
          f"{h.ratio(al, bl)} | ≤ 1.3× |")
    print(f"| 3-statement tx, throughput, {args.concurrency} callers | {bt:.0f} tx/s | {at:.0f} tx/s | "
          f"{h.ratio(at, bt)} | ≥ 0.8× |")
    print(f"| empty transaction (`BEGIN`+`COMMIT`), median per call | {be * 1e6:.0f} µs | "
          f"{ae * 1e6:.0f} µs | "
          f"{h.ratio(ae, be)} | — |")
    print(f"| empty `db.run` cost over the plain empty transaction | | {(ae - be) * 1e6:.0f} µs | | |")
    print()
    print("per-round latency ratios: " + ", ".join(
        f"{float(a['latency']) / float(b['latency']):.2f}" for a, b in zip(atlas, base, strict=True)))
    print("per-round throughput ratios: " + ", ".join(
        f"{float(a['throughput']) / float(b['throughput']):.2f}" for a, b in zip(atlas, base, strict=True)))


if __name__ == "__main__":
    main()
