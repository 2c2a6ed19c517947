"""Payments applied in batches (group commit): each request its own outcome, every effect exactly once.

``apply_payments`` takes many requests in one transaction with the same statements as one;
``UnitCombiner`` (through ``apply_combined``, what the Crypto Pay webhook and watcher call) forms
those batches out of concurrent callers. What must hold, whatever lands in a batch together: one
request's refusal (unknown, mismatch, replay) is its own outcome; a request that makes the batch's
SQL fail fails alone; two requests for the same payment, payer or promo code are applied one after
the other; and a batch costs the round trips of one payment.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import asyncpg
import pytest
import trio
import trio.testing
from _money_support import (
    DAY,
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
    topup_intent,
)
from test_money_round_trips import CountingTx

from atlas.domain import PromoKind
from atlas.payments.apply_flow import apply_combined
from atlas.storage import Database, Tx, UnitCombiner, combiner_for
from atlas.storage.units import (
    ApplyOutcome,
    PaymentIntent,
    PaymentResult,
    PaymentToApply,
    apply_payments,
    create_payment_intent,
)
from atlas.storage.units._apply_sql import APPLY_EFFECTS, TOPUP_EFFECTS


def _request(intent: PaymentIntent, **overrides: Any) -> PaymentToApply:
    fields: dict[str, Any] = {
        "provider": intent.provider,
        "external_id": f"inv-{intent.payment_id}",
        "payload": intent.payload,
        "paid_amount_minor": intent.amount_minor,
        "paid_currency": intent.currency,
        "referral_policy": POLICY,
        "balance_currency": RUB,
        "now": NOW,
    }
    fields.update(overrides)
    return PaymentToApply.of(**fields)


async def _counted(tx: Tx, *, requests: list[PaymentToApply]) -> tuple[list[PaymentResult], list[str]]:
    counting = CountingTx(tx)
    results = await apply_payments(counting, requests=requests)
    return results, counting.queries


async def _users_with_topups(db: Database, first: int, count: int, amount: int) -> list[PaymentIntent]:
    intents = []
    for user_id in range(first, first + count):
        await add_user(db, user_id)
        intents.append(await topup_intent(db, user_id, amount))
    return intents


async def test_a_batch_of_ten_top_ups_takes_the_round_trips_of_one(db: Database) -> None:
    intents = await _users_with_topups(db, 1, 10, 1_000)
    results, statements = await db.run(_counted, requests=[_request(i) for i in intents])
    assert [r.outcome for r in results] == [ApplyOutcome.APPLIED] * 10
    assert [r.payment_id for r in results] == [i.payment_id for i in intents]
    assert len(statements) == 2, statements  # lock-and-read, write: 4 round trips with BEGIN/COMMIT
    assert statements[1] == TOPUP_EFFECTS  # plain top-ups: the short write
    assert await scalar(db, "SELECT count(*) FROM ledger") == 10
    assert await scalar(db, "SELECT count(*) FROM outbox WHERE kind = 'payment.applied.topup'") == 10
    assert await scalar(db, "SELECT sum(balance_minor) FROM users") == 10_000
    assert await ledger_consistent(db) == []


async def test_plain_top_ups_take_the_short_write_and_a_batch_with_a_promo_the_full_one(db: Database) -> None:
    await setup_catalog(db)
    await add_promo(db, "BONUS", PromoKind.BALANCE_BONUS, 250)
    plain = await _users_with_topups(db, 1, 3, 1_000)
    results, queries = await db.run(_counted, requests=[_request(i) for i in plain])
    assert [r.outcome for r in results] == [ApplyOutcome.APPLIED] * 3
    assert TOPUP_EFFECTS in queries and APPLY_EFFECTS not in queries
    assert await scalar(db, "SELECT count(*) FROM users WHERE first_paid_at IS NOT NULL") == 3

    more = await _users_with_topups(db, 11, 2, 1_000)
    await add_user(db, 20)
    with_promo = await topup_intent(db, 20, 2_000, promo_code="BONUS")
    results, queries = await db.run(_counted, requests=[_request(i) for i in (*more, with_promo)])
    assert [r.outcome for r in results] == [ApplyOutcome.APPLIED] * 3
    assert APPLY_EFFECTS in queries and TOPUP_EFFECTS not in queries
    assert await scalar(db, "SELECT balance_minor FROM users WHERE id = 20") == 2_250
    assert await scalar(db, "SELECT sum(balance_minor) FROM users") == 5 * 1_000 + 2_250
    assert await ledger_consistent(db) == []


async def test_callers_woken_together_form_one_batch(db: Database) -> None:
    # Ten callers, three payments each, one after the other: each batch's end wakes all ten, and
    # each comes back with its next payment; the next batch must take all ten, not whoever ran first.
    intents = await _users_with_topups(db, 1, 30, 100)
    combiner: UnitCombiner[PaymentToApply, PaymentResult] = UnitCombiner(db, apply_payments, max_in_flight=1)

    async def caller(mine: list[PaymentIntent]) -> None:
        for intent in mine:
            assert (await combiner.submit(_request(intent))).outcome is ApplyOutcome.APPLIED

    async with trio.open_nursery() as nursery:
        for n in range(10):
            nursery.start_soon(caller, intents[n::10])
    stats = combiner.statistics()
    assert (stats.requests, stats.batches, stats.largest_batch) == (30, 3, 10), stats
    assert await scalar(db, "SELECT sum(balance_minor) FROM users") == 30 * 100


async def test_a_mixed_batch_gives_every_request_its_own_outcome(db: Database) -> None:
    await setup_catalog(db)
    referrer_code = await add_user(db, 1)
    await add_user(db, 2, ref_of=referrer_code)
    await add_user(db, 3)
    await add_promo(db, "BONUS", PromoKind.BALANCE_BONUS, 250)
    first = await topup_intent(db, 1, 1_000)  # the referrer's own top-up
    second_of_referrer = await topup_intent(db, 1, 2_000)  # same payer: a second round
    referred = await topup_intent(db, 2, 10_000, promo_code="BONUS")
    mismatched = await topup_intent(db, 3, 5_000)
    requests = [
        _request(first),
        _request(referred),
        _request(mismatched, paid_amount_minor=4_999),
        _request(first, external_id=None, payload=first.payload),  # a replay of the first, by payload
        _request(second_of_referrer),
        PaymentToApply.of(
            provider="cryptopay",
            external_id="inv-nobody",
            paid_amount_minor=1,
            paid_currency=RUB,
            referral_policy=POLICY,
            balance_currency=RUB,
            now=NOW,
        ),
    ]
    results, statements = await db.run(_counted, requests=requests)
    assert [r.outcome for r in results] == [
        ApplyOutcome.APPLIED,
        ApplyOutcome.APPLIED,
        ApplyOutcome.FLAGGED,
        ApplyOutcome.ALREADY_APPLIED,
        ApplyOutcome.APPLIED,
        ApplyOutcome.UNKNOWN,
    ]
    assert results[2].reason == "amount: paid 4999, expected 5000"
    assert results[1].referral_reward_minor == 1_000  # 10 % of the referred user's first payment
    # Round 1: read, flag, write; round 2 (the replay and the referrer's second top-up): read, write.
    assert len(statements) == 5, statements
    balances = {r["id"]: r["balance_minor"] for r in await rows(db, "SELECT id, balance_minor FROM users")}
    assert balances == {1: 1_000 + 2_000 + 1_000, 2: 10_000 + 250, 3: 0}
    assert await ledger_consistent(db) == []
    statuses = await rows(db, "SELECT id, status FROM payments ORDER BY id")
    assert [s["status"] for s in statuses] == ["applied", "applied", "applied", "flagged"]
    assert await scalar(db, "SELECT uses FROM promo_codes WHERE code = 'BONUS'") == 1
    assert await scalar(db, "SELECT count(*) FROM referral_rewards") == 1
    notices = Counter(r["kind"] for r in await rows(db, "SELECT kind FROM outbox"))
    assert notices == {"payment.applied.topup": 3, "referral.reward": 1, "referral.joined": 1}


async def test_two_payments_of_one_payer_in_a_batch_apply_one_after_the_other(db: Database) -> None:
    await setup_catalog(db)
    referrer_code = await add_user(db, 1)
    await add_user(db, 2, ref_of=referrer_code)
    await add_user(db, 3)
    first_topup, second_topup = [await topup_intent(db, 2, 1_000) for _ in range(2)]
    plans = [
        await db.run(
            create_payment_intent,
            user_id=3,
            provider="cryptopay",
            purpose="plan",
            plan_code="m1",
            currency=RUB,
            balance_currency=RUB,
            ttl=TTL,
            now=NOW,
        )
        for _ in range(2)
    ]
    requests = [_request(i) for i in (first_topup, second_topup, *plans)]
    results = await db.run(apply_payments, requests=requests)
    assert [r.outcome for r in results] == [ApplyOutcome.APPLIED] * 4
    # The referral policy pays on the first payment only: the second saw first_paid_at set.
    assert [r.referral_reward_minor for r in results[:2]] == [100, 0]
    assert await scalar(db, "SELECT count(*) FROM referral_rewards") == 1
    # The second plan extends the subscription the first one created: 30 + 30 days.
    assert await scalar(db, "SELECT expires_at FROM subscriptions WHERE user_id = 3") == NOW + 60 * DAY
    assert results[3].expires_at == NOW + 60 * DAY
    assert await scalar(db, "SELECT count(*) FROM vpn_keys") == 1
    assert await ledger_consistent(db) == []


async def test_concurrent_callers_share_transactions_and_each_payment_applies_once(db: Database) -> None:
    intents = await _users_with_topups(db, 1, 40, 700)
    outcomes: dict[int, list[ApplyOutcome]] = {i.payment_id: [] for i in intents}

    async def caller(intent: PaymentIntent, how: dict[str, Any]) -> None:
        result = await apply_combined(db, _request(intent, **how))
        outcomes[intent.payment_id].append(result.outcome)

    async with trio.open_nursery() as nursery:
        for intent in intents:  # the webhook, then the watcher for the same invoice, then a replay
            nursery.start_soon(caller, intent, {})
            nursery.start_soon(caller, intent, {"payment_id": intent.payment_id})
            nursery.start_soon(caller, intent, {"external_id": None, "payload": intent.payload})
    for payment_id, seen in outcomes.items():
        assert sorted(seen) == sorted(
            [ApplyOutcome.APPLIED, ApplyOutcome.ALREADY_APPLIED, ApplyOutcome.ALREADY_APPLIED]
        ), payment_id
    stats = combiner_for(db, apply_payments).statistics()
    assert stats.requests == 120
    assert stats.largest_batch >= 10 and stats.batches <= 30, stats
    assert await scalar(db, "SELECT count(*) FROM ledger") == 40
    assert await scalar(db, "SELECT count(*) FROM outbox") == 40
    assert await scalar(db, "SELECT sum(balance_minor) FROM users") == 40 * 700
    assert await ledger_consistent(db) == []


async def _post_key_already(db: Database, intent: PaymentIntent) -> None:
    # A ledger row already holding the payment's key: applying it must hit the unique violation.
    async def unit(tx: Tx) -> None:
        await tx.execute(
            "INSERT INTO ledger (user_id, amount_minor, kind, reference, idempotency_key, created_at) "
            "VALUES ($1, 1, 'admin_adjust', 'test', $2, $3)",
            intent.user_id,
            f"payment:{intent.payment_id}",
            NOW,
        )
        await tx.execute("UPDATE users SET balance_minor = 1 WHERE id = $1", intent.user_id)

    await db.run(unit)


async def test_a_request_that_fails_the_batch_fails_alone(db: Database) -> None:
    intents = await _users_with_topups(db, 1, 6, 300)
    lone, broken, *fine = intents
    await _post_key_already(db, broken)
    combiner: UnitCombiner[PaymentToApply, PaymentResult] = UnitCombiner(db, apply_payments, max_in_flight=1)
    outcomes: dict[int, object] = {}

    async def caller(intent: PaymentIntent) -> None:
        try:
            outcomes[intent.payment_id] = (await combiner.submit(_request(intent))).outcome
        except asyncpg.UniqueViolationError as exc:
            outcomes[intent.payment_id] = exc

    async with trio.open_nursery() as nursery:
        nursery.start_soon(caller, lone)
        await trio.testing.wait_all_tasks_blocked()  # the lone request's batch is running
        for intent in (broken, *fine):
            nursery.start_soon(caller, intent)
    stats = combiner.statistics()
    assert (stats.batches, stats.batches_split, stats.largest_batch) == (2, 1, 5), stats
    assert isinstance(outcomes[broken.payment_id], asyncpg.UniqueViolationError)
    assert [outcomes[i.payment_id] for i in (lone, *fine)] == [ApplyOutcome.APPLIED] * 5
    assert await scalar(db, "SELECT status FROM payments WHERE id = $1", broken.payment_id) == "pending"
    assert await ledger_consistent(db) == []


async def test_a_caller_cancelled_while_queued_leaves_its_payment_alone(db: Database) -> None:
    lone, cancelled = await _users_with_topups(db, 1, 2, 300)
    combiner: UnitCombiner[PaymentToApply, PaymentResult] = UnitCombiner(db, apply_payments, max_in_flight=1)
    got: list[PaymentResult] = []

    async def lone_caller() -> None:
        got.append(await combiner.submit(_request(lone)))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(lone_caller)
        await trio.testing.wait_all_tasks_blocked()
        with trio.move_on_after(0) as scope:
            scope.cancel()
            await combiner.submit(_request(cancelled))
        assert scope.cancelled_caught
    assert [r.outcome for r in got] == [ApplyOutcome.APPLIED]
    assert combiner.statistics().queued == 0
    assert await scalar(db, "SELECT status FROM payments WHERE id = $1", cancelled.payment_id) == "pending"


@pytest.mark.parametrize("max_batch", [0, 1001])
async def test_combiner_refuses_a_batch_size_out_of_range(db: Database, max_batch: int) -> None:
    with pytest.raises(ValueError, match="max_batch"):
        UnitCombiner(db, apply_payments, max_batch=max_batch)
