"""The invariant check at the end of a run: :func:`atlas.testing.invariants.audit` over the
database, with what the outside world saw: the node's users, every message the Bot API emulator
delivered, and the charges the two payment emulators made.
"""

from __future__ import annotations

import datetime as dt

from atlas.demo.world import World
from atlas.storage import Database, Tx
from atlas.testing.invariants import AuditReport, audit, deliveries_from, node_keys_of
from atlas.vpn import Fleet


def provider_charges(world: World) -> dict[str, set[str]]:
    """What each provider says it was paid: Crypto Pay's paid invoices, Telegram's Stars charges."""
    return {
        "cryptopay": {
            str(invoice.invoice_id) for invoice in world.cryptopay.invoices() if invoice.status == "paid"
        },
        "stars": set(world.emulator.charges),
    }


async def audit_world(db: Database, world: World, now: dt.datetime) -> tuple[AuditReport, int]:
    """Audit the shop; return the report and how many users the node holds."""
    fleet = Fleet([world.node.config])
    try:
        on_nodes = await node_keys_of(fleet)
    finally:
        await fleet.aclose()
    records = [record for user in world.emulator.users.values() for record in user.chat_log()]
    report = await audit(
        db,
        now=now,
        node_keys=on_nodes,
        deliveries=deliveries_from(records),
        provider_charges=provider_charges(world),
        renew_window=dt.timedelta(hours=world.settings.renew_window_hours),
    )
    return report, sum(len(names) for names in on_nodes.values())


async def corrupt_one_balance(tx: Tx) -> None:
    """For the exit-code test only (``--corrupt-balance-for-test``): one balance off its ledger."""
    await tx.execute(
        "UPDATE users SET balance_minor = balance_minor + 1 WHERE id = (SELECT min(id) FROM users)"
    )
