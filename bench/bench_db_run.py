"""Benchmark: ``db.run`` of a three-statement transaction against plain asyncio + asyncpg.

Both sides run in this one process against the same embedded PostgreSQL database, in interleaved
rounds (asyncio round, trio round, asyncio round, ...), so machine noise hits both alike. Each round
opens its own pool (not timed), warms up, then times ``--calls`` transactions one after another
(latency) and ``--calls`` transactions from ``--concurrency`` concurrent callers (throughput).

Reported: the median over rounds of each round's median latency, the median throughput, the ratios
(Atlas / baseline for latency, baseline / Atlas for throughput: above 1 means Atlas is slower), and
the per-call cost of an empty ``db.run`` (BEGIN + COMMIT, budget, guard, one bridge crossing).

    .venv/bin/python bench/bench_db_run.py [--rounds 7] [--calls 2000] [--concurrency 10]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import asyncpg
import trio

from atlas.runtime.bridge import open_bridge
from atlas.storage import Database, DatabaseSettings, EmbeddedPostgres, Tx

SETUP = """
DROP TABLE IF EXISTS bench_events, bench_counters;
CREATE TABLE bench_events (id bigserial PRIMARY KEY, n integer NOT NULL, note text NOT NULL);
CREATE TABLE bench_counters (id integer PRIMARY KEY, total bigint NOT NULL);
INSERT INTO bench_counters VALUES (1, 0);
"""
INSERT = "INSERT INTO bench_events (n, note) VALUES ($1, 'bench')"
UPDATE = "UPDATE bench_counters SET total = total + $1 WHERE id = 1"
SELECT = "SELECT total FROM bench_counters WHERE id = 1"
POOL = 10


# ---------------------------------------------------------------- baseline: plain asyncio + asyncpg


async def _baseline_round(dsn: str, calls: int, concurrency: int) -> tuple[float, float]:
    pool = await asyncpg.create_pool(dsn, min_size=POOL, max_size=POOL)
    try:

        async def one(n: int) -> int:
            async with pool.acquire() as conn, conn.transaction():
                await conn.execute(INSERT, n)
                await conn.execute(UPDATE, n)
                return int(await conn.fetchval(SELECT))

        for n in range(200):
            await one(n)
        latencies = []
        for n in range(calls):
            started = time.perf_counter()
            await one(n)
            latencies.append(time.perf_counter() - started)

        async def worker(count: int) -> None:
            for n in range(count):
                await one(n)

        started = time.perf_counter()
        await asyncio.gather(*(worker(calls // concurrency) for _ in range(concurrency)))
        throughput = (calls // concurrency) * concurrency / (time.perf_counter() - started)
        return statistics.median(latencies), throughput
    finally:
        await pool.close()


# ---------------------------------------------------------------- Atlas: trio + db.run


async def _three_statements(tx: Tx, *, n: int) -> int:
    await tx.execute(INSERT, n)
    await tx.execute(UPDATE, n)
    return int(await tx.fetchval(SELECT))


async def _empty(tx: Tx) -> None:
    return None


async def _atlas_round(dsn: str, calls: int, concurrency: int) -> tuple[float, float, float]:
    async with open_bridge():
        db = await Database.open(DatabaseSettings(dsn=dsn, pool_size=POOL))
        try:
            for n in range(200):
                await db.run(_three_statements, n=n)
            latencies = []
            for n in range(calls):
                started = time.perf_counter()
                await db.run(_three_statements, n=n)
                latencies.append(time.perf_counter() - started)

            async def worker(count: int) -> None:
                for n in range(count):
                    await db.run(_three_statements, n=n)

            started = time.perf_counter()
            async with trio.open_nursery() as nursery:
                for _ in range(concurrency):
                    nursery.start_soon(worker, calls // concurrency)
            throughput = (calls // concurrency) * concurrency / (time.perf_counter() - started)

            empty = []
            for _ in range(calls):
                started = time.perf_counter()
                await db.run(_empty)
                empty.append(time.perf_counter() - started)
            return statistics.median(latencies), throughput, statistics.median(empty)
        finally:
            await db.close()


async def _baseline_empty(dsn: str, calls: int) -> float:
    pool = await asyncpg.create_pool(dsn, min_size=1, max_size=POOL)
    try:
        times = []
        for _ in range(calls):
            started = time.perf_counter()
            async with pool.acquire() as conn, conn.transaction():
                pass
            times.append(time.perf_counter() - started)
        return statistics.median(times)
    finally:
        await pool.close()


async def _setup(dsn: str) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(SETUP)
    finally:
        await conn.close()


def main() -> None:
    """Run the benchmark and print a Markdown table of the results."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=10)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="atlas-bench-") as tmp:
        server = EmbeddedPostgres(Path(tmp), durable=False)
        dsn = trio.run(server.start)
        try:
            asyncio.run(_setup(dsn))
            base_lat, base_tput, atlas_lat, atlas_tput, atlas_empty, base_empty = [], [], [], [], [], []
            for round_no in range(args.rounds):
                lat, tput = asyncio.run(_baseline_round(dsn, args.calls, args.concurrency))
                base_lat.append(lat)
                base_tput.append(tput)
                base_empty.append(asyncio.run(_baseline_empty(dsn, args.calls)))
                lat, tput, empty = trio.run(_atlas_round, dsn, args.calls, args.concurrency)
                atlas_lat.append(lat)
                atlas_tput.append(tput)
                atlas_empty.append(empty)
                print(
                    f"round {round_no + 1}/{args.rounds}: baseline {base_lat[-1] * 1e6:.0f} us, "
                    f"atlas {atlas_lat[-1] * 1e6:.0f} us",
                    file=sys.stderr,
                )
        finally:
            trio.run(server.stop)

    med = statistics.median
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}, "
        f"PostgreSQL embedded (fsync off), pool {POOL}"
    )
    print(
        f"command: .venv/bin/python bench/bench_db_run.py --rounds {args.rounds} --calls {args.calls} "
        f"--concurrency {args.concurrency}"
    )
    print()
    print("| measure | plain asyncio + asyncpg | Atlas db.run (trio) | ratio |")
    print("|---|---|---|---|")
    print(
        f"| 3-statement tx, median latency, 1 caller | {med(base_lat) * 1e6:.0f} us | "
        f"{med(atlas_lat) * 1e6:.0f} us | {med(atlas_lat) / med(base_lat):.2f}x |"
    )
    print(
        f"| 3-statement tx, throughput, {args.concurrency} callers | {med(base_tput):.0f} tx/s | "
        f"{med(atlas_tput):.0f} tx/s | {med(base_tput) / med(atlas_tput):.2f}x |"
    )
    print(
        f"| empty transaction, median per call | {med(base_empty) * 1e6:.0f} us | "
        f"{med(atlas_empty) * 1e6:.0f} us | {med(atlas_empty) / med(base_empty):.2f}x |"
    )
    print()
    print(
        "per-round latency ratios: "
        + ", ".join(f"{a / b:.2f}" for a, b in zip(atlas_lat, base_lat, strict=True))
    )


if __name__ == "__main__":
    main()
