"""Benchmark: 1, 2 and 3 ``atlas run`` processes on one PostgreSQL draining the same workload.

Each run gets a fresh database (a copy of a migrated template) seeded with the workload of
``tests/_workload.py`` — ``--group`` users each due for a renewal, an expiry (key off the node), a
reminder, and VPN convergence (key not on the node yet), plus ``--quiet`` users with nothing due —
and a broadcast to the expired-and-converging users, all due at once. The VPN node is a node
emulator in a process of its own (``bench/_scale_node.py``); the Bot API emulator runs in this
harness process and enforces Telegram's 30 messages/s per bot and 1/s per chat. Then ``K``
``atlas run`` processes start (seeded so that their batch workers' first ticks are 1.5–8 s after
start, see ``tests/_fleet.py``), and the harness polls the database every 0.1 s (times count
from the spawn of the processes):

* per phase (renewal, expiry, reminders written, VPN: converge keys put and expired keys removed,
  broadcast materialised): the time from the processes being up until the phase is complete, and
  rows per second from its first row to its last;
* the outbox: messages sent per second over the first 20 s of sending and the busiest second,
  against the limit
  (the drain itself is bound by Telegram's limit, not by the processes: the point of issue 13).

Runs are interleaved (1, 2, 3, 1, 2, 3, ...) and medians reported:

    PYTHONPATH=$PWD .venv/bin/python bench/bench_scale_out.py [--group 1000] [--quiet 6000] [--repeats 3]
"""

from __future__ import annotations

import argparse
import datetime as dt
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import trio

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from atlas.storage import Database, DatabaseSettings, Tx, migrate  # noqa: E402
from atlas.testing.botapi import BotApiEmulator, max_in_window  # noqa: E402
from bench._harness import embedded_server, load_line, machine_line  # noqa: E402
from tests._fleet import NODE_TOKEN, AtlasProcess, atlas_env, start_atlas, write_nodes_file  # noqa: E402
from tests._workload import GROUPS, key_uuid, seed_rows  # noqa: E402

TEMPLATE = "bench_scale_template"
PHASES = ("renewal", "expiry", "reminders", "vpn", "broadcast")
RUN_TIMEOUT = 240.0
SENDS_WINDOW = 20.0
"""Seconds of sending measured from the first send (the drain is rate-bound, not waited for)."""


async def _admin(dsn: str, *statements: str) -> None:
    db = await Database.open(DatabaseSettings(dsn=dsn, pool_size=1))
    try:
        for statement in statements:
            await db._call(_execute, db, statement)
    finally:
        await db.close()


async def _execute(db: Database, statement: str) -> None:
    # CREATE/DROP DATABASE cannot run in a transaction, hence not db.run (set-up only).
    async with db._pool.acquire() as conn:
        await conn.execute(statement)


def _dsn(base: str, name: str) -> str:
    head, _, query = base.partition("?")
    return f"{head.rsplit('/', 1)[0]}/{name}" + (f"?{query}" if query else "")


async def _progress(tx: Tx, *, renew: list[int], expire: list[int], remind: list[int], converge: list[int]
                    ) -> dict[str, int]:  # fmt: skip
    row = await tx.fetchrow(
        """
        SELECT
          (SELECT count(*) FROM ledger WHERE kind = 'renewal' AND user_id = ANY($1::bigint[])) AS renewal,
          (SELECT count(*) FROM subscriptions
           WHERE status = 'expired' AND user_id = ANY($2::bigint[])) AS expiry,
          (SELECT count(*) FROM outbox
           WHERE kind LIKE 'reminder%' AND chat_id = ANY($3::bigint[])) AS reminders,
          (SELECT count(*) FROM vpn_key_nodes n JOIN vpn_keys k ON k.id = n.key_id
             JOIN subscriptions s ON s.id = k.subscription_id
           WHERE (s.user_id = ANY($4::bigint[]) AND n.applied = 'present')
              OR (s.user_id = ANY($2::bigint[]) AND n.applied = 'absent')) AS vpn,
          (SELECT coalesce(max(recipients), 0) FROM broadcasts
           WHERE state IN ('sending', 'done')) AS broadcast,
          (SELECT count(*) FROM outbox WHERE state = 'sent') AS sent
        """,
        renew, expire, remind, converge,
    )  # fmt: skip
    return {key: int(row[key]) for key in (*PHASES, "sent")}


