"""Where a grouped payment's CPU goes, and what PostgreSQL's plan choice costs it.

Not the side-by-side benchmark (that is ``bench_money.py``, against ``pgbench -N``): a profile for
docs/benchmarks.md. Ten closed-loop callers apply seeded top-ups through the payment combiner, as
the Crypto Pay webhook and watcher do, in interleaved rounds of each variant:

* ``shipped``: ``apply_payments`` as it is (its ``BEGIN`` sets ``plan_cache_mode =
  force_generic_plan`` for the transaction);
* ``auto``: the same statements in a unit without that setting, PostgreSQL choosing between custom
  and generic plans per connection (what Atlas did before session 5);
* ``custom``: the same with ``force_custom_plan`` (every execution planned).

For every round it prints payments per second, the batches' mean size, and CPU per payment: this
process by thread (the trio thread, the storage loop's thread) and PostgreSQL's processes by kind
(the backends serving the pool, the WAL writer, autovacuum), read from ``/proc``.

    .venv/bin/python bench/profile_apply_cpu.py [--rounds 4] [--payments 2000]
                                                [--variants shipped,auto,custom]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import trio

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _harness as h
from bench_money import CATALOG, NOW, _seed_payments, topup_request

from atlas.runtime.bridge import open_bridge
from atlas.storage import Database, DatabaseSettings, EmbeddedPostgres, Tx, combiner_for, migrate
from atlas.storage import transaction_settings as settings_of
from atlas.storage.embedded import SUPERUSER
from atlas.storage.units import PaymentResult, PaymentToApply, apply_payments
from atlas.storage.units.plans import sync_plans

CALLERS = 10


async def _left_to_postgres(tx: Tx, *, requests: Sequence[PaymentToApply]) -> list[PaymentResult]:
    return await apply_payments(tx, requests=requests)


@settings_of(plan_cache_mode="force_custom_plan")
async def _custom_plans(tx: Tx, *, requests: Sequence[PaymentToApply]) -> list[PaymentResult]:
    return await apply_payments(tx, requests=requests)


VARIANTS: dict[str, Callable[..., Any]] = {
    "shipped": apply_payments,
    "auto": _left_to_postgres,
    "custom": _custom_plans,
}


def _postgres_cpu() -> dict[str, float]:
    """CPU seconds so far of every PostgreSQL process, summed by kind."""
    kinds: dict[str, float] = {}
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/comm") as f:
                if f.read().strip() != "postgres":
                    continue
            with open(f"/proc/{pid}/cmdline") as f:
                title = f.read().replace("\0", " ").strip()
            seconds = h.cpu_seconds(int(pid))
        except OSError:  # ended between the listing and the read
            continue
        role = title.split(":", 1)[1].strip() if ":" in title else "postmaster"
        kind = "backends" if role.split()[0] == SUPERUSER else role.split()[0]
        kinds[kind] = kinds.get(kind, 0.0) + seconds
    return kinds


def _thread_cpu(names: dict[int, str]) -> dict[str, float]:
    """CPU seconds so far of this process's threads, by the names given (others: "other")."""
    spent: dict[str, float] = {}
    for tid in os.listdir("/proc/self/task"):
        name = names.get(int(tid), "other")
        spent[name] = spent.get(name, 0.0) + h.stat_cpu_seconds(f"/proc/self/task/{tid}/stat")
    return spent



async def _round(db: Database, unit: Callable[..., Any], first: int, count: int) -> float:
    combiner = combiner_for(db, unit)
    numbers = iter(range(first, first + count))

    async def caller() -> None:
        for n in numbers:
            await combiner.submit(topup_request(n))

    started = time.perf_counter()
    async with trio.open_nursery() as nursery:
        for _ in range(CALLERS):
            nursery.start_soon(caller)
    return time.perf_counter() - started


async def _main(args: argparse.Namespace, server: EmbeddedPostgres) -> None:
    dsn = await server.start()
    variants = args.variants.split(",")
    async with open_bridge():
        db = await Database.open(DatabaseSettings(dsn=dsn, pool_size=CALLERS, unit_timeout=120))
        try:
            await migrate(db, now=NOW)
            await db.run(sync_plans, catalog=CATALOG, now=NOW)
            await db.run(_seed_payments, count=args.payments * (args.rounds + 1) * len(variants))
            storage_thread = await db._call(_native_thread_id)  # a profile's look inside
            names = {threading.get_native_id(): "trio thread", storage_thread: "storage thread"}
            first = 1
            for variant in variants:  # warm every variant's connections and plans
                await _round(db, VARIANTS[variant], first, args.payments // 4)
                first += args.payments // 4
            rates: dict[str, list[float]] = {v: [] for v in variants}
            print(
                "| round | variant | payments/s | per batch | trio thread | storage thread "
                "| PostgreSQL backends | other PostgreSQL |"
            )
            print("|---|---|---|---|---|---|---|---|")
            for n in range(1, args.rounds + 1):
                for variant in variants:
                    unit = VARIANTS[variant]
                    before = combiner_for(db, unit).statistics()
                    threads0, pg0 = _thread_cpu(names), _postgres_cpu()
                    wall = await _round(db, unit, first, args.payments)
                    threads1, pg1 = _thread_cpu(names), _postgres_cpu()
                    after = combiner_for(db, unit).statistics()
                    first += args.payments
                    rate = args.payments / wall
                    rates[variant].append(rate)

                    def per(seconds: float) -> str:
                        return f"{1e6 * seconds / args.payments:.0f} µs"

                    batches = max(1, after.batches - before.batches)
                    pg_other = sum(pg1.values()) - pg1.get("backends", 0.0)
                    pg_other -= sum(pg0.values()) - pg0.get("backends", 0.0)
                    pg_other = max(0.0, pg_other)  # a process that ended takes its seconds along
                    print(
                        f"| {n} | {variant} | {rate:.0f} "
                        f"| {(after.requests - before.requests) / batches:.1f} "
                        f"| {per(threads1['trio thread'] - threads0['trio thread'])} "
                        f"| {per(threads1['storage thread'] - threads0['storage thread'])} "
                        f"| {per(pg1.get('backends', 0.0) - pg0.get('backends', 0.0))} | {per(pg_other)} |",
                        flush=True,
                    )
            print()
            for variant in variants:
                print(f"{variant}: median {statistics.median(rates[variant]):.0f} payments/s")
        finally:
            await db.close()


async def _native_thread_id() -> int:
    return threading.get_native_id()


def main() -> None:
    """Run the profile and print Markdown."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--payments", type=int, default=2_000, help="payments per round and variant")
    parser.add_argument("--variants", default="shipped,auto,custom")
    args = parser.parse_args()
    unknown = set(args.variants.split(",")) - set(VARIANTS)
    if unknown:
        parser.error(f"unknown variants {sorted(unknown)}; known: {sorted(VARIANTS)}")
    print(f"load average before: {os.getloadavg()}")
    print(f"command: .venv/bin/python bench/profile_apply_cpu.py {' '.join(sys.argv[1:])}\n")
    h.run_on_embedded_server(lambda server: _main(args, server), prefix="atlas-profile-apply-cpu-")
    print(f"\nload average after: {os.getloadavg()}")


if __name__ == "__main__":
    main()
