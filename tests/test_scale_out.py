"""Issue 13, shown with real ``atlas run`` processes on one PostgreSQL (slow).

* Two processes share a mixed workload, all due at once (renewals, expiries, reminders, VPN
  convergence on two nodes, Crypto Pay top-ups whose webhooks reach *both* processes, a broadcast)
  plus live bot traffic that a webhook load balancer spreads over both: the invariant audit holds,
  one process leads the outbox and the other stands by, and the fleet's outbox offers the bot's
  rate (not twice it) and never a chat two messages in a second, with the Bot API emulator
  enforcing Telegram's 30 bulk messages/s per bot and 1/s per chat: it answers no 429 at all
  (docs/architecture.md, "The send budget of a fleet").
* SIGKILL of the process holding each singleton (the elected outbox sender, which is also the
  broadcast's one progress writer; long polling): the other takes over within 10 s; no broadcast
  copy is lost or doubled, and every numbered update is answered exactly once — including the
  ones the killed poller held, being handled and not yet answered, when it was killed.

The emulators run in this process; each Atlas process reaches them over HTTP, as it would reach
Telegram, Crypto Pay and the node agents.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest
import trio

from atlas.storage import Database, Tx
from atlas.testing.botapi import BotApiEmulator, SendKind, max_in_window
from atlas.testing.cryptopay_emulator import CryptoPayEmulator
from atlas.testing.node_emulator import NodeEmulator
from tests._fleet import (
    CRYPTOPAY_TOKEN,
    NODE_TOKEN,
    WEBHOOK_SECRET,
    AtlasProcess,
    atlas_env,
    start_atlas,
    wait_until,
    write_nodes_file,
)
from tests._vpn_support import free_ports
from tests._workload import ADMIN, Workload, check_workload, seed_broadcast, seed_workload

# Real-time bounds (takeover within 10 s): never beside the other real-time tests (xdist).
pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("realtime")]

HOOK = "/webhooks/telegram"
TAKEOVER = 10.0
GROUP = 100
QUIET = 1900
TALKERS = 40


@dataclass
class Fleet:
    """The emulators, the Atlas processes and their base URLs."""

    bot: BotApiEmulator
    nodes: dict[str, NodeEmulator]
    cryptopay: CryptoPayEmulator
    processes: list[AtlasProcess]
    urls: list[str]
    nursery: trio.Nursery
    env: Mapping[str, str]


@asynccontextmanager
async def fleet(
    database: str, tmp_path: Path, *, count: int, webhook: bool, enforce_limits: bool = True
) -> AsyncIterator[Fleet]:
    """The emulators served here and ``count`` ``atlas run`` processes on ``database``."""
    bot = BotApiEmulator(enforce_limits=enforce_limits, bot_username="atlas_fleet_bot")
    nodes = {"n1": NodeEmulator(NODE_TOKEN), "n2": NodeEmulator(NODE_TOKEN)}
    ports = free_ports(count)
    urls = [f"http://127.0.0.1:{port}" for port in ports]
    cryptopay = CryptoPayEmulator(CRYPTOPAY_TOKEN, webhook_url=f"{urls[0]}/webhooks/cryptopay")
    async with trio.open_nursery() as nursery:
        api = await nursery.start(bot.serve)
        agents = {name: await nursery.start(lambda task_status, n=node: n.run(task_status=task_status))
                  for name, node in nodes.items()}  # fmt: skip
        cryptopay_api = await nursery.start(cryptopay.run)
        common: dict[str, object] = {
            "bot_token": bot.token, "telegram_api_base": api, "admin_ids": [ADMIN],
            "nodes_file": str(write_nodes_file(tmp_path / "nodes.toml", agents)),
            "cryptopay_token": CRYPTOPAY_TOKEN, "cryptopay_base_url": cryptopay_api,
        }  # fmt: skip
        if webhook:
            common["telegram_webhook_secret"] = WEBHOOK_SECRET
        processes = []
        for index, port in enumerate(ports):
            own = {"http_port": str(port)}
            if webhook:
                own["telegram_webhook_url"] = f"{urls[index]}{HOOK}"
            env = atlas_env(database, **common, **own)
            processes.append(await start_atlas(nursery, f"atlas-{index + 1}", env))
        try:
            for process in processes:
                await process.wait_for_log("web server listening on", within=180)  # a start, when busy
            yield Fleet(bot, nodes, cryptopay, processes, urls, nursery, atlas_env(database, **common))
        finally:
            with trio.CancelScope(shield=True):
                for process in processes:
                    await process.stop()
            nursery.cancel_scope.cancel()


def _leads(lock: str) -> Callable[[dict[str, Any]], bool]:
    def match(event: dict[str, Any]) -> bool:
        text = str(event.get("event", ""))
        return lock in text and ("this process leads" in text or "this process polls" in text)

    return match


def _stands_by(lock: str) -> Callable[[dict[str, Any]], bool]:
    def match(event: dict[str, Any]) -> bool:
        text = str(event.get("event", ""))
        return lock in text and "standing by" in text

    return match


def _answered(bot: BotApiEmulator, chat_id: int) -> bool:
    return any(record.kind == "message" for record in bot.chat_log(chat_id))


async def _pending_outbox(tx: Tx) -> int:
    return int(await tx.fetchval("SELECT count(*) FROM outbox WHERE state = 'pending'"))


async def _broadcast_state(tx: Tx, *, broadcast_id: int) -> str:
    return str(await tx.fetchval("SELECT state FROM broadcasts WHERE id = $1", broadcast_id))


async def _pay_every_invoice(fleet_: Fleet, workload: Workload) -> set[int]:
    """Play every payer; each webhook goes to every process (a retry landing elsewhere)."""
    paid: set[int] = set()
    for invoice_id in workload.invoices.values():
        fleet_.cryptopay.mark_paid(invoice_id)
        paid.add(invoice_id)
    for url in fleet_.urls:
        fleet_.cryptopay.webhook_url = f"{url}/webhooks/cryptopay"
        async with trio.open_nursery() as nursery:
            limit = trio.CapacityLimiter(8)
            for invoice_id in sorted(paid):
                nursery.start_soon(_deliver, fleet_.cryptopay, invoice_id, limit)
    return paid


async def _deliver(cryptopay: CryptoPayEmulator, invoice_id: int, limit: trio.CapacityLimiter) -> None:
    async with limit:
        await cryptopay.deliver_webhook(invoice_id)


async def _settled(db: Database, fleet_: Fleet, workload: Workload, paid: set[int]) -> bool:
    if await db.run(_pending_outbox) or not workload.broadcast_id:
        return False
    if await db.run(_broadcast_state, broadcast_id=workload.broadcast_id) != "done":
        return False
    audit = await check_workload(db, workload, nodes=fleet_.nodes, bot=fleet_.bot, paid_invoices=paid,
                                 require_outbox_settled=True)  # fmt: skip
    return audit.ok and audit.counts["outbox:sent"] >= len(workload.users) // 10


def _classify_refusals(bot: BotApiEmulator, replies_to: set[int]) -> dict[str, int]:
    """Why each 429 was answered: which limit, to whom, and what filled the window before it.

    A refusal at ``t`` hit the per-chat limit when its chat had an accepted send in ``(t - 1, t]``
    and the global one when 30 accepted bulk sends were there; ``replies_to`` are the chats that get
    handler replies (every other chat gets outbox sends only). A global refusal is "bunched" when
    the outbox alone had 30 in the window (the sender's paced starts arrived closer than paced),
    "on top" when replies made up the difference.
    """
    accepted = [s for s in bot.send_stamps if s.accepted]
    found: dict[str, int] = {}
    for refused in (s for s in bot.send_stamps if not s.accepted):
        window = [s for s in accepted if refused.time - 1.0 < s.time <= refused.time]
        who = "reply" if refused.chat_id in replies_to else "outbox"
        causes = []
        if any(s.chat_id == refused.chat_id for s in window):
            before = max((s for s in window if s.chat_id == refused.chat_id), key=lambda s: s.time)
            after = "reply" if before.chat_id in replies_to else "outbox"
            causes.append(f"per-chat:{who}-after-{after}")
        bulk = [s for s in window if s.kind is SendKind.BULK]  # what the global limit counts
        if len(bulk) >= 30:
            outbox = sum(1 for s in bulk if s.chat_id not in replies_to)
            causes.append(f"global:{who}:{'bunched' if outbox >= 30 else 'on-top'}")
        for cause in causes or [f"other:{who}"]:
            found[cause] = found.get(cause, 0) + 1
    return found


async def test_two_processes_share_a_mixed_workload_within_the_bots_limits(
    db: Database, fresh_database: str, tmp_path: Path
) -> None:
    now = dt.datetime.now(dt.UTC)
    async with fleet(fresh_database, tmp_path, count=2, webhook=True) as f:
        workload = await seed_workload(db, now=now, group=GROUP, quiet=QUIET, nodes=f.nodes, bot=f.bot,
                                       cryptopay=f.cryptopay)  # fmt: skip
        await wait_until(lambda: f.bot.calls["setWebhook"] >= 2, 60, "both processes set the webhook")
        admin = f.bot.add_user(ADMIN, "Op")
        f.bot.route_webhook_to(f"{f.urls[0]}{HOOK}")
        admin.send_text("hello")  # one reply (``/start`` answers with two messages back to back)
        greeting = await admin.next_message(within=30)
        broadcast = await seed_broadcast(db, now=now, progress_message_id=greeting.message_id, text="Tonight")
        workload = replace(workload, broadcast_id=broadcast)
        # Live traffic while the backlog drains; the load balancer sends each update to the next process.
        talkers = [f.bot.user(uid) for uid in workload.quiet[:TALKERS]]
        for index, user in enumerate(talkers):
            f.bot.route_webhook_to(f"{f.urls[index % 2]}{HOOK}")
            user.send_text("how do I connect?")
            await trio.sleep(0.1)
        paid = await _pay_every_invoice(f, workload)
        await wait_until(lambda: _settled(db, f, workload, paid), 240, "the workload drained", every=1.0)
        await wait_until(lambda: all(_answered(f.bot, u.id) for u in talkers), 30, "live replies")
        audit = await check_workload(db, workload, nodes=f.nodes, bot=f.bot, paid_invoices=paid,
                                     require_outbox_settled=True)  # fmt: skip
        delivered_to = {a.url for a in f.bot.webhook_attempts if a.status == 200}
        leaders = [p.name for p in f.processes if p.saw(_leads("outbox_sender"))]
        lost = [p.name for p in f.processes
                if p.saw(lambda e: "outbox_sender" in str(e.get("event")) and "away" in str(e.get("event")))]
        standby = [p.name for p in f.processes if p.saw(_stands_by("outbox_sender"))]

    assert audit.ok, audit.violations[:10]
    assert audit.counts["renew:active"] == GROUP and audit.counts["renewal charges"] == GROUP
    assert audit.counts["expire:expired"] == GROUP and audit.counts["payment:applied"] == GROUP
    assert all(_answered(f.bot, uid) for uid in workload.broadcast_recipients), "every copy delivered"
    assert delivered_to == {f"{url}{HOOK}" for url in f.urls}, "both processes took webhook updates"
    # The outbox of the whole fleet (every chat but the live ones) offers the bot's rate, not N
    # times it (two senders each pacing to 30/s would offer 60/s), and never over it in any sliding
    # second of *arrivals* at the emulator — offered, not only accepted — even when a process of
    # this loaded machine stalls (the sender counts each send up to its answer: atlas.telegram.pacing).
    live = {user.id for user in talkers}
    outbox_sends = [stamp for stamp in f.bot.send_stamps if stamp.chat_id not in live | {ADMIN}]
    refusals = _classify_refusals(f.bot, live | {ADMIN})
    arrivals = sorted(s.time for s in outbox_sends)
    spans = sorted(b - a for a, b in zip(arrivals, arrivals[30:], strict=False))
    print(f"scale-out: {f.bot.served_429} 429s of {len(f.bot.send_stamps)} sends, {refusals}; outbox most "
          f"in 1 s {max_in_window(arrivals, 1.0)}, shortest span of 31 {spans[:1]}; leaders {leaders}, "
          f"lost the lock {lost}; {dict(audit.counts)}")
    assert len(leaders) == 1 and len(standby) == 1, (leaders, standby)  # one sender, all along
    assert f.bot.served_429 == 0, refusals
    assert max_in_window(arrivals, 1.0) <= 30
    per_chat: dict[int | str | None, list[float]] = {}
    for stamp in f.bot.send_stamps:
        per_chat.setdefault(stamp.chat_id, []).append(stamp.time)
    worst_chat = max(max_in_window(times, 1.0) for times in per_chat.values())
    assert worst_chat <= 1, "no chat, live or not, ever got two messages within a second"
    assert f.bot.max_per_chat_rate(1.0) <= 1
    assert f.bot.max_global_rate(1.0) <= 30  # the bulk sends, as Telegram counts them


# ----------------------------------------------------------------------------- singletons


async def _outbox_rows(tx: Tx, *, broadcast_id: int) -> dict[str, int]:
    rows = await tx.fetch(
        "SELECT CASE WHEN state = 'pending' AND lease_owner IS NOT NULL THEN 'leased' ELSE state END AS s, "
        "count(*) AS n FROM outbox WHERE broadcast_id = $1 GROUP BY 1 LIMIT 10",
        broadcast_id,
    )
    return {str(row["s"]): int(row["n"]) for row in rows}


def _holder(processes: list[AtlasProcess], lock: str) -> AtlasProcess | None:
    """The live process that logged taking ``lock`` last (the others stand by)."""
    live = [p for p in processes if p.alive and p.saw(_leads(lock))]
    return live[-1] if live else None


async def _talk(bot: BotApiEmulator, users: list[int], sent: dict[int, float], every: float = 0.1) -> None:
    """Each user sends one numbered message, one per ``every`` s; ``sent`` gets the time of each."""
    for number, uid in enumerate(users):
        bot.user(uid).send_text(f"message number {number}")
        sent[uid] = trio.current_time()
        await trio.sleep(every)


async def test_sigkill_of_each_singleton_holder_hands_over_within_10_s(
    db: Database, fresh_database: str, tmp_path: Path
) -> None:
    """Long polling and the elected outbox sender (the broadcast's one progress writer): each
    holder is SIGKILLed in turn while a broadcast is going out and users are talking."""
    now = dt.datetime.now(dt.UTC)
    # Limits measured, not enforced: a reply refused with 429 is another matter (the first test).
    async with fleet(fresh_database, tmp_path, count=2, webhook=False, enforce_limits=False) as f:
        workload = await seed_workload(db, now=now, group=60, quiet=120, nodes=f.nodes, bot=f.bot,
                                       cryptopay=f.cryptopay)  # fmt: skip
        admin = f.bot.add_user(ADMIN, "Op")
        admin.send_text("hello")
        greeting = await admin.next_message(within=60)
        recipients = workload.broadcast_recipients
        broadcast = await seed_broadcast(db, now=now, progress_message_id=greeting.message_id, text="Copy")
        talkers = list(workload.quiet)
        sent: dict[int, float] = {}
        takeovers: dict[str, float] = {}
        kill_times: list[float] = []
        processes = list(f.processes)
        for turn, lock in enumerate(("outbox_sender", "polling lock")):
            holder = await wait_until(lambda lk=lock: _holder(processes, lk), 30, f"a holder of {lock}")
            if turn == 0:  # mid-broadcast
                await wait_until(lambda: sum(_answered(f.bot, u) for u in recipients) >= 20, 60, "copies")
            else:  # a replacement joins first, so that someone stands by
                processes.append(await start_atlas(f.nursery, "atlas-3", f.env))
                await processes[-1].wait_for_log("standing by", within=180)  # a start, on a busy machine
            chunk = talkers[turn * 60 : (turn + 1) * 60]
            async with trio.open_nursery() as talking:
                if turn == 0:
                    talking.start_soon(_talk, f.bot, chunk, sent)
                    await trio.sleep(2.0)
                else:
                    # The poller's 60 updates arrive at once, and every first reply is refused with
                    # a 429 (retry after 8 s), which the handler waits out: killed once all 60 are
                    # being handled, none answered yet. Confirmed on hand-over (main before issue
                    # 13), all 60 were lost.
                    refusals = [f.bot.inject("sendMessage", uid, 429, retry_after=8) for uid in chunk]
                    talking.start_soon(_talk, f.bot, chunk, sent, 0.01)
                    await wait_until(lambda rs=refusals: all(r.hits for r in rs), 30, "all in hand", 0.05)
                    assert not any(_answered(f.bot, uid) for uid in chunk)
                holder.kill()
                killed_at = trio.current_time()
                kill_times.append(killed_at)
                await holder.process.wait()
                for lk in ("outbox_sender", "polling lock"):
                    successor = await wait_until(lambda lk=lk: _holder(processes, lk), 20, f"a new {lk}")
                    assert successor is not holder
                takeovers[lock] = trio.current_time() - killed_at
        after_kills = [uid for uid, at in sent.items() if any(at > k for k in kill_times)]
        await wait_until(lambda: all(_answered(f.bot, u) for u in after_kills), 60, "answers after a kill")
        await trio.sleep(5.0)  # the rest gets its chance too
        await wait_until(lambda: _broadcast_settled(db, broadcast), 60, "the broadcast's rows settled")
        at_kill = await db.run(_outbox_rows, broadcast_id=broadcast)
        # What is still leased now belongs to the killed senders (the live one is idle). Their
        # leases would run out in 120 s; run them out now (nobody alive holds them) and watch the
        # rows come back: sent by the new leader, or ``unknown`` if their send had started.
        await db.run(_run_out_leases, now=dt.datetime.now(dt.UTC))
        await wait_until(lambda: _broadcast_finished(db, broadcast), 60, "the copies of the dead senders")
        rows = await db.run(_outbox_rows, broadcast_id=broadcast)
        replies = {uid: [r for r in f.bot.chat_log(uid) if r.kind == "message"] for uid in sent}
        copies = {uid: [r for r in f.bot.chat_log(uid) if r.kind == "message" and r.text == "Copy"]
                  for uid in (*recipients, ADMIN)}  # fmt: skip

    print(f"singletons: takeover after SIGKILL {takeovers}; broadcast rows at the kills' end {at_kill}, "
          f"after their leases ran out {rows}")  # fmt: skip
    assert all(seconds <= TAKEOVER for seconds in takeovers.values()), takeovers
    lost = sorted(uid for uid, messages in replies.items() if not messages)
    doubled = sorted(uid for uid, messages in replies.items() if len(messages) > 1)
    print(f"singletons: {len(replies)} numbered updates, lost {lost}, doubled {doubled}")
    assert not doubled, "no numbered update answered twice"
    assert not lost, "every numbered update answered, those the killed poller held too"
    assert all(len(messages) <= 1 for messages in copies.values()), "no broadcast copy doubled"
    # Nothing lost: every copy's row ended ``sent`` (and it arrived) or ``unknown`` (its send was in
    # the air at the kill: it arrived at most once, or not at all — never resent).
    delivered = sum(1 for messages in copies.values() if messages)
    sent, unknown = rows.get("sent", 0), rows.get("unknown", 0)
    assert rows.get("leased", 0) == rows.get("pending", 0) == 0, rows
    assert sent + unknown == len(copies), rows
    assert sent <= delivered <= sent + unknown, (delivered, rows)
    assert unknown <= 50, rows


async def _run_out_leases(tx: Tx, *, now: dt.datetime) -> None:
    await tx.execute(
        "UPDATE outbox SET leased_until = $1 WHERE state = 'pending' AND leased_until > $1",
        now - dt.timedelta(seconds=1),
    )


async def _broadcast_finished(db: Database, broadcast_id: int) -> bool:
    rows = await db.run(_outbox_rows, broadcast_id=broadcast_id)
    return rows.get("pending", 0) == rows.get("leased", 0) == 0


async def _broadcast_settled(db: Database, broadcast_id: int) -> bool:
    rows = await db.run(_outbox_rows, broadcast_id=broadcast_id)
    return rows.get("pending", 0) == 0