async def _seed_broadcast(tx: Tx, *, now: dt.datetime) -> None:
    await tx.execute(
        "INSERT INTO broadcasts (created_by, segment, text, state, created_at, confirmed_at) "
        "VALUES (900, 'never_paid', 'Maintenance tonight', 'confirmed', $1, $1)",
        now,
    )


async def one_run(
    server_dsn: str, processes: int, group: int, quiet: int, tmp: Path, index: int
) -> dict[str, Any]:
    """Seed a fresh database, start ``processes`` ``atlas run``; return the times and rates."""
    name = f"bench_scale_{index}"
    await _admin(_dsn(server_dsn, "postgres"), f"DROP DATABASE IF EXISTS {name} WITH (FORCE)",
                 f"CREATE DATABASE {name} TEMPLATE {TEMPLATE}")  # fmt: skip
    dsn = _dsn(server_dsn, name)
    now = dt.datetime.now(dt.UTC)
    first = 10_000
    groups = {g: list(range(first + i * group, first + (i + 1) * group)) for i, g in enumerate(GROUPS)}
    groups.pop("topup")  # no Crypto Pay in the benchmark: its users are quiet ones
    quiet_ids = list(range(first + len(GROUPS) * group, first + len(GROUPS) * group + quiet))
    db = await Database.open(DatabaseSettings(dsn=dsn, pool_size=2, unit_timeout=300, statement_timeout=300))
    try:
        await db.run(seed_rows, groups={**groups, "topup": []}, quiet=quiet_ids, now=now, nodes=["n1"])
        await db.run(_seed_broadcast, now=now)
    finally:
        await db.close()
    keys = tmp / f"keys-{index}.txt"
    on_node = [*quiet_ids, *(u for g, ids in groups.items() if g != "converge" for u in ids)]
    await trio.Path(keys).write_text("\n".join(key_uuid(u) for u in on_node))
    node = subprocess.Popen(  # noqa: ASYNC220 - set-up, before anything is measured
        [sys.executable, str(REPO / "bench" / "_scale_node.py"), NODE_TOKEN, str(keys)],
        stdout=subprocess.PIPE,
        text=True,
    )
    bot = BotApiEmulator(enforce_limits=True)
    for uid in [*quiet_ids, *(u for ids in groups.values() for u in ids), 900]:
        bot.add_user(uid, "Bench")
    result: dict[str, Any] = {"processes": processes}
    try:
        assert node.stdout is not None
        agent = node.stdout.readline().strip()
        async with trio.open_nursery() as nursery:
            api = await nursery.start(bot.serve)
            nodes_file = write_nodes_file(tmp / f"nodes-{index}.toml", {"n1": agent})
            env = atlas_env(
                dsn, bot_token=bot.token, telegram_api_base=api, admin_ids=[900], nodes_file=str(nodes_file)
            )
            up = trio.current_time()  # times count from the spawn: start-up is part of adding a process
            fleet: list[AtlasProcess] = [
                await start_atlas(nursery, f"bench-{i}", env) for i in range(processes)
            ]
            for process in fleet:
                await process.wait_for_log("web server listening on", within=120)
            result["up_s"] = trio.current_time() - up
            targets = {"renewal": group, "expiry": group, "reminders": group, "vpn": 2 * group,
                       "broadcast": 2 * group}  # fmt: skip
            first_seen: dict[str, float] = {}
            done: dict[str, float] = {}
            db = await Database.open(DatabaseSettings(dsn=dsn, pool_size=2))
            try:
                while trio.current_time() - up < RUN_TIMEOUT:
                    progress = await db.run(_progress, renew=groups["renew"], expire=groups["expire"],
                                            remind=groups["remind"], converge=groups["converge"])  # fmt: skip
                    at = trio.current_time() - up
                    for phase in PHASES:
                        if progress[phase] and phase not in first_seen:
                            first_seen[phase] = at
                        if progress[phase] >= targets[phase] and phase not in done:
                            done[phase] = at
                    first_send = next((s.time - up for s in bot.send_stamps if s.accepted), None)
                    sending_measured = first_send is not None and at >= first_send + SENDS_WINDOW
                    if len(done) == len(PHASES) and sending_measured:
                        break
                    await trio.sleep(0.1)
            finally:
                await db.close()
            for process in fleet:
                await process.stop()
            nursery.cancel_scope.cancel()
        for phase in PHASES:
            end = done.get(phase, float("nan"))
            span = end - first_seen.get(phase, float("nan"))
            result[f"{phase}_s"] = end
            result[f"{phase}_rows_per_s"] = targets[phase] / span if span > 0 else float("nan")
        accepted = [s.time for s in bot.send_stamps if s.accepted]
        start = accepted[0] if accepted else 0.0
        stamps = [t for t in accepted if t - start <= SENDS_WINDOW]
        result["sends_per_s"] = len(stamps) / SENDS_WINDOW
        result["busiest_second"] = max_in_window(stamps, 1.0)
        result["served_429"] = bot.served_429
    finally:
        node.terminate()
        node.wait(timeout=30)
        await _admin(_dsn(server_dsn, "postgres"), f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
    return result


async def harness(group: int, quiet: int, repeats: int, counts: list[int]) -> None:
    """Interleaved runs; prints one line per run, then the medians as a Markdown table."""
    print(machine_line(), flush=True)
    with tempfile.TemporaryDirectory(prefix="atlas-bench-scale-") as tmp_name:
        tmp = Path(tmp_name)
        await trio.Path(tmp).chmod(0o755)  # the embedded server (atlas-pg when root) reaches its data
        server = embedded_server(tmp / "pg")
        base = await server.start()
        try:
            await _admin(
                _dsn(base, "postgres"), f"DROP DATABASE IF EXISTS {TEMPLATE}", f"CREATE DATABASE {TEMPLATE}"
            )
            db = await Database.open(DatabaseSettings(dsn=_dsn(base, TEMPLATE), pool_size=2))
            try:
                await migrate(db, now=dt.datetime.now(dt.UTC))
                from atlas.runtime.services import load_catalog
                from atlas.runtime.settings import load_settings
                from atlas.storage.units.plans import sync_plans

                await db.run(sync_plans, catalog=load_catalog(load_settings()), now=dt.datetime.now(dt.UTC))
            finally:
                await db.close()
            runs: list[dict[str, Any]] = []
            index = 0
            for _ in range(repeats):
                for processes in counts:
                    result = await one_run(base, processes, group, quiet, tmp, index)
                    index += 1
                    runs.append(result)
                    print(f"run {index}: {result} ({load_line()})", flush=True)
        finally:
            await server.stop()
    print(f"\n{load_line()}\n")
    fields = ["up_s", *(f"{p}_s" for p in PHASES)] + [f"{p}_rows_per_s" for p in PHASES]
    fields += ["sends_per_s", "busiest_second", "served_429"]
    print("| measure | " + " | ".join(f"{k} process{'es' if k > 1 else ''}" for k in counts) + " |")
    print("|---|" + "---|" * len(counts))
    for name in fields:
        cells = []
        for k in counts:
            values = [r[name] for r in runs if r["processes"] == k and r[name] == r[name]]
            cells.append(f"{statistics.median(values):.1f}" if values else "n/a")
        print(f"| {name} | " + " | ".join(cells) + " |")


def main() -> None:
    """Parse the arguments and run the harness."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--group", type=int, default=1000)
    parser.add_argument("--quiet", type=int, default=6000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--processes", default="1,2,3")
    args = parser.parse_args()
    trio.run(harness, args.group, args.quiet, args.repeats, [int(k) for k in args.processes.split(",")])


if __name__ == "__main__":
    main()
