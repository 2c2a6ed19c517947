"""Baseline for ``bench_db_run.py``: the same transactions with plain asyncpg on a stdlib asyncio loop.

Stdlib and asyncpg only. It never imports ``atlas`` or ``trio_asyncio`` (importing ``trio_asyncio``
replaces the loop ``asyncio.run()`` starts with trio-asyncio's, which is how the old baseline ended
up measuring the bridge against itself); it checks that at the end and prints its loop type.

One round: open a pool (not timed), warm up, time ``--calls`` three-statement transactions one
after another (latency), then ``--calls`` from ``--concurrency`` concurrent callers (throughput),
then ``--calls`` empty transactions (``BEGIN`` + ``COMMIT``). Prints one JSON object.

    python bench/baseline_asyncpg.py --dsn DSN [--calls 2000] [--concurrency 10] [--pool 10]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time

import asyncpg

INSERT = "INSERT INTO bench_events (n, note) VALUES ($1, 'bench')"
UPDATE = "UPDATE bench_counters SET total = total + $1 WHERE id = 1"
SELECT = "SELECT total FROM bench_counters WHERE id = 1"
WARM_UP = 200


async def _round(dsn: str, calls: int, concurrency: int, pool_size: int) -> dict[str, object]:
    # The pool as Atlas's Database opens it (min 1, command timeout, application name).
    pool = await asyncpg.create_pool(
        dsn, min_size=1, max_size=pool_size, command_timeout=30.0,
        server_settings={"application_name": "baseline"},
    )
    try:

        async def three(n: int) -> int:
            async with pool.acquire() as conn, conn.transaction():
                await conn.execute(INSERT, n)
                await conn.execute(UPDATE, n)
                return int(await conn.fetchval(SELECT))

        async def empty() -> None:
            async with pool.acquire() as conn, conn.transaction():
                pass

        for n in range(WARM_UP):
            await three(n)
        latencies = []
        for n in range(calls):
            started = time.perf_counter()
            await three(n)
            latencies.append(time.perf_counter() - started)

        async def worker(count: int) -> None:
            for n in range(count):
                await three(n)

        per_worker = calls // concurrency
        started = time.perf_counter()
        await asyncio.gather(*(worker(per_worker) for _ in range(concurrency)))
        throughput = per_worker * concurrency / (time.perf_counter() - started)

        empties = []
        for _ in range(calls):
            started = time.perf_counter()
            await empty()
            empties.append(time.perf_counter() - started)
        return {
            "latency": statistics.median(latencies),
            "throughput": throughput,
            "empty": statistics.median(empties),
        }
    finally:
        await pool.close()


def main() -> None:
    """Run one round and print its medians as JSON."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--dsn", required=True)
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=10)
    parser.add_argument("--pool", type=int, default=10)
    args = parser.parse_args()
    loop_type = ""

    async def body() -> dict[str, object]:
        nonlocal loop_type
        loop = type(asyncio.get_running_loop())
        loop_type = f"{loop.__module__}.{loop.__name__}"
        return await _round(args.dsn, args.calls, args.concurrency, args.pool)

    with asyncio.Runner(loop_factory=asyncio.SelectorEventLoop) as runner:
        result = runner.run(body())
    tainted = sorted(m for m in sys.modules if m.split(".")[0] in {"atlas", "trio_asyncio", "trio"})
    if tainted:
        raise SystemExit(f"the baseline imported {tainted}; it must run on plain asyncio")
    result["loop"] = loop_type
    print(json.dumps(result))


if __name__ == "__main__":
    main()
