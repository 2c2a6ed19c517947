"""Races: a payment applied 20 times at once, and two claimers renewing 10,000 subscriptions together."""

from __future__ import annotations

import datetime as dt
from collections import Counter

import trio
from _money_support import (
    CATALOG,
    NOW,
    POLICY,
    RUB,
    TTL,
    add_promo,
    add_user,
    ledger_consistent,
    rows,
    scalar,
    setup_catalog,
)

from atlas.domain import PromoKind
from atlas.storage import Database, DatabaseSettings, Tx
from atlas.storage.units import (
    ApplyOutcome,
    PaymentIntent,
    PaymentResult,
    RenewalCounts,
    apply_payment,
    attach_external_id,
    claim_and_renew,
    create_payment_intent,
)


async def _apply_twenty_times(db: Database, intent: PaymentIntent) -> Counter[ApplyOutcome]:
    results: list[PaymentResult] = []

    async def one(n: int) -> None:
        # Webhook (external id), watcher (payment id + external id), replays by payload only.
        how: dict[str, object] = [
            {"external_id": "inv-race"},
            {"payload": intent.payload},
            {"payment_id": intent.payment_id, "external_id": "inv-race"},
        ][n % 3]
        results.append(
            await db.run(
                apply_payment,
                provider="cryptopay",
                paid_amount_minor=intent.amount_minor,
                paid_currency=RUB,
                referral_policy=POLICY,
                balance_currency=RUB,
                now=NOW,
                **how,  # type: ignore[arg-type]
            )
        )

    async with trio.open_nursery() as nursery:
        for n in range(20):
            nursery.start_soon(one, n)
    return Counter(result.outcome for result in results)


async def test_twenty_concurrent_applications_have_exactly_one_effect(db: Database) -> None:
    await setup_catalog(db)
    code = await add_user(db, 1)
    await add_user(db, 2, ref_of=code)
    await add_promo(db, "BONUS", PromoKind.BALANCE_BONUS, 250)
    topup = await db.run(
        create_payment_intent,
        user_id=2,
        provider="cryptopay",
        purpose="topup",
        amount_minor=10_000,
        currency=RUB,
        promo_code="BONUS",
        balance_currency=RUB,
        ttl=TTL,
        now=NOW,
    )
    await db.run(attach_external_id, payment_id=topup.payment_id, external_id="inv-race")
    outcomes = await _apply_twenty_times(db, topup)
    assert outcomes == Counter({ApplyOutcome.APPLIED: 1, ApplyOutcome.ALREADY_APPLIED: 19})
    balances = await rows(db, "SELECT id, balance_minor FROM users ORDER BY id")
    assert balances == [{"id": 1, "balance_minor": 1_000}, {"id": 2, "balance_minor": 10_250}]
    assert await scalar(db, "SELECT count(*) FROM ledger") == 3  # top-up, bonus, referral reward
    assert await scalar(db, "SELECT count(*) FROM promo_redemptions") == 1
    assert await scalar(db, "SELECT uses FROM promo_codes WHERE code = 'BONUS'") == 1
    assert await scalar(db, "SELECT count(*) FROM referral_rewards") == 1
    assert await scalar(db, "SELECT count(*) FROM outbox WHERE kind LIKE 'payment.applied%'") == 1
    assert await ledger_consistent(db) == []


async def _seed_due(tx: Tx, *, count: int, now: dt.datetime) -> None:
    await tx.execute(
        """
        INSERT INTO users (id, language, referral_code, balance_minor, created_at)
        SELECT g, 'ru', 'code' || g, 1000, $2 FROM generate_series(1, $1::int) AS g
        """,
        count,
        now,
    )
    await tx.execute(
        """
        INSERT INTO ledger (user_id, amount_minor, kind, reference, idempotency_key, created_at)
        SELECT g, 1000, 'topup', 'seed', 'seed:' || g, $2 FROM generate_series(1, $1::int) AS g
        """,
        count,
        now,
    )
    await tx.execute(
        """
        INSERT INTO subscriptions (user_id, kind, status, plan_code, starts_at, expires_at, auto_renew, token,
                                   created_at, updated_at)
        SELECT g, 'paid', 'active', 'd1', $2::timestamptz - interval '1 day',
               $2::timestamptz + (g % 60) * interval '1 minute', true,
               'token-' || lpad(g::text, 20, '0'), $2, $2
        FROM generate_series(1, $1::int) AS g
        """,
        count,
        now,
    )


async def test_two_claimers_renew_ten_thousand_subscriptions_exactly_once(
    db: Database, fresh_database: str
) -> None:
    count = 10_000
    await setup_catalog(db)
    await db.run(_seed_due, count=count, now=NOW)
    other = await Database.open(DatabaseSettings(dsn=fresh_database, pool_size=4, acquire_timeout=30))
    renewed_by: dict[str, int] = {"first": 0, "second": 0}
    try:

        async def claimer(name: str, database: Database) -> None:
            while True:
                counts: RenewalCounts = await database.run(
                    claim_and_renew,
                    now=NOW,
                    limit=250,
                    renew_window=dt.timedelta(hours=1),
                    retry_after=dt.timedelta(hours=1),
                    catalog=CATALOG,
                    currency=RUB,
                )
                renewed_by[name] += counts.renewed
                assert counts.renewed == counts.claimed  # every due row is covered by its balance
                if counts.claimed == 0:
                    return

        async with trio.open_nursery() as nursery:
            for _ in range(2):  # two workers per "process"
                nursery.start_soon(claimer, "first", db)
                nursery.start_soon(claimer, "second", other)
    finally:
        with trio.CancelScope(shield=True):
            await other.close()
    assert renewed_by["first"] + renewed_by["second"] == count
    assert renewed_by["first"] > 0 and renewed_by["second"] > 0, renewed_by
    summary = await rows(
        db,
        """
        SELECT count(*) AS charges, count(DISTINCT user_id) AS users, sum(amount_minor) AS total
        FROM ledger WHERE kind = 'renewal'
        """,
    )
    assert summary == [{"charges": count, "users": count, "total": -500 * count}]
    assert await scalar(db, "SELECT count(*) FROM users WHERE balance_minor <> 500") == 0
    assert (
        await scalar(db, "SELECT count(*) FROM subscriptions WHERE last_auto_renewal_at = $1", NOW) == count
    )
    assert (
        await scalar(
            db,
            "SELECT count(*) FROM subscriptions WHERE expires_at <> starts_at + interval '2 days' + "
            "(user_id % 60) * interval '1 minute'",
        )
        == 0
    )
    assert await scalar(db, "SELECT count(*) FROM outbox WHERE kind = 'renewal.done'") == count
    assert await ledger_consistent(db) == []
