"""Benchmark: apply-payment and renewal throughput against pgbench's simple-update TPS, side by side.

Issue 3 asked for rows per second of (a) ``apply_payment`` and (b) the renewal claim+renew batch,
each as a ratio of pgbench's simple-update TPS (``pgbench -N``) on the same database server: the
practical ceiling of a write transaction there. Issue 9 item 5 sets the goal for (a): **≥ 0.25×**
with 10 callers.

Set-up rows are inserted in bulk with SQL (not timed). Then ``--rounds`` interleaved rounds, each:

* pgbench: ``pgbench -N -c <concurrency> -j 2 -T <seconds>`` on its own database, same server (its
  own process: the baseline never imports Atlas);
* apply: ``--payments`` pending top-ups (a fresh set each round) applied by ``--concurrency``
  concurrent callers, one ``db.run(apply_payment)`` each (lock-and-read, then one write statement:
  state change + ledger row + balance + first-paid + outbox row);
* grouped: the same on a fresh set, the callers going through the payment combiner
  (``atlas.payments.apply_flow.apply_combined``, what the Crypto Pay webhook and watcher use):
  concurrent callers share one transaction per batch (group commit); each still gets its own result;
* plain: a diagnostic, not a baseline: the same ``apply_payment`` on a fresh set of top-ups, run
  in a child process on a stdlib ``SelectorEventLoop`` + an asyncpg pool (no trio, no bridge, no budget):
  what ``apply_payment`` could reach if ``db.run`` cost nothing (the storage layer's ceiling);
* floor: the same number of ``db.run`` calls of a unit with two ``SELECT 1`` statements, same
  callers: what ``db.run`` itself costs for a two-statement unit, so the distance between "apply"
  and "floor" is the cost of apply's own SQL and Python.

The ratio is the median of the per-round ratios (each apply round against the pgbench round just
before it), so both sides carry the same machine load. Finally, unless ``--subscriptions 0``:

* renewal: ``--subscriptions`` due auto-renew subscriptions renewed by two concurrent claimers
  (``claim_and_renew`` batches of ``--batch``, ``FOR UPDATE SKIP LOCKED``), as two processes would.

    .venv/bin/python bench/bench_money.py [--rounds 5] [--payments 2000] [--subscriptions 0]
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import re
import statistics
import sys
import time
from pathlib import Path
from typing import cast

import _harness as h
import trio
import trio_asyncio

from atlas.domain import Currency, Plan, PlanCatalog, ReferralPolicy
from atlas.domain.referral import ReferralTrigger, RewardKind
from atlas.payments.apply_flow import PAYMENT_BATCH, apply_combined
from atlas.runtime.bridge import open_bridge
from atlas.storage import (
    CombinerStatistics,
    Database,
    DatabaseSettings,
    EmbeddedPostgres,
    Tx,
    combiner_for,
    migrate,
)
from atlas.storage.embedded import SUPERUSER, postgres_bin_dir
from atlas.storage.units._apply_sql import APPLY_EFFECTS, LOCK_AND_READ
from atlas.storage.units.apply import PaymentToApply, apply_payments
from atlas.storage.units.plans import sync_plans
from atlas.storage.units.renewals import claim_and_renew

NOW = dt.datetime(2026, 6, 1, 12, 0, tzinfo=dt.UTC)
PLAN_STAT_SETTINGS = {
    "shared_preload_libraries": "pg_stat_statements",
    "pg_stat_statements.track_planning": "on",
    "pg_stat_statements.max": "1000",
}
CATALOG = PlanCatalog([Plan("m1", 30, {Currency("RUB"): 10_000}, 50, {"ru": "месяц", "en": "month"})])
POLICY = ReferralPolicy(RewardKind.PERCENT, 10, ReferralTrigger.FIRST_PAYMENT)


async def _seed_payments(tx: Tx, *, count: int) -> None:
    # Payment n belongs to user 10000000 + n and is invoice inv-n.
    await tx.execute(
        """
        INSERT INTO users (id, referral_code, balance_minor, created_at)
        SELECT 10000000 + g, 'pay' || g, 0, $1 FROM generate_series(1, $2) g
        """,
        NOW,
        count,
    )
    await tx.execute(
        """
        INSERT INTO payments (user_id, provider, external_id, payload, purpose, amount_minor, currency,
                              credit_minor, status, created_at, expires_at)
        SELECT 10000000 + g, 'cryptopay', 'inv-' || g, 'payload-' || g, 'topup', 5000, 'RUB', 5000,
               'pending', $1::timestamptz, $1::timestamptz + interval '1 hour'
        FROM generate_series(1, $2) g
        """,
        NOW,
        count,
    )


async def _seed_subscriptions(tx: Tx, *, count: int) -> None:
    await tx.execute(
        """
        INSERT INTO users (id, referral_code, balance_minor, created_at)
        SELECT 20000000 + g, 'ren' || g, 30000, $1 FROM generate_series(1, $2) g
        """,
        NOW,
        count,
    )
    await tx.execute(
        """
        INSERT INTO ledger (user_id, amount_minor, kind, reference, idempotency_key, created_at)
        SELECT 20000000 + g, 30000, 'topup', 'seed', 'seed-' || g, $1 FROM generate_series(1, $2) g
        """,
        NOW,
        count,
    )
    await tx.execute(
        """
        INSERT INTO subscriptions (user_id, kind, status, plan_code, starts_at, expires_at, auto_renew,
                                   token, created_at, updated_at)
        SELECT 20000000 + g, 'paid', 'active', 'm1', $1::timestamptz - interval '30 days',
               $1::timestamptz + interval '1 hour' + (g % 600) * interval '1 second', true,
               md5(g::text) || md5((g + 1)::text), $1::timestamptz, $1::timestamptz
        FROM generate_series(1, $2) g
        """,
        NOW,
        count,
    )


async def _bench_apply(db: Database, *, first: int, count: int, concurrency: int) -> float:
    ids = iter(range(first, first + count))

    async def worker() -> None:
        for n in ids:
            await db.run(apply_payments, requests=[topup_request(n)])  # what apply_payment runs

    started = time.perf_counter()
    async with trio.open_nursery() as nursery:
        for _ in range(concurrency):
            nursery.start_soon(worker)
    return count / (time.perf_counter() - started)


def topup_request(n: int) -> PaymentToApply:
    """The request paying seeded top-up ``n`` (see ``_seed_payments``), as Crypto Pay reports it."""
    return PaymentToApply.of(
        provider="cryptopay",
        external_id=f"inv-{n}",
        paid_amount_minor=5000,
        paid_currency="RUB",
        referral_policy=POLICY,
        balance_currency="RUB",
        now=NOW,
    )


async def _bench_grouped(db: Database, *, first: int, count: int, concurrency: int) -> float:
    ids = iter(range(first, first + count))

    async def worker() -> None:
        for n in ids:
            await apply_combined(db, topup_request(n))

    started = time.perf_counter()
    async with trio.open_nursery() as nursery:
        for _ in range(concurrency):
            nursery.start_soon(worker)
    return count / (time.perf_counter() - started)


async def _current_database(tx: Tx) -> str:
    return str(await tx.fetchval("SELECT current_database()"))


async def _wal_lsn(tx: Tx) -> int:
    return int(await tx.fetchval("SELECT pg_current_wal_lsn() - '0/0'::pg_lsn"))


async def _two_selects(tx: Tx) -> None:
    await tx.fetchval("SELECT 1")
    await tx.fetchval("SELECT 1")


async def _bench_floor(db: Database, *, count: int, concurrency: int) -> float:
    left = iter(range(count))

    async def worker() -> None:
        for _ in left:
            await db.run(_two_selects)

    started = time.perf_counter()
    async with trio.open_nursery() as nursery:
        for _ in range(concurrency):
            nursery.start_soon(worker)
    return count / (time.perf_counter() - started)


async def _bench_renewal(db: Database, *, count: int, batch: int) -> tuple[float, int]:
    renewed = 0

    async def claimer() -> None:
        nonlocal renewed
        while True:
            counts = await db.run(
                claim_and_renew,
                now=NOW,
                limit=batch,
                renew_window=dt.timedelta(hours=24),
                retry_after=dt.timedelta(hours=6),
                catalog=CATALOG,
                currency="RUB",
            )
            renewed += counts.renewed
            if counts.claimed == 0:
                return

    started = time.perf_counter()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(claimer)
        nursery.start_soon(claimer)
    return count / (time.perf_counter() - started), renewed


async def _pgbench_init(server: EmbeddedPostgres) -> dict[str, str]:
    binaries = postgres_bin_dir()
    env = {**os.environ, "PGHOST": str(server.socket_dir), "PGUSER": SUPERUSER}
    await trio.run_process([str(binaries / "createdb"), "pgbench"], env=env, check=False)
    await trio.run_process(
        [str(binaries / "pgbench"), "-i", "-q", "-s", "10", "pgbench"],
        env=env,
        capture_stdout=True,
        capture_stderr=True,
    )
    return env


async def _pgbench(env: dict[str, str], *, clients: int, seconds: int) -> float:
    done = await trio.run_process(
        [
            str(postgres_bin_dir() / "pgbench"),
            "-N",
            "-c",
            str(clients),
            "-j",
            "2",
            "-T",
            str(seconds),
            "pgbench",
        ],
        env=env,
        capture_stdout=True,
        capture_stderr=True,
    )
    match = re.search(rb"tps = ([0-9.]+)", done.stdout)
    if match is None:
        raise RuntimeError(f"pgbench printed no tps: {done.stdout!r} {done.stderr!r}")
    return float(match.group(1))


def _pgbench_apply_script(batch: int) -> str:
    """A pgbench script running apply's own two statements, as a C client would, on ``batch`` top-ups.

    Each transaction takes the client's next ``batch`` seeded top-ups (payment ``g`` of user
    ``10000000 + g``, invoice ``inv-g``): ``:first`` plus the client's share, counted in ``:k``. The
    parameters are what ``apply_payments`` would send, written as SQL array expressions.
    """
    g = f"generate_series(:n, :n + {batch - 1}) g"

    def each(expression: str) -> str:
        return f"ARRAY(SELECT {expression} FROM {g})"

    def fill(value: str) -> str:
        return f"array_fill({value}, ARRAY[{batch}])"

    read = {
        1: fill("'cryptopay'::text"),
        2: each("'inv-' || g"),
        3: fill("NULL::text"),
        4: fill("NULL::bigint"),
        5: str(batch),
    }
    write = {
        1: f"'{NOW.isoformat()}'::timestamptz",
        2: each("g::bigint"),
        3: each("'inv-' || g"),
        4: each("10000000 + g"),
        5: fill("false"),
        6: fill("NULL::bigint"),
        7: fill("NULL::text"),
        8: fill("NULL::timestamptz"),
        9: fill("NULL::text"),
        10: fill("false"),
        11: fill("NULL::uuid"),
        12: fill("NULL::text"),
        13: each("'payment:' || g"),
        14: fill("NULL::bigint"),
        15: fill("0::bigint"),
        16: fill("NULL::text"),
        17: fill("NULL::numeric"),
        18: fill("NULL::numeric"),
        19: fill("NULL::numeric"),
        20: fill("NULL::text"),
        21: fill("NULL::numeric"),
        22: each("g::bigint"),
        23: each("10000000 + g"),
        24: fill("5000::bigint"),
        25: fill("'topup'::text"),
        26: each("'payment:' || g"),
        27: each("'payment:' || g"),
        28: each("g::bigint"),
        29: each("10000000 + g"),
        30: fill("'payment.applied.topup'::text"),
        31: each("'{\"payment_id\": ' || g || ', \"balance_minor\": 5000}'"),
        32: each("'payment-applied:' || g"),
    }

    def bind(sql: str, values: dict[int, str]) -> str:
        sql = "\n".join(line.split("--")[0] for line in sql.splitlines())  # no comments in a script
        for number in sorted(values, reverse=True):  # $12 before $1
            sql = sql.replace(f"${number}", f"({values[number]})")
        return " ".join(sql.split())

    return "\n".join(
        [
            f"\\set n :first + (:client_id * :per_client + :k) * {batch}",
            "\\set k :k + 1",
            "BEGIN;",
            bind(LOCK_AND_READ, read) + ";",
            bind(APPLY_EFFECTS, write) + ";",
            "COMMIT;",
            "",
        ]
    )


async def _pgbench_apply(
    env: dict[str, str],
    *,
    database: str,
    first: int,
    batch: int,
    payments: int,
    clients: int,
    script: Path,
) -> float:
    """Payments per second of :func:`_pgbench_apply_script` run by pgbench (``-M prepared``)."""
    per_client = payments // clients // batch
    await trio.Path(script).write_text(_pgbench_apply_script(batch))
    done = await trio.run_process(
        [
            str(postgres_bin_dir() / "pgbench"),
            "-n",
            "-M",
            "prepared",
            "-c",
            str(clients),
            "-j",
            "2",
            "-t",
            str(per_client),
            "-D",
            f"first={first}",
            "-D",
            f"per_client={per_client}",
            "-D",
            "k=0",
            "-f",
            str(script),
            database,
        ],
        env=env,
        capture_stdout=True,
        capture_stderr=True,
        check=False,
    )
    match = re.search(rb"tps = ([0-9.]+)", done.stdout)
    if match is None or done.returncode != 0:
        raise RuntimeError(f"pgbench (apply script) failed: {done.stdout[-2000:]!r} {done.stderr[-2000:]!r}")
    return float(match.group(1)) * batch


async def _main(args: argparse.Namespace, server: EmbeddedPostgres) -> dict[str, object]:
    dsn = await server.start()
    results: dict[str, object] = {}
    async with open_bridge():
        db = await Database.open(DatabaseSettings(dsn=dsn, pool_size=args.concurrency, unit_timeout=120))
        try:
            await migrate(db, now=NOW)
            if args.in_flight:  # made here first, so apply_combined finds (and uses) this one
                combiner_for(db, apply_payments, max_batch=args.max_batch, max_in_flight=args.in_flight)
            if args.plan_stats:
                await db.run(_create_statements_view)
            await db.run(sync_plans, catalog=CATALOG, now=NOW)
            await db.run(_seed_payments, count=args.payments * args.rounds * 5)
            database = str(await db.run(_current_database))
            script = server.data_dir / "apply.pgbench"
            if args.subscriptions:
                await db.run(_seed_subscriptions, count=args.subscriptions)
            env = await _pgbench_init(server)
            pgbench: list[float] = []
            apply: list[float] = []
            floor: list[float] = []
            plain: list[float] = []
            grouped: list[float] = []
            c_one: list[float] = []
            c_ten: list[float] = []
            wal: dict[str, list[float]] = {"pgbench": [], "apply": [], "grouped": []}
            plan_stats: dict[str, list[float]] = {}
            for n in range(args.rounds):
                lsn = await db.run(_wal_lsn)
                tps = await _pgbench(env, clients=args.concurrency, seconds=args.seconds)
                pgbench.append(tps)
                # WAL per transaction: the server's whole WAL over the run (pgbench is alone then)
                wal["pgbench"].append((await db.run(_wal_lsn) - lsn) / (tps * args.seconds))
                if args.plan_stats:
                    await db.run(_reset_statements)
                lsn = await db.run(_wal_lsn)
                apply.append(
                    await _bench_apply(
                        db, first=1 + n * args.payments, count=args.payments, concurrency=args.concurrency
                    )
                )
                wal["apply"].append((await db.run(_wal_lsn) - lsn) / args.payments)
                if args.plan_stats:  # apply's statements only: not pgbench's, not the plain child's
                    _add_plan_stats(plan_stats, await db.run(_plan_stats))
                lsn = await db.run(_wal_lsn)
                first_grouped = 1 + (2 * args.rounds + n) * args.payments
                grouped.append(
                    await _bench_grouped(
                        db, first=first_grouped, count=args.payments, concurrency=args.concurrency
                    )
                )
                wal["grouped"].append((await db.run(_wal_lsn) - lsn) / args.payments)
                for slot, (batch, into) in enumerate(((1, c_one), (10, c_ten))):
                    first_c = 1 + ((3 + slot) * args.rounds + n) * args.payments
                    into.append(
                        await _pgbench_apply(
                            env,
                            database=database,
                            first=first_c,
                            batch=batch,
                            payments=args.payments,
                            clients=args.concurrency,
                            script=script,
                        )
                    )
                floor.append(await _bench_floor(db, count=args.payments, concurrency=args.concurrency))
                first_plain = 1 + (args.rounds + n) * args.payments
                plain.append(await _plain_in_child(dsn, first_plain, args.payments, args.concurrency))
            results["pgbench"], results["apply"], results["floor"] = pgbench, apply, floor
            results["plan_stats"] = plan_stats
            results["plain"] = plain
            results["grouped"], results["wal"] = grouped, wal
            results["c_one"], results["c_ten"] = c_one, c_ten
            results["combiner"] = combiner_for(db, apply_payments).statistics()
            if args.subscriptions:
                rate, renewed = await _bench_renewal(db, count=args.subscriptions, batch=args.batch)
                results["renewal"], results["renewed"] = rate, renewed
                results["pgbench_after"] = await _pgbench(env, clients=args.concurrency, seconds=args.seconds)
        finally:
            await db.close()
    _ = trio_asyncio  # the bridge above is trio-asyncio's loop
    return results


async def _plain_in_child(dsn: str, first: int, count: int, concurrency: int) -> float:
    done = await trio.run_process(
        [sys.executable, __file__, "--plain-asyncio", dsn, str(first), str(count), str(concurrency)],
        capture_stdout=True,
        capture_stderr=True,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
    )
    return float(done.stdout.decode().strip().splitlines()[-1])


def _plain_asyncio_apply(dsn: str, first: int, count: int, concurrency: int) -> float:
    """``apply_payment`` on a stdlib loop with a plain asyncpg pool (the child process's work)."""
    import asyncio

    import asyncpg

    # Not a baseline (it runs Atlas's own unit, so it imports atlas and with it trio_asyncio, which
    # replaces asyncio's default loop): the loop is named explicitly, a stdlib SelectorEventLoop.

    async def run() -> float:
        pool = await asyncpg.create_pool(dsn, min_size=concurrency, max_size=concurrency)
        ids = iter(range(first, first + count))

        async def worker() -> None:
            for n in ids:
                async with pool.acquire() as conn, conn.transaction():
                    await apply_payments(Tx(conn, "apply_payment"), requests=[topup_request(n)])

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        rate = count / (time.perf_counter() - started)
        await pool.close()
        return rate

    with asyncio.Runner(loop_factory=asyncio.SelectorEventLoop) as runner:
        return runner.run(run())


def main() -> None:
    """Run the benchmark and print a Markdown table."""
    if len(sys.argv) == 6 and sys.argv[1] == "--plain-asyncio":
        dsn, first, count, concurrency = sys.argv[2], *map(int, sys.argv[3:])
        print(f"{_plain_asyncio_apply(dsn, first, count, concurrency):.3f}")
        return
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--payments", type=int, default=2_000, help="top-ups applied per round")
    parser.add_argument("--subscriptions", type=int, default=0, help="0: skip the renewal measure")
    parser.add_argument("--batch", type=int, default=500)
    parser.add_argument("--concurrency", type=int, default=10)
    parser.add_argument("--seconds", type=int, default=5, help="pgbench seconds per round")
    parser.add_argument(
        "--in-flight", type=int, default=0, help="grouped: batches at once (0: what apply_combined uses)"
    )
    parser.add_argument("--max-batch", type=int, default=PAYMENT_BATCH, help="grouped: payments per batch")
    parser.add_argument(
        "--plan-stats",
        action="store_true",
        help="preload pg_stat_statements (with track_planning) and print each statement's mean "
        "planning and execution time: the server's side of a payment, steadier than rates on a "
        "busy machine",
    )
    args = parser.parse_args()
    load_before = os.getloadavg()
    settings = PLAN_STAT_SETTINGS if args.plan_stats else None
    r = h.run_on_embedded_server(
        lambda server: _main(args, server), prefix="atlas-bench-money-", settings=settings
    )
    load_after = os.getloadavg()
    pgbench = cast(list[float], r["pgbench"])
    apply = cast(list[float], r["apply"])
    floor = cast(list[float], r["floor"])
    ratios = [a / p for a, p in zip(apply, pgbench, strict=True)]
    floor_ratios = [f / p for f, p in zip(floor, pgbench, strict=True)]
    plain = cast(list[float], r["plain"])
    plain_ratios = [q / p for q, p in zip(plain, pgbench, strict=True)]
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}, "
        "PostgreSQL embedded (fsync off)"
    )
    print(f"load average (1, 5, 15 min): before {_load(load_before)}, after {_load(load_after)}")
    print(
        f"command: .venv/bin/python bench/bench_money.py --rounds {args.rounds} --payments {args.payments} "
        f"--subscriptions {args.subscriptions} --batch {args.batch} --concurrency {args.concurrency} "
        f"--seconds {args.seconds}"
    )
    print()
    grouped = cast(list[float], r["grouped"])
    grouped_ratios = [g / p for g, p in zip(grouped, pgbench, strict=True)]
    print(
        "| round | pgbench -N TPS | grouped apply/s | **grouped ratio** | one per db.run apply/s | ratio "
        "| db.run floor/s | floor ratio | plain asyncio apply/s | plain ratio |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    rounds = zip(
        pgbench, grouped, grouped_ratios, apply, ratios, floor, floor_ratios, plain, plain_ratios, strict=True
    )
    for n, (p, g, gq, a, q, f, fq, pa, pq) in enumerate(rounds, 1):
        print(
            f"| {n} | {p:.0f} | {g:.0f} | {gq:.3f} | {a:.0f} | {q:.3f} | {f:.0f} | {fq:.3f} | {pa:.0f} "
            f"| {pq:.3f} |"
        )
    median = statistics.median
    print(
        f"| **median** | {median(pgbench):.0f} | {median(grouped):.0f} | **{median(grouped_ratios):.3f}** | "
        f"{median(apply):.0f} | {median(ratios):.3f} | {median(floor):.0f} | {median(floor_ratios):.3f} | "
        f"{median(plain):.0f} | {median(plain_ratios):.3f} |"
    )
    c_one = cast(list[float], r["c_one"])
    c_ten = cast(list[float], r["c_ten"])
    print()
    print("apply's own SQL run by pgbench (a C client, -M prepared), same server, same round:")
    print()
    print("| round | pgbench -N TPS | batch of 1: payments/s | ratio | batch of 10: payments/s | ratio |")
    print("|---|---|---|---|---|---|")
    for n, (p, one, ten) in enumerate(zip(pgbench, c_one, c_ten, strict=True), 1):
        print(f"| {n} | {p:.0f} | {one:.0f} | {one / p:.3f} | {ten:.0f} | {ten / p:.3f} |")
    one_ratios = [one / p for one, p in zip(c_one, pgbench, strict=True)]
    ten_ratios = [ten / p for ten, p in zip(c_ten, pgbench, strict=True)]
    print(
        f"| **median** | {median(pgbench):.0f} | {median(c_one):.0f} | {median(one_ratios):.3f} | "
        f"{median(c_ten):.0f} | {median(ten_ratios):.3f} |"
    )
    combined = cast(CombinerStatistics, r["combiner"])
    print()
    print(
        f"grouped: {combined.requests} payments in {combined.batches} batches "
        f"({combined.requests / combined.batches:.1f} per batch, largest {combined.largest_batch})"
    )
    wal = cast(dict[str, list[float]], r["wal"])
    print()
    print(
        "WAL bytes (median per transaction / payment): "
        + ", ".join(f"{name} {median(values):.0f}" for name, values in wal.items())
    )
    if args.plan_stats:
        print()
        print("apply_payment's statements on the server (pg_stat_statements over the apply runs):")
        print()
        print("| calls | plannings | planning per call | execution per call | statement |")
        print("|---|---|---|---|---|")
        for query, (calls, plans, plan_ms, exec_ms) in cast(dict[str, list[float]], r["plan_stats"]).items():
            print(
                f"| {calls:.0f} | {plans:.0f} | {plan_ms / calls * 1000:.0f} µs | "
                f"{exec_ms / calls * 1000:.0f} µs | `{query}` |"
            )
    if args.subscriptions:
        after = cast(float, r["pgbench_after"])
        renewal = cast(float, r["renewal"])
        print()
        print(
            f"claim_and_renew, 2 claimers x {args.batch}, {args.subscriptions} due "
            f"({int(cast(float, r['renewed']))} renewed): {renewal:.0f} rows/s; "
            f"pgbench -N right after: {after:.0f} TPS; ratio {renewal / after:.2f}"
        )


async def _create_statements_view(tx: Tx) -> None:
    await tx.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")


async def _reset_statements(tx: Tx) -> None:
    await tx.execute("SELECT pg_stat_statements_reset()")


async def _plan_stats(tx: Tx) -> list[tuple[str, int, int, float, float]]:
    """(statement, calls, plannings, total planning ms, total execution ms) since the last reset."""
    rows = await tx.fetch(
        "SELECT left(regexp_replace(query, '\\s+', ' ', 'g'), 60), calls, plans, total_plan_time, "
        "total_exec_time FROM pg_stat_statements WHERE calls >= 100 "
        "ORDER BY total_plan_time + total_exec_time DESC LIMIT 4"
    )
    return [(str(r[0]), int(r[1]), int(r[2]), float(r[3]), float(r[4])) for r in rows]


def _add_plan_stats(into: dict[str, list[float]], rows: list[tuple[str, int, int, float, float]]) -> None:
    for query, *numbers in rows:
        totals = into.setdefault(query, [0.0, 0.0, 0.0, 0.0])
        for i, value in enumerate(numbers):
            totals[i] += value


def _load(values: tuple[float, float, float]) -> str:
    return ", ".join(f"{v:.2f}" for v in values)


if __name__ == "__main__":
    main()
