"""Benchmark: one full expiry + reminder + reconcile sweep over 100k, 300k and 1M subscriptions.

The claim under test is DESIGN.md's contract 3: every batch is bounded, so the work per row is
constant and **memory stays flat** however large the table grows. For each size:

* set-up (not timed, in this process): a fresh migrated database with ``N`` users and ``N``
  subscriptions, one key each (bulk SQL): a third are trials that ended an hour ago (the expiry
  sweep ends them and asks for their keys' revocation), a third are paid and end in 12 hours (the
  reminder sweep writes a reminder for each), a third run for 60 more days; a node emulator in its
  own process holds every key wanted present, less 100 (missing), plus 100 orphans;
* timed, in a **fresh process per size** (so its peak RSS is the sweep's, not the set-up's): the
  expiry sweep (``expire_due`` in batches of 500 until none is due), the reminder sweep (the keyset
  walk of ``enqueue_due_reminders``, 500 per page), and one full ``vpn_controller`` reconcile
  (merge-join of the node's listing with the database, 500 per page). Rows per second of each, and
  the process's peak RSS (``ru_maxrss``).

    .venv/bin/python bench/bench_sweep.py [--sizes 100000,300000,1000000] [--plot docs/sweep.png]

The plot needs matplotlib (``pip install matplotlib``); without it the table is still printed.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import random
import resource
import subprocess
import sys
import tempfile
import time
from importlib import resources
from pathlib import Path

import trio

from atlas.actors.vpn_controller import VpnController
from atlas.clock import Clock
from atlas.domain import load_plan_catalog
from atlas.storage import Database, DatabaseSettings, EmbeddedPostgres, Tx, migrate
from atlas.storage.units import expire_due, sync_plans
from atlas.storage.units.reminders import enqueue_due_reminders
from atlas.vpn import Fleet, NodeConfig

HERE = Path(__file__).resolve().parent
TOKEN = "bench-sweep-node-token-0123456789"
NOW = dt.datetime(2026, 6, 1, tzinfo=dt.UTC)
BATCH = 500


async def _seed(tx: Tx, *, count: int, now: dt.datetime) -> None:
    await tx.execute(
        """
        INSERT INTO users (id, first_name, language, referral_code, created_at)
        SELECT g, 'Sweep', 'en', 'sw_' || g, $2 FROM generate_series(1, $1) g
        """,
        count,
        now,
    )
    await tx.execute(
        """
        INSERT INTO subscriptions (user_id, kind, status, plan_code, starts_at, expires_at, token,
                                   created_at, updated_at)
        SELECT g, CASE WHEN g % 3 = 1 THEN 'trial' ELSE 'paid' END, 'active',
               CASE WHEN g % 3 = 1 THEN NULL ELSE 'm1' END,
               $2::timestamptz - interval '30 days',
               $2::timestamptz + CASE g % 3 WHEN 1 THEN interval '-1 hour'
                                            WHEN 2 THEN interval '12 hours'
                                            ELSE interval '60 days' END,
               'sweep-token-' || lpad(g::text, 12, '0'), $2, $2
        FROM generate_series(1, $1) g
        """,
        count,
        now,
    )
    await tx.execute(
        """
        INSERT INTO vpn_keys (subscription_id, uuid, desired, created_at, changed_at)
        SELECT s.id, md5('k' || s.user_id)::uuid, 'present', $1, $1 FROM subscriptions s
        """,
        now,
    )
    await tx.execute(
        """
        INSERT INTO vpn_key_nodes (key_id, node, applied, applied_generation, updated_at)
        SELECT k.id, 'sweep-1', 'present', 1, $1 FROM vpn_keys k
        JOIN subscriptions s ON s.id = k.subscription_id WHERE s.user_id % 3 <> 1
        """,
        now,
    )
    await tx.execute("ANALYZE")


# ------------------------------------------------------------------------- the timed process


async def _sweep(dsn: str, node_url: str) -> dict[str, float]:
    db = await Database.open(DatabaseSettings(dsn=dsn, pool_size=4, unit_timeout=120))
    clock = Clock(NOW)
    result: dict[str, float] = {}
    try:
        started, expired = time.perf_counter(), 0
        while True:
            counts = await db.run(expire_due, now=NOW, limit=BATCH)
            expired += counts.expired
            if counts.claimed == 0:
                break
        result["expiry_rows"] = expired
        result["expiry_seconds"] = time.perf_counter() - started

        started, examined, enqueued, cursor = time.perf_counter(), 0, 0, 0
        while True:
            batch = await db.run(enqueue_due_reminders, now=NOW, after_id=cursor, limit=BATCH, currency="RUB")
            examined += batch.examined
            enqueued += batch.enqueued
            if batch.next_after_id is None:
                break
            cursor = batch.next_after_id
        result["reminder_rows"] = examined
        result["reminders_enqueued"] = enqueued
        result["reminder_seconds"] = time.perf_counter() - started

        node = NodeConfig(
            name="sweep-1", agent_url=node_url, token=TOKEN, public_host="127.0.0.1", port=443,
            security="none",
        )  # fmt: skip
        async with Fleet([node], timeout=60) as fleet:
            controller = VpnController(
                db=lambda: db, fleet=fleet, clock=clock, rng=random.Random(1), reconcile_every=None,
                page_size=BATCH,
            )  # fmt: skip
            started = time.perf_counter()
            report = await controller.reconcile()
            result["reconcile_seconds"] = time.perf_counter() - started
            result["orphans_removed"] = report.orphans_removed
            result["missing_marked"] = report.readded
            result["reconcile_failed_nodes"] = len(report.failed_nodes)
    finally:
        await db.close()
    result["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return result


# ------------------------------------------------------------------------- the harness


async def _prepare(server: EmbeddedPostgres, admin_dsn: str, count: int) -> str:
    name = f"sweep_{count}"
    admin = await Database.open(DatabaseSettings(dsn=admin_dsn, pool_size=1))
    try:
        await admin._call(_admin_execute, admin, f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        await admin._call(_admin_execute, admin, f"CREATE DATABASE {name}")
    finally:
        await admin.close()
    dsn = admin_dsn.replace("/postgres?", f"/{name}?")
    db = await Database.open(DatabaseSettings(dsn=dsn, pool_size=2, unit_timeout=600, statement_timeout=600))
    try:
        await migrate(db, now=NOW)
        catalog_text = resources.files("atlas.domain").joinpath("plans.example.toml").read_text("utf-8")
        catalog = load_plan_catalog(catalog_text, required_currencies=("RUB",))
        await db.run(sync_plans, catalog=catalog, now=NOW)
        await db.run(_seed, count=count, now=NOW)
    finally:
        await db.close()
    return dsn


async def _admin_execute(db: Database, statement: str) -> None:
    # CREATE/DROP DATABASE cannot run inside a transaction, so not through db.run: straight on the
    # pool's connection, on the storage loop, in this set-up step only.
    async with db._pool.acquire() as conn:
        await conn.execute(statement)


def _run_child(dsn: str, count: int) -> dict[str, float]:
    node = subprocess.Popen(
        [sys.executable, str(HERE / "_sweep_node.py"), str(count), TOKEN],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert node.stdout is not None
        node_url = node.stdout.readline().strip()
        done = subprocess.run(
            [sys.executable, __file__, "--child", dsn, node_url],
            capture_output=True,
            text=True,
            check=True,
        )
        return dict(json.loads(done.stdout.strip().splitlines()[-1]))
    finally:
        node.terminate()
        node.wait(timeout=30)


async def _harness(sizes: list[int], plot: Path | None) -> None:
    with tempfile.TemporaryDirectory(prefix="atlas-bench-sweep-") as tmp:
        # Our own fresh directory: open it for traversal (not listing) so the embedded server's user
        # (atlas-pg, when we run as root) can reach its data directory inside.
        os.chmod(tmp, 0o711)
        server = EmbeddedPostgres(Path(tmp) / "pg")
        admin_dsn = await server.start()
        results = []
        try:
            for count in sizes:
                started = time.perf_counter()
                dsn = await _prepare(server, admin_dsn, count)
                print(f"seeded {count:,} subscriptions in {time.perf_counter() - started:.0f} s", flush=True)
                result = await trio.to_thread.run_sync(_run_child, dsn, count)
                result["size"] = count
                results.append(result)
                print(json.dumps(result), flush=True)
        finally:
            await server.stop()
    print(f"\nmachine: {platform.platform()}, {os.cpu_count()} cpus; load average {os.getloadavg()}")
    print(f"{'subscriptions':>13} {'expiry rows/s':>14} {'reminder rows/s':>16} {'reconcile keys/s':>17} "
          f"{'peak RSS MiB':>13}")  # fmt: skip
    for r in results:
        wanted = r["size"] * 2 / 3
        print(
            f"{r['size']:>13,} {r['expiry_rows'] / r['expiry_seconds']:>14,.0f} "
            f"{r['reminder_rows'] / r['reminder_seconds']:>16,.0f} "
            f"{wanted / r['reconcile_seconds']:>17,.0f} {r['peak_rss_mib']:>13.1f}"
        )
    if plot is not None:
        _plot(results, plot)


def _plot(results: list[dict[str, float]], path: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no plot (pip install matplotlib)")
        return
    sizes = [r["size"] for r in results]
    fig, (rate, rss) = plt.subplots(1, 2, figsize=(10, 4))
    series = {
        "expiry rows/s": [r["expiry_rows"] / r["expiry_seconds"] for r in results],
        "reminder rows/s": [r["reminder_rows"] / r["reminder_seconds"] for r in results],
        "reconcile keys/s": [r["size"] * 2 / 3 / r["reconcile_seconds"] for r in results],
    }
    for (label, values), marker in zip(series.items(), ("o-", "s-", "^-"), strict=True):
        rate.plot(sizes, values, marker, label=label)
    rate.set_xscale("log")
    rate.set_xlabel("subscriptions")
    rate.set_ylabel("rows per second")
    rate.set_ylim(bottom=0)
    rate.legend()
    rate.set_title("sweep throughput")
    rss.plot(sizes, [r["peak_rss_mib"] for r in results], "o-", color="tab:red")
    rss.set_xscale("log")
    rss.set_xlabel("subscriptions")
    rss.set_ylabel("peak RSS of the sweep process, MiB")
    rss.set_ylim(bottom=0)
    rss.set_title("memory stays flat")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    print(f"plot written to {path}")


def main() -> None:
    """Entry point: the harness, or (``--child DSN URL``) the timed sweep process."""
    if len(sys.argv) >= 2 and sys.argv[1] == "--child":
        print(json.dumps(trio.run(_sweep, sys.argv[2], sys.argv[3])))
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="100000,300000,1000000")
    parser.add_argument("--plot", type=Path, default=None, help="write a PNG plot here")
    args = parser.parse_args()
    trio.run(_harness, [int(s) for s in args.sizes.split(",")], args.plot)


if __name__ == "__main__":
    main()
