"""The invariant check at the end of a run: the lead's audit over the frozen database, the node's
keys and every message the Bot API emulator delivered.
"""

from __future__ import annotations

import datetime as dt

from atlas.demo.world import World
from atlas.demo.vpn_node import node_keys
from atlas.storage import Database, Tx
from atlas.testing.botapi.records import NEW_MESSAGE_KINDS
from atlas.testing.invariants import AuditReport, Delivery, audit


def deliveries(world: World) -> list[Delivery]:
    """Every new message the bot got through to a user, as the emulator recorded it."""
    return [
        Delivery(record.chat_id, record.text or "")
        for user in world.emulator.users.values()
        for record in user.chat_log()
        if record.kind in NEW_MESSAGE_KINDS
    ]


async def audit_world(db: Database, world: World, now: dt.datetime) -> tuple[AuditReport, int]:
    """Audit the shop; return the report and how many keys the node holds."""
    keys = await node_keys(world.node.config)
    report = await audit(db, now=now, node_keys={world.node.config.name: keys}, deliveries=deliveries(world))
    return report, len(keys)


async def corrupt_one_balance(tx: Tx) -> None:
    """For the exit-code test only (``--corrupt-balance-for-test``): one balance off its ledger."""
    await tx.execute("UPDATE users SET balance_minor = balance_minor + 1 WHERE id = (SELECT min(id) FROM users)")
