"""The whole-system audit (atlas.testing.invariants) finds each kind of broken invariant, and only those.

A shop built through the real units of work passes; then each test breaks one rule the way a bug
would (a balance written behind the ledger's back, a key lost on a node, a broadcast copy seen
twice, a charge the database never applied) and the audit must name it.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from atlas.storage import Database, Tx
from atlas.storage.units import buy_plan_from_balance, enqueue_message
from atlas.testing.invariants import AuditReport, Delivery, audit
from tests._money_support import NOW, RUB, add_user, rows, setup_catalog, topup, topup_intent

LATER = NOW + dt.timedelta(hours=1)


async def _shop(db: Database) -> dict[str, Any]:
    """Two users: one topped up and bought a plan (a live key), one with a pending invoice."""
    await setup_catalog(db)
    await add_user(db, 1)
    await add_user(db, 2)
    paid = await topup(db, 1, 20_000)
    await db.run(
        buy_plan_from_balance, user_id=1, plan_code="m1", currency=RUB, promo_code=None,
        idempotency_key="buy-1", now=NOW,
    )
    await topup_intent(db, 2, 5_000)
    keys = await rows(db, "SELECT uuid::text AS name FROM vpn_keys WHERE desired = 'present' LIMIT 10")
    assert len(keys) == 1
    return {"key": keys[0]["name"], "invoice": f"inv-{paid.payment_id}"}


async def _execute(db: Database, query: str, *args: Any) -> None:
    async def unit(tx: Tx) -> None:
        await tx.execute(query, *args)

    await db.run(unit)


async def _audit(db: Database, shop: dict[str, Any], **overrides: Any) -> AuditReport:
    arguments: dict[str, Any] = {
        "now": LATER,
        "node_keys": {"n1": {shop["key"]}},
        "deliveries": [],
        "provider_charges": {"cryptopay": {shop["invoice"]}},
    }
    arguments.update(overrides)
    return await audit(db, **arguments)


async def test_a_whole_shop_passes(db: Database) -> None:
    shop = await _shop(db)
    report = await _audit(db, shop)
    assert report.ok, report.describe()
    assert report.counts["users"] == 2
    assert report.counts["payments applied"] == 1
    assert report.counts["keys wanted present"] == 1


async def test_a_balance_written_behind_the_ledger_is_found(db: Database) -> None:
    shop = await _shop(db)
    await _execute(db, "UPDATE users SET balance_minor = balance_minor + 1 WHERE id = 2")
    report = await _audit(db, shop)
    assert report.violations == ("balance differs from its ledger: user 2 has balance 1, ledger sums to 0",)


async def test_keys_missing_and_orphaned_on_a_node_are_found(db: Database) -> None:
    shop = await _shop(db)
    orphan = "00000000-0000-4000-8000-000000000001"
    report = await _audit(db, shop, node_keys={"n1": {orphan}})
    assert len(report.violations) == 2
    assert report.violations[0].startswith(f"node n1: wanted key absent: {shop['key'][:8]}")
    assert report.violations[1].startswith("node n1: key present that is not wanted")
    assert shop["key"] not in report.describe()  # a key is a credential: never printed whole


async def test_a_key_live_after_its_subscription_expired_is_found(db: Database) -> None:
    shop = await _shop(db)
    await _execute(db, "UPDATE subscriptions SET status = 'expired' WHERE user_id = 1")
    report = await _audit(db, shop)
    assert [v.split(":")[0] for v in report.violations] == ["key live without an active subscription"]


async def test_provider_charges_never_applied_or_applied_without_charge_are_found(db: Database) -> None:
    shop = await _shop(db)
    report = await _audit(db, shop, provider_charges={"cryptopay": {"inv-999"}})
    applied_id = shop["invoice"].removeprefix("inv-")
    assert sorted(report.violations) == [
        f"cryptopay: applied without a charge at the provider: payment {applied_id}",
        "cryptopay: charge inv-999 was never applied nor refunded",
    ]


async def test_a_credit_for_a_payment_not_applied_is_found(db: Database) -> None:
    shop = await _shop(db)
    await _execute(db, "UPDATE payments SET status = 'expired' WHERE external_id = $1", shop["invoice"])
    report = await _audit(db, shop, provider_charges=None)
    assert any(v.startswith("top-up credited but not applied") for v in report.violations), report.describe()


async def _notice(db: Database, chat_id: int, text: str, state: str, broadcast: bool = False) -> None:
    async def unit(tx: Tx) -> None:
        broadcast_id = None
        if broadcast:
            broadcast_id = await tx.fetchval(
                "INSERT INTO broadcasts (created_by, segment, text, state, created_at) "
                "VALUES (7, 'all', $1, 'done', $2) RETURNING id",
                text,
                NOW,
            )
        await enqueue_message(
            tx, chat_id=chat_id, kind="literal", payload={"text": text}, dedupe_key=f"k:{text}",
            now=NOW, priority=1 if broadcast else 0, broadcast_id=broadcast_id,
        )
        await tx.execute("UPDATE outbox SET state = $1 WHERE dedupe_key = $2", state, f"k:{text}")

    await db.run(unit)


async def test_a_broadcast_copy_delivered_twice_is_a_violation_a_notice_within_allowance_is_not(
    db: Database,
) -> None:
    shop = await _shop(db)
    await _notice(db, 1, "news", "sent", broadcast=True)
    await _notice(db, 1, "your key is live", "sent")
    seen = [Delivery(1, "news"), Delivery(1, "your key is live"), Delivery(1, "your key is live")]
    report = await _audit(db, shop, deliveries=seen[1:], allow_doubled_notices=1)
    assert report.ok, report.describe()
    assert report.counts["notices delivered twice"] == 1
    strict = await _audit(db, shop, deliveries=seen[1:])
    assert strict.violations == (
        "1 personal notices were delivered twice (allowed: 0, the sends in flight at a crash)",
    )
    doubled = await _audit(db, shop, deliveries=[*seen, Delivery(1, "news")], allow_doubled_notices=1)
    assert doubled.violations == ("broadcast copy delivered 2 times to chat 1: 'news'",)


async def test_an_unsettled_outbox_is_found_only_when_asked(db: Database) -> None:
    shop = await _shop(db)
    await _notice(db, 2, "still waiting", "pending")
    assert (await _audit(db, shop)).ok
    report = await _audit(db, shop, require_outbox_settled=True)
    assert any("is still pending" in v for v in report.violations), report.describe()
