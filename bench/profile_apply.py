"""Where a payment's server time goes: per-statement cost and WAL, the write plan, the indexes written.

Not a throughput benchmark (that is ``bench_money.py``, side by side with pgbench): a profile of the
server's side of ``apply_payment``, for docs/benchmarks.md. On an embedded server with
``pg_stat_statements`` preloaded, it prints

* the indexes of every table a top-up writes (each one is an index insert per new row version);
* ``pg_stat_statements`` (execution time, rows, WAL bytes and full-page images per call) over
  ``--payments`` top-ups applied one per ``db.run`` by ``--concurrency`` callers, then over as many
  applied through the payment combiner (batches), and over a pgbench ``-N`` run of the same length
  for comparison (pgbench's statements, on its own database);
* ``EXPLAIN (ANALYZE, BUFFERS, WAL)`` of the write statement for a batch of one and of ten.

    .venv/bin/python bench/profile_apply.py [--payments 2000] [--concurrency 10]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _harness as h
from bench_money import (
    CATALOG,
    NOW,
    _bench_apply,
    _bench_grouped,
    _pgbench,
    _pgbench_init,
    _seed_payments,
    topup_request,
)

from atlas.runtime.bridge import open_bridge
from atlas.storage import Database, DatabaseSettings, EmbeddedPostgres, Tx, migrate
from atlas.storage.units._apply_sql import APPLY_EFFECTS, LOCK_AND_READ
from atlas.storage.units.apply import _Round
from atlas.storage.units.plans import sync_plans

WRITTEN = ("payments", "ledger", "users", "outbox", "subscriptions")
STATEMENTS = """
SELECT calls, rows, total_exec_time / calls AS exec_ms, wal_bytes / calls AS wal, wal_fpi / calls AS fpi,
       shared_blks_hit / calls AS hit, left(regexp_replace(query, '\\s+', ' ', 'g'), 50) AS query
