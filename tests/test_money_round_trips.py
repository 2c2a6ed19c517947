"""``apply_payment`` in at most four round trips (issue 9 item 5), its lock order, its retries.

Round trips are counted on the ``Tx`` the unit receives: every statement is one, and ``db.run`` adds
``BEGIN`` and ``COMMIT``. So "at most 4" is "at most 2 statements" in every path below.

The lock order (users ascending → subscription → payment → promo) is watched from a second
connection while ``apply_payment`` waits for a row held by a third; and a row created while it waited
(a subscription, a referrer) must make the unit retry on a fresh snapshot, not decide on a stale one.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import asyncpg
import pytest
import trio
import trio_asyncio
from _money_support import (
    DAY,
    EVERY_POLICY,
    NOW,
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

from atlas.domain import PromoKind
from atlas.storage import Database, Tx
from atlas.storage.units import (
    ApplyOutcome,
    PaymentIntent,
    PaymentResult,
    apply_payment,
    attach_external_id,
    create_payment_intent,
    start_trial,
)

BEGIN_AND_COMMIT = 2


class CountingTx(Tx):
    """A ``Tx`` that records every statement it sends (one round trip each)."""

    __slots__ = ("queries", "statements")

    def __init__(self, inner: Tx) -> None:
        super().__init__(inner._conn, inner.unit_name)
        self.statements: list[str] = []
        self.queries: list[str] = []

    def _note(self, query: str) -> None:
        self.statements.append(" ".join(query.split())[:60])
        self.queries.append(query)

    async def execute(self, query: str, *args: Any) -> str:
        self._note(query)
        return await super().execute(query, *args)

    async def executemany(self, query: str, args: Any) -> None:
        self._note(query)
        await super().executemany(query, args)

    async def fetch(self, query: str, *args: Any, bounded_by: str | None = None) -> list[Any]:
        self._note(query)
        return await super().fetch(query, *args, bounded_by=bounded_by)

    async def fetchrow(self, query: str, *args: Any) -> Any:
        self._note(query)
        return await super().fetchrow(query, *args)

    async def fetchval(self, query: str, *args: Any, column: int = 0) -> Any:
        self._note(query)
        return await super().fetchval(query, *args, column=column)


async def _counted(tx: Tx, *, kwargs: dict[str, Any]) -> tuple[PaymentResult, list[str]]:
    counting = CountingTx(tx)
    result = await apply_payment(counting, **kwargs)
    return result, counting.statements


def _paid(intent: PaymentIntent, **overrides: Any) -> dict[str, Any]:
    args: dict[str, Any] = {
        "provider": intent.provider,
        "payload": intent.payload,
        "paid_amount_minor": intent.amount_minor,
        "paid_currency": intent.currency,
        "referral_policy": EVERY_POLICY,
        "balance_currency": RUB,
        "now": NOW,
    }
    args.update(overrides)
    return args


async def _round_trips(db: Database, kwargs: dict[str, Any]) -> tuple[PaymentResult, int]:
    result, statements = await db.run(_counted, kwargs=kwargs)
    return result, len(statements) + BEGIN_AND_COMMIT


async def _plan_intent(db: Database, user_id: int, *, promo: str | None = None) -> PaymentIntent:
    intent: PaymentIntent = await db.run(
        create_payment_intent,
        user_id=user_id,
        provider="stars",
        purpose="plan",
        plan_code="m1",
        currency="XTR",
        balance_currency=RUB,
        promo_code=promo,
        ttl=TTL,
        now=NOW,
    )
    return intent


async def test_every_path_of_apply_payment_takes_at_most_four_round_trips(db: Database) -> None:
    await setup_catalog(db)
    code = await add_user(db, 1)
    await add_user(db, 2, ref_of=code)
    await add_promo(db, "BONUS", PromoKind.BALANCE_BONUS, 500)
    await add_promo(db, "DAYS", PromoKind.FREE_DAYS, 3)

    # A top-up with a bonus code and a referral reward: three ledger rows, two balances, two notices.
    topup: PaymentIntent = await db.run(
        create_payment_intent,
        user_id=2,
        provider="cryptopay",
        purpose="topup",
        amount_minor=20_000,
        currency=RUB,
        balance_currency=RUB,
        promo_code="BONUS",
        ttl=TTL,
        now=NOW,
    )
    await db.run(attach_external_id, payment_id=topup.payment_id, external_id="inv-1")
    result, trips = await _round_trips(db, _paid(topup, external_id="inv-1", payload=None))
    assert result.outcome is ApplyOutcome.APPLIED and result.referral_reward_minor == 2_000
    assert trips <= 4
    assert await scalar(db, "SELECT balance_minor FROM users WHERE id = 2") == 20_500
    assert await scalar(db, "SELECT balance_minor FROM users WHERE id = 1") == 2_000
    assert await scalar(db, "SELECT uses FROM promo_codes WHERE code = 'BONUS'") == 1

    # A plan through Stars for a user on a trial (converted in place, the trial key kept) with free days.
    await db.run(start_trial, user_id=2, trial_days=3, now=NOW)
    key_before = await scalar(db, "SELECT uuid FROM vpn_keys WHERE desired = 'present'")
    plan = await _plan_intent(db, 2, promo="DAYS")
    result, trips = await _round_trips(db, _paid(plan, external_id="charge-1"))
    assert result.outcome is ApplyOutcome.APPLIED and trips <= 4
    assert result.expires_at == NOW + 3 * DAY + 33 * DAY
    assert await scalar(db, "SELECT uuid FROM vpn_keys WHERE desired = 'present'") == key_before

    # A plan for a user with no subscription: a new one and a new key.
    await add_user(db, 3)
    fresh = await _plan_intent(db, 3)
    result, trips = await _round_trips(db, _paid(fresh, external_id="charge-3"))
    assert result.outcome is ApplyOutcome.APPLIED and trips <= 4
    present = "SELECT count(*) FROM vpn_keys k JOIN subscriptions s ON s.id = k.subscription_id"
    assert await scalar(db, present + " WHERE s.user_id = 3 AND k.desired = 'present'") == 1

    # A lapsed subscriber: the expired subscription is reactivated and its newest key comes back.
    await _expire(db, 3)
    again = await _plan_intent(db, 3)
    result, trips = await _round_trips(db, _paid(again, external_id="charge-4"))
    assert result.outcome is ApplyOutcome.APPLIED and trips <= 4
    keys = await rows(
        db,
        "SELECT desired FROM vpn_keys k JOIN subscriptions s ON s.id = k.subscription_id"
        " WHERE s.user_id = 3",
    )
    assert keys == [{"desired": "present"}]

    # Replays, refusals and strangers.
    replay, trips = await _round_trips(db, _paid(plan, external_id="charge-1"))
    assert replay.outcome is ApplyOutcome.ALREADY_APPLIED and trips <= 4
    second, trips = await _round_trips(db, _paid(plan, external_id="charge-2"))
    assert second.reason == "second_charge" and trips <= 4
    odd = await topup_intent(db, 3, 300)
    flagged, trips = await _round_trips(db, _paid(odd, paid_amount_minor=30))
    assert flagged.outcome is ApplyOutcome.FLAGGED and trips <= 4
    unknown, trips = await _round_trips(db, _paid(odd, payload="no-such-payload"))
    assert unknown.outcome is ApplyOutcome.UNKNOWN and trips <= 4
    assert await ledger_consistent(db) == []


async def _expire(db: Database, user_id: int) -> None:
    async def unit(tx: Tx) -> None:
        sub_id = await tx.fetchval(
            "UPDATE subscriptions SET status = 'expired', expires_at = starts_at"
            " WHERE user_id = $1 RETURNING id",
            user_id,
        )
        await tx.execute("UPDATE vpn_keys SET desired = 'absent' WHERE subscription_id = $1", sub_id)

    await db.run(unit)


# --- lock order and stale snapshots, watched from other connections -------------------------------


@asynccontextmanager
async def _connection(dsn: str) -> AsyncIterator[Callable[..., Awaitable[Any]]]:
    """A plain asyncpg connection of its own; yields ``call(method_name, *args)``."""
    conn = await trio_asyncio.aio_as_trio(asyncpg.connect)(dsn)

    async def call(method: str, *args: Any) -> Any:
        return await trio_asyncio.aio_as_trio(getattr(conn, method))(*args)

    try:
        yield call
    finally:
        await trio_asyncio.aio_as_trio(conn.close)()


async def _wait_until_blocked(watch: Callable[..., Awaitable[Any]]) -> None:
    # Another connection's state has no event to wait on: poll it, within a deadline.
    query = (
        "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'atlas' AND wait_event_type = 'Lock'"
    )
    with trio.fail_after(30):
        blocked = 0
        while not blocked:
            await trio.sleep(0.02)
            blocked = await watch("fetchval", query)


async def _locked_elsewhere(watch: Callable[..., Awaitable[Any]], query: str, *args: Any) -> bool:
    """Whether ``query ... FOR UPDATE NOWAIT`` finds its row locked (it takes and drops the lock)."""
    await watch("execute", "BEGIN")
    try:
        await watch("fetchval", query + " FOR UPDATE NOWAIT", *args)
    except asyncpg.LockNotAvailableError:
        return True
    finally:
        await watch("execute", "ROLLBACK")
    return False


async def _apply_in_background(db: Database, intent: PaymentIntent, results: list[PaymentResult]) -> None:
    results.append(await db.run(apply_payment, **_paid(intent, external_id="charge-bg")))


async def test_apply_locks_users_then_subscription_then_payment(db: Database, fresh_database: str) -> None:
    await setup_catalog(db)
    code = await add_user(db, 10)
    await add_user(db, 20, ref_of=code)
    await db.run(start_trial, user_id=20, trial_days=3, now=NOW)
    plan = await _plan_intent(db, 20)
    results: list[PaymentResult] = []
    async with _connection(fresh_database) as holder, _connection(fresh_database) as watch:
        # The subscription is held elsewhere: apply must already hold both users, not yet the payment.
        await holder("execute", "BEGIN")
        await holder("execute", "SELECT 1 FROM subscriptions WHERE user_id = 20 FOR UPDATE")
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_apply_in_background, db, plan, results)
            await _wait_until_blocked(watch)
            assert await _locked_elsewhere(watch, "SELECT 1 FROM users WHERE id = $1", 10)
            assert await _locked_elsewhere(watch, "SELECT 1 FROM users WHERE id = $1", 20)
            assert not await _locked_elsewhere(watch, "SELECT 1 FROM payments WHERE id = $1", plan.payment_id)
            await holder("execute", "COMMIT")
        # The payment is held elsewhere: by then apply holds the users and the subscription.
        second = await _plan_intent(db, 20)
        await holder("execute", "BEGIN")
        await holder("execute", "SELECT 1 FROM payments WHERE id = $1 FOR UPDATE", second.payment_id)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_apply_in_background_as, db, second, "charge-bg-2", results)
            await _wait_until_blocked(watch)
            assert await _locked_elsewhere(watch, "SELECT 1 FROM subscriptions WHERE user_id = $1", 20)
            assert await _locked_elsewhere(watch, "SELECT 1 FROM users WHERE id = $1", 10)
            await holder("execute", "COMMIT")
    assert [r.outcome for r in results] == [ApplyOutcome.APPLIED, ApplyOutcome.APPLIED]


async def _apply_in_background_as(
    db: Database, intent: PaymentIntent, charge: str, results: list[PaymentResult]
) -> None:
    results.append(await db.run(apply_payment, **_paid(intent, external_id=charge)))


@pytest.mark.parametrize("change", ["subscription", "referrer"])
async def test_a_row_created_during_the_lock_wait_makes_apply_retry(
    db: Database, fresh_database: str, change: str
) -> None:
    await setup_catalog(db)
    code = await add_user(db, 10)
    await add_user(db, 20)
    plan = await _plan_intent(db, 20)
    results: list[PaymentResult] = []
    retried_before = db.conflicts_retried
    async with _connection(fresh_database) as holder, _connection(fresh_database) as watch:
        await holder("execute", "BEGIN")
        await holder("execute", "SELECT 1 FROM users WHERE id = 20 FOR UPDATE")
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_apply_in_background, db, plan, results)
            await _wait_until_blocked(watch)
            if change == "subscription":  # e.g. a trial started while the payment was being applied
                await holder(
                    "execute",
                    """
                    INSERT INTO subscriptions (user_id, kind, status, starts_at, expires_at, token,
                                               created_at, updated_at)
                    VALUES (20, 'trial', 'active', $1, $2, 'tok-created-during-the-wait-000', $1, $1)
                    """,
                    NOW,
                    NOW + 2 * DAY,
                )
            else:
                await holder("execute", "UPDATE users SET referrer_id = 10 WHERE id = 20")
            await holder("execute", "COMMIT")
    [result] = results
    assert result.outcome is ApplyOutcome.APPLIED
    assert db.conflicts_retried > retried_before
    if change == "subscription":  # the trial was converted in place, its two days kept
        assert result.expires_at == NOW + 2 * DAY + 30 * DAY
        assert await scalar(db, "SELECT count(*) FROM subscriptions WHERE user_id = 20") == 1
    else:  # the referrer set meanwhile was locked and rewarded on the retry
        assert result.referral_reward_minor > 0
        rewarded = await scalar(db, "SELECT balance_minor FROM users WHERE id = 10")
        assert rewarded == result.referral_reward_minor
    assert code
    assert await ledger_consistent(db) == []
