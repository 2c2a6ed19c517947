"""Issue 10: SIGKILL of ``atlas run`` at random moments of a demo-like workload, 20 times (slow).

One real ``atlas run`` at a time works a seeded workload (renewals, expiries, reminders, VPN
convergence, Crypto Pay top-ups paid while it runs, a broadcast, users talking over long polling)
and is SIGKILLed at a random moment — while it starts, migrates, claims, sends, records — then
started again. After the 20th kill one last process runs until the work is done, and the audit
must hold: every balance equals its ledger, each paid invoice applied once, each renewal once per
period, every active key present and every expired key absent on the node, every outbox row
delivered or failed with a reason, no broadcast copy doubled.

Leases outlive a killed holder by design (an outbox claim holds its rows 120 s, then they come
back). Waiting that out would add two minutes, so before the last process starts the test runs
the leases of the dead processes out (``leased_until`` / ``lease_until`` set to the past): every
holder is dead at that point, so this is exactly what the passing of time would do.
"""

from __future__ import annotations

import datetime as dt
import random
from pathlib import Path

import pytest
import trio

from atlas.storage import Database, Tx
from atlas.testing.botapi import BotApiEmulator
from atlas.testing.cryptopay_emulator import CryptoPayEmulator
from atlas.testing.node_emulator import NodeEmulator
from tests._fleet import CRYPTOPAY_TOKEN, NODE_TOKEN, atlas_env, start_atlas, wait_until, write_nodes_file
from tests._vpn_support import free_ports
from tests._workload import ADMIN, Workload, check_workload, seed_broadcast, seed_workload

pytestmark = pytest.mark.slow

KILLS = 20
SEED = 20261201


async def _run_out_dead_leases(tx: Tx, *, now: dt.datetime) -> None:
    past = now - dt.timedelta(seconds=1)
    await tx.execute("UPDATE outbox SET leased_until = $1 WHERE leased_until > $1", past)
    await tx.execute("UPDATE vpn_key_nodes SET lease_until = $1 WHERE lease_until > $1", past)
    await tx.execute("UPDATE vpn_node_leases SET lease_until = $1 WHERE lease_until > $1", past)


async def _unsettled(tx: Tx) -> int:
    return int(
        await tx.fetchval(
            "SELECT (SELECT count(*) FROM outbox WHERE state = 'pending') + "
            "(SELECT count(*) FROM broadcasts WHERE state <> 'done')"
        )
    )


async def _paid_or_pending_deliveries(cryptopay: CryptoPayEmulator, invoices: list[int], url: str) -> None:
    """Pay ``invoices`` and send their webhooks to ``url`` (the process may die under them)."""
    cryptopay.webhook_url = f"{url}/webhooks/cryptopay"
    for invoice_id in invoices:
        cryptopay.mark_paid(invoice_id)
    for invoice_id in invoices:
        await cryptopay.deliver_webhook(invoice_id)


async def test_twenty_sigkills_during_a_demo_like_workload_leave_everything_whole(
    db: Database, fresh_database: str, tmp_path: Path
) -> None:
    rng = random.Random(SEED)
    now = dt.datetime.now(dt.UTC)
    bot = BotApiEmulator(bot_username="atlas_kill_bot")
    node = NodeEmulator(NODE_TOKEN)
    (port,) = free_ports(1)
    url = f"http://127.0.0.1:{port}"
    cryptopay = CryptoPayEmulator(CRYPTOPAY_TOKEN, webhook_max_attempts=2, webhook_backoff=0.2)
    kills: list[float] = []
    async with trio.open_nursery() as nursery:
        api = await nursery.start(bot.serve)
        agent = await nursery.start(lambda task_status: node.run(task_status=task_status))
        cryptopay_api = await nursery.start(cryptopay.run)
        env = atlas_env(
            fresh_database, bot_token=bot.token, telegram_api_base=api, admin_ids=[ADMIN],
            nodes_file=str(write_nodes_file(tmp_path / "nodes.toml", {"n1": agent})),
            cryptopay_token=CRYPTOPAY_TOKEN, cryptopay_base_url=cryptopay_api, http_port=str(port),
        )  # fmt: skip
        workload = await seed_workload(db, now=now, group=40, quiet=60, nodes={"n1": node}, bot=bot,
                                       cryptopay=cryptopay)  # fmt: skip
        admin = bot.add_user(ADMIN, "Op")
        admin.send_text("hello")
        invoices = sorted(workload.invoices.values())
        paid: list[int] = []
        broadcast: int | None = None
        for life in range(KILLS):
            process = await start_atlas(nursery, f"life-{life}", env)
            lifetime = rng.uniform(1.0, 7.0)
            with trio.move_on_after(lifetime):
                await process.wait_for_log("web server listening on", within=lifetime)
                if broadcast is None:
                    greeting = await admin.next_message(within=lifetime)
                    broadcast = await seed_broadcast(db, now=now, progress_message_id=greeting.message_id,
                                                     text="Scheduled maintenance")  # fmt: skip
                batch = invoices[len(paid) : len(paid) + 4]
                paid += batch
                for uid in workload.quiet[life * 3 : (life + 1) * 3]:
                    bot.user(uid).send_text(f"hello from life {life}")
                await _paid_or_pending_deliveries(cryptopay, batch, url)
                await trio.sleep_forever()
            process.kill()
            await process.process.wait()
            kills.append(lifetime)
        await db.run(_run_out_dead_leases, now=dt.datetime.now(dt.UTC))
        last = await start_atlas(nursery, "last", env)
        await last.wait_for_log("web server listening on", within=180)  # a start, when busy
        if broadcast is None:
            greeting = await admin.next_message(within=60)
            broadcast = await seed_broadcast(
                db, now=now, progress_message_id=greeting.message_id, text="Late"
            )
        await _paid_or_pending_deliveries(cryptopay, invoices[len(paid) :], url)
        await wait_until(lambda: _done(db, workload, node, bot), 120, "the work is done", every=1.0)
        audit = await check_workload(
            db, workload, nodes={"n1": node}, bot=bot, paid_invoices=invoices, require_outbox_settled=True,
            allow_doubled_notices=True,
        )  # fmt: skip
        await last.stop()
        nursery.cancel_scope.cancel()

    assert len(kills) == KILLS
    assert audit.ok, audit.violations[:10]
    assert audit.counts["renewal charges"] == 40 and audit.counts["payment:applied"] == 40
    assert audit.counts["expire:expired"] == 40
    for uid in workload.broadcast_recipients:
        copies = [
            r
            for r in bot.chat_log(uid)
            if r.kind == "message" and r.text in ("Scheduled maintenance", "Late")
        ]
        assert len(copies) <= 1, f"broadcast copy doubled in chat {uid}"
    print(f"kill workload: {KILLS} kills after {[round(k, 1) for k in kills]} s; {dict(audit.counts)}")


async def _done(db: Database, workload: Workload, node: NodeEmulator, bot: BotApiEmulator) -> bool:
    if await db.run(_unsettled):
        return False
    audit = await check_workload(
        db, workload, nodes={"n1": node}, bot=bot, paid_invoices=workload.invoices.values(),
        require_outbox_settled=True, allow_doubled_notices=True,
    )  # fmt: skip
    return audit.ok