FROM pg_stat_statements WHERE calls >= 50 AND dbid = (SELECT oid FROM pg_database WHERE datname = $1)
ORDER BY total_exec_time DESC LIMIT 8
"""


async def _indexes(tx: Tx) -> list[Any]:
    return await tx.fetch(
        "SELECT tablename, indexname, indexdef FROM pg_indexes WHERE tablename = ANY ($1) "
        "ORDER BY tablename, indexname LIMIT 100",
        list(WRITTEN),
    )


async def _current_database(tx: Tx) -> str:
    return str(await tx.fetchval("SELECT current_database()"))


async def _reset(tx: Tx) -> None:
    await tx.execute("SELECT pg_stat_statements_reset()")


async def _statements(tx: Tx, *, database: str) -> list[Any]:
    return await tx.fetch(STATEMENTS, database)


async def _explain_write(tx: Tx, *, first: int, count: int) -> str:
    # Decide as the unit does, then EXPLAIN ANALYZE the write instead of running it; rolled back.
    requests = [topup_request(n) for n in range(first, first + count)]
    batch = _Round(tx, requests, list(range(count)), NOW)
    rows = await tx.fetch(
        LOCK_AND_READ,
        [r.provider for r in requests],
        [r.external_id for r in requests],
        [r.payload for r in requests],
        [r.payment_id for r in requests],
        count,
    )
    for row in rows:
        batch.balances.setdefault(row["user_id"], row["u_balance_minor"])
        batch._decide(row["n"] - 1, requests[row["n"] - 1], row, set())
    from atlas.storage.units.apply import _columns

    plan = await tx.fetchval(
        "EXPLAIN (ANALYZE, BUFFERS, WAL, FORMAT JSON) " + APPLY_EFFECTS,
        batch.now,
        *_columns(batch.applies, 20),
        *_columns(batch.entries, 6),
        *_columns(batch.notices, 5),
    )
    raise _RollBack(plan)


class _RollBack(Exception):
    def __init__(self, plan: str) -> None:
        super().__init__("roll back")
        self.plan = plan


def _summary(plan_json: str) -> str:
    top = json.loads(plan_json)[0]
    lines = [f"planning {top['Planning Time']:.3f} ms, execution {top['Execution Time']:.3f} ms"]

    def walk(node: dict[str, Any], depth: int) -> None:
        name = node["Node Type"] + (f" on {node['Relation Name']}" if "Relation Name" in node else "")
        if "CTE Name" in node:
            name += f" (CTE {node['CTE Name']})"
        lines.append(
            f"{'  ' * depth}{name}: {node.get('Actual Total Time', 0):.3f} ms, "
            f"rows {node.get('Actual Rows')}, "
            f"hit {node.get('Shared Hit Blocks', 0)}, dirtied {node.get('Shared Dirtied Blocks', 0)}, "
            f"WAL {node.get('WAL Bytes', 0)} B"
        )
        for child in node.get("Plans", []):
            walk(child, depth + 1)

    walk(top["Plan"], 0)
    for trigger in top.get("Triggers", []):
        lines.append(
            f"trigger {trigger['Trigger Name']} on {trigger['Relation']}: {trigger['Time']:.3f} ms, "
            f"{trigger['Calls']} calls"
        )
    return "\n".join(lines)


async def _main(args: argparse.Namespace, server: EmbeddedPostgres) -> None:
    dsn = await server.start()
    async with open_bridge():
        db = await Database.open(DatabaseSettings(dsn=dsn, pool_size=args.concurrency, unit_timeout=120))
        try:
            await migrate(db, now=NOW)
            await db.run(lambda tx: tx.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements"))
            await db.run(sync_plans, catalog=CATALOG, now=NOW)
            await db.run(_seed_payments, count=args.payments * 2 + 100)
            env = await _pgbench_init(server)
            print("## Indexes on the tables a payment writes\n")
            for row in await db.run(_indexes):
                print(f"* {row['tablename']}: `{row['indexdef']}`")
            database = str(await db.run(_current_database))
            for name, run in (
                (
                    "one payment per db.run",
                    lambda: _bench_apply(db, first=101, count=args.payments, concurrency=args.concurrency),
                ),
                (
                    "through the combiner",
                    lambda: _bench_grouped(
                        db, first=101 + args.payments, count=args.payments, concurrency=args.concurrency
                    ),
                ),
                ("pgbench -N", lambda: _pgbench(env, clients=args.concurrency, seconds=args.seconds)),
            ):
                await db.run(_reset)
                rate = await run()
                which = "pgbench" if name == "pgbench -N" else database
                print(f"\n## pg_stat_statements: {name} ({rate:.0f}/s)\n")
                print(
                    "| calls | rows/call | exec ms/call | WAL B/call | FPI/call | buffers hit/call "
                    "| statement |"
                )
                print("|---|---|---|---|---|---|---|")
                for s in await db.run(_statements, database=which):
                    print(
                        f"| {s['calls']} | {s['rows'] / s['calls']:.1f} | {s['exec_ms']:.3f} | "
                        f"{float(s['wal']):.0f} | {float(s['fpi']):.2f} | {s['hit']:.0f} | `{s['query']}` |"
                    )
            for count in (1, 10):
                try:
                    await db.run(_explain_write, first=1 + (count - 1) * 10, count=count)
                except _RollBack as done:
                    print(f"\n## EXPLAIN (ANALYZE, BUFFERS, WAL) of the write, a batch of {count}\n")
                    print("```\n" + _summary(done.plan) + "\n```")
        finally:
            await db.close()


def main() -> None:
    """Run the profile and print Markdown."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--payments", type=int, default=2_000)
    parser.add_argument("--concurrency", type=int, default=10)
    parser.add_argument("--seconds", type=int, default=5)
    args = parser.parse_args()
    print(f"load average before: {os.getloadavg()}")
    settings = {"shared_preload_libraries": "pg_stat_statements", "pg_stat_statements.max": "1000"}
    h.run_on_embedded_server(
        lambda server: _main(args, server), prefix="atlas-profile-apply-", settings=settings
    )
    print(f"\nload average after: {os.getloadavg()}")


if __name__ == "__main__":
    main()
