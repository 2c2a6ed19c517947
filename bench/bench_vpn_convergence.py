"""Benchmark: ``vpn_controller`` convergence of 10,000 pending keys onto 3 emulated nodes.

Set-up (not timed): an embedded PostgreSQL, migrated; ``--keys`` users, each with an active
subscription and a key wanted present (bulk SQL); ``--nodes`` node emulators answering after
``--latency`` seconds each, served by a separate process by default (nodes are other machines;
``--in-process`` serves them from this process and shares its CPU).

Timed: from the first ``converge()`` (which also plans every key) until the database has no
pending row and every emulator holds every key. Per node the controller runs ``--limit`` lanes
(the node client's calls in flight); each lane claims ``--batch`` rows and sends them in ONE
``POST /v1/users:batch`` request, then records the results.

Units: a *node-op* is one key applied on one node (one op of a batch); a *key* is one key applied
on all nodes (``--nodes`` node-ops). The ceiling is what node latency allows at this batch size:
every request takes at least ``--latency`` and at most ``--limit`` are in flight per node, so a
node does at most ``limit / latency`` requests/s, i.e. ``limit × batch / latency`` node-ops/s, and
the fleet ``nodes`` times that. (With one user per request, ``--batch 1``, that is the old
per-call ceiling ``limit / latency × nodes``.) The ratio measured / ceiling is the same in keys and
node-ops. A ratio well below 1 means the time goes elsewhere than waiting for nodes: the CPU of
the controller (its two database units per batch, HTTP, JSON) or of the emulators.

    .venv/bin/python bench/bench_vpn_convergence.py [--keys 10000] [--nodes 3] [--latency 0.02]
        [--limit 8] [--batch 64] [--single-user-routes] [--in-process]

``--single-user-routes`` serves agents without the batch route, so the controller falls back to
one request per user (the protocol before batches; its ceiling is the per-call one): run it
interleaved with the default to get the batch / single ratio on the same machine state.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import random
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import trio

from atlas.actors.vpn_controller import VpnController
from atlas.clock import Clock
from atlas.runtime.bridge import open_bridge
from atlas.storage import Database, DatabaseSettings, EmbeddedPostgres, Tx, migrate
from atlas.testing.node_emulator import NodeEmulator
from atlas.vpn import Fleet, NodeConfig

TOKEN = "bench-node-token-0123456789"
NOW = dt.datetime(2025, 3, 1, tzinfo=dt.UTC)


# ---------------------------------------------------------------- the emulators' process


async def _serve_emulators(count: int, latency: float, batch_route: bool) -> None:
    async with trio.open_nursery() as nursery:
        urls = []
        for _ in range(count):
            emulator = NodeEmulator(TOKEN, latency=latency, batch_route=batch_route)
            urls.append(await nursery.start(emulator.run))
        print(json.dumps(urls), flush=True)
        # Until the parent closes our stdin.
        stdin = trio.lowlevel.FdStream(os.dup(sys.stdin.fileno()))
        while await stdin.receive_some():
            pass
        nursery.cancel_scope.cancel()


def _spawn_emulators(
    count: int, latency: float, batch_route: bool
) -> tuple[subprocess.Popen[str], list[str]]:
    extra = [] if batch_route else ["--single-user-routes"]
    child = subprocess.Popen(
        [sys.executable, __file__, "--serve-emulators", str(count), "--latency", str(latency), *extra],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert child.stdout is not None
    urls = json.loads(child.stdout.readline())
    return child, urls


# ---------------------------------------------------------------- seeding and checks


async def _seed(tx: Tx, *, count: int, now: dt.datetime) -> None:
    await tx.execute(
        """
        INSERT INTO users (id, language, referral_code, created_at)
        SELECT id, 'en', 'ref' || id, $2 FROM generate_series(1, $1::bigint) AS id
        """,
        count,
        now,
    )
    await tx.execute(
        """
        INSERT INTO subscriptions (user_id, kind, status, starts_at, expires_at, token,
                                   created_at, updated_at)
        SELECT id, 'trial', 'active', $2::timestamptz, $2::timestamptz + interval '7 days',
               md5('token' || id), $2, $2
        FROM generate_series(1, $1::bigint) AS id
        """,
        count,
        now,
    )
    await tx.execute(
        """
        INSERT INTO vpn_keys (subscription_id, uuid, desired, created_at, changed_at)
        SELECT id, gen_random_uuid(), 'present', $1, $1 FROM subscriptions
        """,
        now,
    )


async def _pending(tx: Tx) -> int:
    unplanned = await tx.fetchval("SELECT count(*) FROM vpn_keys WHERE planned_generation <> generation")
    pending = await tx.fetchval("SELECT count(*) FROM vpn_key_nodes WHERE pending")
    return int(unplanned) + int(pending)


async def _count_node_users(fleet: Fleet) -> dict[str, int]:
    counts = {}
    for client in fleet.enabled():
        total = 0
        async for page in client.iter_all_users(1000):
            total += len(page)
        counts[client.name] = total
    return counts


def _load_average() -> str:
    """The 1-minute load average, as text ("?" where the platform has none)."""
    try:
        return f"{os.getloadavg()[0]:.2f}"
    except OSError:
        return "?"


def _postgres_cpu(pgdata: Path) -> float:
    """CPU seconds used so far by the embedded PostgreSQL: the postmaster and its live children."""
    try:
        postmaster = int((pgdata / "postmaster.pid").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 0.0
    total = _proc_cpu(postmaster)
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == postmaster:
            total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


def _proc_cpu(pid: int | None) -> float:
    """CPU seconds (user + system) used so far by process ``pid`` (Linux /proc; 0 elsewhere)."""
    if pid is None:
        return 0.0
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# ---------------------------------------------------------------- the run


async def _run(
    dsn: str, args: argparse.Namespace, urls: list[str] | None, emulator_pid: int | None, pgdata: Path
) -> dict[str, float]:
    async with open_bridge(), trio.open_nursery() as nursery:
        db = await Database.open(DatabaseSettings(dsn=dsn, pool_size=10))
        try:
            await migrate(db, now=NOW)
            await db.run(_seed, count=args.keys, now=NOW)
            if urls is None:
                urls = []
                for _ in range(args.nodes):
                    emulator = NodeEmulator(
                        TOKEN, latency=args.latency, batch_route=not args.single_user_routes
                    )
                    urls.append(await nursery.start(emulator.run))
            nodes = [
                NodeConfig(
                    name=f"node{i}",
                    agent_url=url,
                    token=TOKEN,
                    public_host="127.0.0.1",
                    port=443,
                    security="none",
                )
                for i, url in enumerate(urls)
            ]
            async with Fleet(nodes, timeout=10, max_concurrency=args.limit) as fleet:
                controller = VpnController(
                    db=lambda: db,
                    fleet=fleet,
                    clock=Clock(),
                    rng=random.Random(0),
                    batch=args.batch,
                    reconcile_every=None,
                    tick_budget=3600,
                    owner=f"bench-{uuid.uuid4().hex[:8]}",
                )
                started = time.perf_counter()
                cpu_started = time.process_time()
                emulator_cpu_started = _proc_cpu(emulator_pid)
                postgres_cpu_started = _postgres_cpu(pgdata)
                passes = 0
                while True:
                    passes += 1
                    await controller.converge()
                    if not await db.run(_pending):
                        break
                elapsed = time.perf_counter() - started
                cpu = time.process_time() - cpu_started
                emulator_cpu = _proc_cpu(emulator_pid) - emulator_cpu_started
                postgres_cpu = _postgres_cpu(pgdata) - postgres_cpu_started
                calls_before_listing = sum(stat.calls for stat in fleet.statistics())
                counts = await _count_node_users(fleet)
                if set(counts.values()) != {args.keys}:
                    raise SystemExit(f"not converged: users per node {counts}")
                counters = controller.counters()
                if counters.failed:
                    raise SystemExit(f"{counters.failed} node calls failed during the benchmark")
                max_in_flight = max(stat.in_flight for stat in fleet.statistics())
                # Calls of the timed part: every batch request (the counting listing is after).
                batches = calls_before_listing
        finally:
            await db.close()
        nursery.cancel_scope.cancel()
    return {
        "elapsed": elapsed,
        "cpu": cpu,
        "emulator_cpu": emulator_cpu,
        "postgres_cpu": postgres_cpu,
        "passes": passes,
        "converged": counters.converged,
        "max_in_flight_at_end": max_in_flight,
        "batches": batches,
    }


def main() -> None:
    """Run the benchmark once and print a Markdown table."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--keys", type=int, default=10_000)
    parser.add_argument("--nodes", type=int, default=3)
    parser.add_argument("--latency", type=float, default=0.02)
    parser.add_argument("--limit", type=int, default=8, help="requests in flight (lanes) per node")
    parser.add_argument("--batch", type=int, default=64, help="rows per lane claim = ops per request")
    parser.add_argument("--in-process", action="store_true", help="serve the emulators from this process")
    parser.add_argument(
        "--single-user-routes",
        action="store_true",
        help="emulate agents without the batch route: one request per user (the pre-batch protocol)",
    )
    parser.add_argument("--serve-emulators", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_emulators:
        trio.run(_serve_emulators, args.serve_emulators, args.latency, not args.single_user_routes)
        return

    load_before = _load_average()
    child, urls = (None, None) if args.in_process else _spawn_emulators(
        args.nodes, args.latency, not args.single_user_routes
    )
    try:
        with tempfile.TemporaryDirectory(prefix="atlas-bench-") as tmp:
            # Our own fresh directory: open it for traversal (not listing) so the embedded server's user
            # (atlas-pg, when we run as root) can reach its data directory inside.
            os.chmod(tmp, 0o711)
            server = EmbeddedPostgres(Path(tmp), durable=False)
            dsn = trio.run(server.start)
            try:
                result = trio.run(
                    _run, dsn, args, urls, None if child is None else child.pid, server.pgdata
                )
            finally:
                trio.run(server.stop)
    finally:
        if child is not None:
            assert child.stdin is not None
            child.stdin.close()
            child.wait(timeout=30)
    load_after = _load_average()

    node_ops = args.keys * args.nodes
    elapsed = result["elapsed"]
    per_call_ceiling = args.limit / args.latency * args.nodes
    ceiling_ops = per_call_ceiling * (1 if args.single_user_routes else args.batch)
    ceiling_keys = ceiling_ops / args.nodes
    ops_rate = node_ops / elapsed
    keys_rate = args.keys / elapsed
    command = (
        f".venv/bin/python bench/bench_vpn_convergence.py --keys {args.keys} --nodes {args.nodes} "
        f"--latency {args.latency:g} --limit {args.limit} --batch {args.batch}"
        + (" --in-process" if args.in_process else "")
        + (" --single-user-routes" if args.single_user_routes else "")
    )
    where = "this process" if args.in_process else "a separate process"
    print(f"command: `{command}`")
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}, "
        f"PostgreSQL embedded (fsync off), emulators in {where}, {result['passes']:.0f} converge passes, "
        f"load average {load_before} before, {load_after} after"
    )
    print()
    print("| measure | value |")
    print("|---|---|")
    print(f"| keys × nodes | {args.keys:,} × {args.nodes} = {node_ops:,} node-ops |")
    print(
        f"| node latency, calls in flight per node, batch | "
        f"{args.latency * 1000:g} ms, {args.limit}, {args.batch} |"
    )
    print(f"| time to converge every key on every node | {elapsed:.2f} s |")
    print(f"| measured | {keys_rate:,.0f} keys/s = {ops_rate:,.0f} node-ops/s |")
    per_request = node_ops / max(result["batches"], 1)
    print(f"| requests to the nodes | {result['batches']:,.0f} ({per_request:.1f} ops each) |")
    print(
        f"| ceiling (limit × batch / latency × nodes) | {ceiling_keys:,.0f} keys/s = "
        f"{ceiling_ops:,.0f} node-ops/s |"
    )
    print(f"| ratio measured / ceiling | {ops_rate / ceiling_ops:.3f} |")
    print(
        f"| per-call ceiling (limit / latency × nodes, one user per request) | "
        f"{per_call_ceiling:,.0f} node-ops/s; measured / that = {ops_rate / per_call_ceiling:.2f} |"
    )
    print(
        f"| CPU of the controller process | {result['cpu']:.1f} s "
        f"({result['cpu'] / elapsed:.0%} of one core), "
        f"{result['cpu'] / node_ops * 1000:.2f} ms per node-op |"
    )
    print(
        f"| CPU of PostgreSQL (postmaster and backends) | {result['postgres_cpu']:.1f} s "
        f"({result['postgres_cpu'] / elapsed:.0%} of one core), "
        f"{result['postgres_cpu'] / node_ops * 1000:.2f} ms per node-op |"
    )
    if not args.in_process:
        print(
            f"| CPU of the emulators' process | {result['emulator_cpu']:.1f} s "
            f"({result['emulator_cpu'] / elapsed:.0%} of one core), "
            f"{result['emulator_cpu'] / node_ops * 1000:.2f} ms per node-op |"
        )


if __name__ == "__main__":
    main()
