"""The predecessor's freeze cannot recur: a connection budget of 4, every actor busy, the VPN node
answering in 5 s — Telegram updates are still answered quickly and no actor stalls.

The predecessor froze every ~600 s: its workers held pool connections across slow HTTP calls to the
nodes until the bot's handlers found no connection left. Here the whole tree runs as ``atlas run``
builds it (real PostgreSQL, the Bot API emulator, a node emulator that takes 5 s per request), with
thousands of due rows for every worker, while users talk to the bot.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from pathlib import Path

import pytest
import trio
import trio.lowlevel

from atlas.runtime.services import Services
from atlas.storage import BudgetStatistics, Tx
from atlas.supervision import Supervisor
from atlas.testing.botapi import BotApiEmulator
from atlas.testing.node_emulator import NodeEmulator
from tests._fault_support import seed_due_work
from tests._running_tree import running_tree

NODE_TOKEN = "freeze-test-node-token-0123456789"
ROWS = 1500  # per kind of due work
USERS = 30
ROUNDS = 3


@pytest.mark.slow
@pytest.mark.alone  # p99 < 1 s of real time: no other test may share the 2 cores meanwhile
async def test_updates_are_answered_while_every_actor_is_busy_and_the_node_is_slow(
    bridge: None, fresh_database: str, tmp_path: Path
) -> None:
    emulator = BotApiEmulator(bot_username="atlas_freeze_bot")
    node = NodeEmulator(NODE_TOKEN, latency=5.0)
    async with trio.open_nursery() as nodes:
        node_url = await nodes.start(node.run)
        nodes_file = tmp_path / "nodes.toml"
        nodes_file.write_text(
            f'[[nodes]]\nname = "slow-1"\nagent_url = "{node_url}"\ntoken = "{NODE_TOKEN}"\n'
            'public_host = "127.0.0.1"\nport = 443\nsecurity = "none"\n'
        )
        async with running_tree(
            fresh_database, emulator=emulator, db_pool_size=4, nodes_file=nodes_file,
            seed=2611,  # every batch worker's seeded first tick falls within 10 s
        ) as tree:  # fmt: skip
            services, root = tree.services, tree.root
            summary = await _converse_while_busy(services, root, emulator)
        nodes.cancel_scope.cancel()
    latencies, budget_at_end = summary.latencies, summary.budget_at_end
    expired, renewed, delivered = summary.expired, summary.renewed, summary.delivered
    children, busy_budget = summary.children, summary.busy_budget
    latencies.sort()
    p99 = latencies[int(len(latencies) * 0.99) - 1]
    assert len(latencies) == USERS * ROUNDS * 2
    assert p99 < 1.0, (
        f"p50 {statistics.median(latencies):.3f} s, p99 {p99:.3f} s; budget max wait "
        f"{budget_at_end.max_wait:.3f} s, exhausted {budget_at_end.exhausted}; longest step "
        f"{services.instrument.longest:.3f} s in {services.instrument.longest_task}"
    )
    assert services.crash_counts.get("stall", 0) == 0
    assert services.crash_counts.get("gave_up", 0) == 0
    assert all(state == "running" for state in children.values()), children
    # Every kind of worker really was busy while the users were served.
    assert busy_budget.total == 4
    assert expired > 0 and renewed > 0 and delivered > 0
    assert node.max_concurrent >= 2  # the controller had several 5-second calls in flight


@dataclass
class BusySummary:
    """What the users met while the workers were busy, and what the workers got done meanwhile."""

    latencies: list[float]
    expired: int
    renewed: int
    delivered: int
    children: dict[str, str]
    budget_at_end: BudgetStatistics
    busy_budget: BudgetStatistics


async def _converse_while_busy(
    services: Services, root: Supervisor, emulator: BotApiEmulator
) -> BusySummary:
    """Seed the backlog, wait until every worker is on it, then let the users talk; what happened."""
    db = services.require_db()
    await db.run(seed_due_work, now=services.clock.now(), rows=ROWS, with_keys=True)

    latencies: list[float] = []

    async def converse(user_id: int) -> None:
        user = emulator.add_user(user_id, f"U{user_id}", language_code="en")
        for _ in range(ROUNDS):
            sent = trio.current_time()
            user.send_command("/start")
            await user.next_record(within=30)
            latencies.append(trio.current_time() - sent)
            await trio.sleep(0.3)
            menu = user.chat_log()[-1]
            while not menu.inline_buttons():
                menu = await user.next_record(within=30)
            user.skip_received()
            sent = trio.current_time()
            user.press(menu.button_texts()[0])
            await user.next_record(within=30)
            latencies.append(trio.current_time() - sent)
            await trio.sleep(0.3)

    with trio.fail_after(30):  # every worker has started on its backlog
        busy = ("renewal", "expiry", "trial_notices", "reminders", "vpn_controller", "outbox_sender")
        stats = [services.actors[name].statistics for name in busy]
        while not all(s().ticks >= 1 or s().handling is not None for s in stats):  # noqa: ASYNC110
            await trio.sleep(0.1)
    busy_budget = db.budget_statistics()
    async with trio.open_nursery() as users:
        for i in range(USERS):
            users.start_soon(converse, 500 + i)
            await trio.sleep(0.1)

    async def progress(tx: Tx) -> tuple[int, int, int]:
        row = await tx.fetchrow(
            """
            SELECT (SELECT count(*) FROM subscriptions WHERE status = 'expired') AS expired,
                   (SELECT count(*) FROM subscriptions WHERE last_auto_renewal_at IS NOT NULL) AS renewed,
                   (SELECT count(*) FROM outbox WHERE state <> 'pending') AS delivered
            """
        )
        assert row is not None
        return int(row["expired"]), int(row["renewed"]), int(row["delivered"])

    expired, renewed, delivered = await db.run(progress)
    budget_at_end = db.budget_statistics()
    children = {c.path: c.state.value for c in root.statistics().children}
    return BusySummary(latencies, expired, renewed, delivered, children, budget_at_end, busy_budget)
