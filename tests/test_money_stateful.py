"""Hypothesis: random programs of money units, with concurrent duplicates, keep the invariants.

Each example is a random list of operations (register, referrals, trials, top-ups and plan payments
applied by several concurrent callers, balance purchases double-tapped, renewal and expiry batches
run by concurrent claimers, time passing, key reissues, admin grants and adjustments, bans,
refunds, promo sessions, reminders) executed against a real PostgreSQL. After every step:

* every user's balance equals the sum of their ledger, and none is negative;
* no payment is applied twice: at most one caller sees ``applied``; an applied (or refunded)
  top-up has exactly one credit, nothing else has one; a reward exists only for an applied payment;
* no subscription's expiry moves backwards, except by an audited admin action (days removed, refund);
* a trial never shortens or revokes paid time: a subscription with paid time left stays paid,
  keeps at least its expiry and stays active (unless an audited admin action or refund intervened);
* at most one key wanted present per subscription; exactly one while it has time left and the user
  is not banned; none when expired or banned.

Hypothesis is synchronous, so it runs in a worker thread and each example crosses back into the
test's trio loop (``trio.from_thread.run``), where the bridge and the pool already live: one pool for
all examples, and the tables are emptied between them.
"""

from __future__ import annotations

import datetime as dt
from collections import Counter
from typing import Any

import pytest
import trio
from _money_support import (
    ADMIN,
    CATALOG,
    EVERY_POLICY,
    NOW,
    RUB,
    TTL,
    add_promo,
    add_user,
    attach_and_apply,
    setup_catalog,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from atlas.domain import DomainError, PromoKind, SubscriptionKind
from atlas.storage import Database, Tx
from atlas.storage.units import (
    ApplyOutcome,
    admin_adjust_balance,
    admin_grant_days,
    admin_set_banned,
    apply_payment,
    buy_plan_from_balance,
    claim_and_renew,
    create_payment_intent,
    enqueue_due_reminders,
    expire_due,
    get_user,
    refund_payment,
    register_user,
    reissue_key,
    remember_promo,
    set_auto_renew,
    set_referrer,
    start_trial,
)

# User 3 starts on a trial, 1 and 2 on daily paid plans, 4 with nothing (see Program.setup).
USERS = st.sampled_from([3, 1, 2, 4])
DUP = st.integers(1, 3)
# Hypothesis draws the first values of a list most often: the useful ones come first.
PROMOS = st.sampled_from([None, None, "BONUS", "HALF", "DAYS", "ONCE"])
PLANS = st.sampled_from(["d1", "d1", "m1", "old", "nope"])
_MONEY_OPS = [
    st.tuples(st.just("topup"), USERS, st.sampled_from([100, 600, 10_000]), PROMOS, DUP, st.booleans()),
    st.tuples(
        st.just("pay_plan"), USERS, PLANS, PROMOS, st.sampled_from(["cryptopay", "stars"]), DUP, st.booleans()
    ),
    st.tuples(st.just("buy"), USERS, PLANS, PROMOS, DUP, st.booleans()),
    st.tuples(st.just("renew"), DUP),
    st.tuples(st.just("expire"), DUP, st.sampled_from([None, "trial"])),
    st.tuples(st.just("advance"), st.sampled_from([2, 20, 30, 24 * 3, 24 * 40])),
    st.tuples(st.just("auto_renew"), USERS, st.booleans()),
]
_OTHER_OPS = [
    st.tuples(st.just("register"), st.integers(1, 5), st.none() | USERS),
    st.tuples(st.just("set_referrer"), USERS, USERS),
    st.tuples(st.just("trial"), USERS, DUP),
    st.tuples(st.just("reissue"), USERS),
    st.tuples(st.just("admin_days"), USERS, st.integers(-40, 40).filter(bool)),
    st.tuples(st.just("admin_adjust"), USERS, st.integers(-20_000, 20_000).filter(bool), DUP),
    st.tuples(st.just("refund"), st.integers(0, 9)),
    st.tuples(st.just("remember"), USERS, st.sampled_from(["BONUS", "HALF", "DAYS", "ONCE"])),
    st.tuples(st.just("ban"), USERS, st.booleans()),
    st.tuples(st.just("reminders"), st.just(0)),
]
# Money moves are drawn twice as often as the rest: they are what the invariants are about.
OPS = st.one_of(*_MONEY_OPS, *_MONEY_OPS, *_OTHER_OPS)
AUDITED = {"admin_days", "refund"}
_TABLES_IN_DELETE_ORDER = (
    "outbox",
    "admin_audit",
    "referral_rewards",
    "promo_redemptions",
    "promo_sessions",
    "ledger",
    "vpn_key_nodes",
    "vpn_keys",
    "payments",
    "subscriptions",
    "promo_codes",
    "users",
    "plans",
)


async def _empty(tx: Tx) -> None:
    for table in _TABLES_IN_DELETE_ORDER:
        await tx.execute(f"DELETE FROM {table}")


async def _state(tx: Tx) -> dict[str, Any]:
    """What the invariants look at, read in one transaction (one consistent snapshot)."""
    bad_balances = await tx.fetch(
        """
        SELECT u.id FROM users u
        LEFT JOIN (SELECT user_id, sum(amount_minor) AS total FROM ledger GROUP BY user_id) l
          ON l.user_id = u.id
        WHERE u.balance_minor <> coalesce(l.total, 0) OR u.balance_minor < 0
        """,
        bounded_by="four users",
    )
    payments = await tx.fetch(
        """
        SELECT p.id, p.status, p.purpose,
               (SELECT count(*) FROM ledger WHERE idempotency_key = 'payment:' || p.id) AS credits,
               (SELECT count(*) FROM referral_rewards r WHERE r.payment_id = p.id) AS rewards
        FROM payments p
        """,
        bounded_by="a program makes at most a few dozen payments",
    )
    subs = await tx.fetch(
        """
        SELECT s.id, s.user_id, s.kind, s.status, s.expires_at, u.banned_at IS NOT NULL AS banned,
               (SELECT count(*) FROM vpn_keys k WHERE k.subscription_id = s.id AND k.desired = 'present')
                 AS present
        FROM subscriptions s JOIN users u ON u.id = s.user_id
        """,
        bounded_by="one subscription per user, four users",
    )
    audits = await tx.fetch(
        "SELECT target_user_id, count(*) AS n FROM admin_audit GROUP BY target_user_id",
        bounded_by="four users",
    )
    applied = await tx.fetch(
        "SELECT id FROM payments WHERE status IN ('applied', 'refunded')", bounded_by="a few dozen payments"
    )
    return {
        "bad_balances": [r["id"] for r in bad_balances],
        "payments": [dict(r) for r in payments],
        "subs": {r["user_id"]: dict(r) for r in subs},
        "audits": {r["target_user_id"]: r["n"] for r in audits},
        "applied": [r["id"] for r in applied],
    }


class Program:
    """Runs one drawn program and checks the invariants after every step."""

    def __init__(self, db: Database, seen: Counter[str]) -> None:
        self.db = db
        self.seen = seen  # what the examples exercised, across all of them
        self.now = NOW
        self.keys = 0

    def _key(self) -> str:
        self.keys += 1
        return f"k{self.keys}"

    async def _quiet(self, unit: Any, **kwargs: Any) -> Any:
        """Run a unit; a domain refusal is an expected outcome of a random program."""
        try:
            return await self.db.run(unit, **kwargs)
        except DomainError:
            return None

    async def _together(self, times: int, unit: Any, **kwargs: Any) -> list[Any]:
        results: list[Any] = []

        async def one() -> None:
            results.append(await self._quiet(unit, **kwargs))

        async with trio.open_nursery() as nursery:
            for _ in range(times):
                nursery.start_soon(one)
        return results

    async def setup(self) -> None:
        await self.db.run(_empty)
        await setup_catalog(self.db)
        await add_promo(self.db, "HALF", PromoKind.PERCENT, 50, max_uses=2)
        await add_promo(self.db, "BONUS", PromoKind.BALANCE_BONUS, 300, per_user_limit=None)
        await add_promo(self.db, "DAYS", PromoKind.FREE_DAYS, 5)
        await add_promo(self.db, "ONCE", PromoKind.PERCENT, 10, max_uses=1)
        code = await add_user(self.db, 1)
        await add_user(self.db, 2, ref_of=code)
        await add_user(self.db, 3, ref_of=code)
        await add_user(self.db, 4)
        for user_id, amount in ((1, 5_000), (2, 300)):  # something to spend (not always enough)
            await self.db.run(
                admin_adjust_balance,
                admin_id=ADMIN,
                user_id=user_id,
                amount_minor=amount,
                reason="seed",
                idempotency_key="seed",
                now=NOW,
            )
        # Two daily subscribers with auto-renewal, so that every worker tick has work: user 1 can
        # pay for many renewals, user 2 for none.
        await self.db.run(
            buy_plan_from_balance,
            user_id=1,
            plan_code="d1",
            currency=RUB,
            promo_code=None,
            idempotency_key="seed",
            now=NOW,
        )
        intent = await self.db.run(
            create_payment_intent,
            user_id=2,
            provider="cryptopay",
            purpose="plan",
            plan_code="d1",
            currency=RUB,
            balance_currency=RUB,
            ttl=TTL,
            now=NOW,
        )
        await self.db.run(attach_and_apply, intent=intent, now=NOW)
        await self.db.run(set_auto_renew, user_id=2, enabled=True, now=NOW)
        await self.db.run(start_trial, user_id=3, trial_days=2, now=NOW)
        await self.db.run(set_auto_renew, user_id=1, enabled=True, now=NOW)

    async def _pay(self, intent: Any, times: int, mismatch: bool) -> None:
        outcomes = await self._together(
            times,
            apply_payment,
            provider=intent.provider,
            external_id=f"ext-{intent.payment_id}",
            payload=intent.payload,
            paid_amount_minor=intent.amount_minor + (1 if mismatch else 0),
            paid_currency=intent.currency,
            referral_policy=EVERY_POLICY,
            balance_currency=RUB,
            now=self.now,
        )
        counted = Counter(result.outcome for result in outcomes)
        self.seen.update(f"payment {outcome.value}" for outcome in counted)
        if times > 1:
            self.seen["concurrent duplicate applications"] += 1
        assert counted[ApplyOutcome.APPLIED] <= (0 if mismatch else 1), counted
        assert (
            counted[ApplyOutcome.APPLIED]
            + counted[ApplyOutcome.ALREADY_APPLIED]
            + counted[ApplyOutcome.FLAGGED]
            == times
        ), counted

    async def step(self, op: tuple[Any, ...]) -> None:
        name, now = op[0], self.now
        if name == "register":
            code = None
            if op[2] is not None:
                referrer = await self.db.run(get_user, user_id=op[2])
                code = None if referrer is None else referrer.referral_code
            await self._together(
                2,
                register_user,
                user_id=op[1],
                username=None,
                first_name=None,
                language="en",
                start_payload=None if code is None else f"ref_{code}",
                now=now,
            )
        elif name == "set_referrer":
            referrer = await self.db.run(get_user, user_id=op[2])
            if referrer is not None:
                await self._quiet(set_referrer, user_id=op[1], referral_code=referrer.referral_code, now=now)
        elif name == "trial":
            await self._together(op[2], start_trial, user_id=op[1], trial_days=2, now=now)
        elif name == "topup":
            _, user_id, amount, promo, times, mismatch = op
            intent = await self._quiet(
                create_payment_intent,
                user_id=user_id,
                provider="cryptopay",
                purpose="topup",
                amount_minor=amount,
                currency=RUB,
                promo_code=promo,
                balance_currency=RUB,
                ttl=TTL,
                now=now,
            )
            if intent is not None:
                await self._pay(intent, times, mismatch)
        elif name == "pay_plan":
            _, user_id, plan, promo, provider, times, auto_renew = op
            intent = await self._quiet(
                create_payment_intent,
                user_id=user_id,
                provider=provider,
                purpose="plan",
                plan_code=plan,
                currency="XTR" if provider == "stars" else RUB,
                promo_code=promo,
                balance_currency=RUB,
                ttl=TTL,
                now=now,
            )
            if intent is not None:
                await self._pay(intent, times, mismatch=False)
                if auto_renew:
                    await self._quiet(set_auto_renew, user_id=user_id, enabled=True, now=now)
        elif name == "buy":
            _, user_id, plan, promo, times, auto_renew = op
            results = await self._together(
                times,
                buy_plan_from_balance,
                user_id=user_id,
                plan_code=plan,
                currency=RUB,
                promo_code=promo,
                idempotency_key=self._key(),
                now=now,
            )
            done = sum(1 for r in results if r is not None and not r.already_done)
            assert done <= 1
            self.seen["bought from balance"] += done
            if auto_renew:  # the "renew automatically" box ticked at purchase
                await self._quiet(set_auto_renew, user_id=user_id, enabled=True, now=now)
        elif name == "renew":
            await self._renew(op[1])
        elif name == "expire":
            await self._expire(op[1], None if op[2] is None else SubscriptionKind(op[2]))
        elif name == "advance":
            # Time passes and the workers tick, racing each other as two processes would.
            self.now = now + dt.timedelta(hours=op[1])
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._renew, 2)
                nursery.start_soon(self._expire, 2, None)
        elif name == "reissue":
            await self._quiet(reissue_key, user_id=op[1], now=now)
        elif name == "admin_days":
            await self._quiet(
                admin_grant_days, admin_id=ADMIN, user_id=op[1], days=op[2], reason="test", now=now
            )
        elif name == "admin_adjust":
            await self._together(
                op[3],
                admin_adjust_balance,
                admin_id=ADMIN,
                user_id=op[1],
                amount_minor=op[2],
                reason="test",
                idempotency_key=self._key(),
                now=now,
            )
        elif name == "refund":
            state = await self.db.run(_state)
            if state["applied"]:
                payment_id = sorted(state["applied"])[op[1] % len(state["applied"])]
                refunded = await self._quiet(
                    refund_payment, payment_id=payment_id, admin_id=ADMIN, reason="test", now=now
                )
                self.seen["refunded"] += refunded is not None
        elif name == "auto_renew":
            await self._quiet(set_auto_renew, user_id=op[1], enabled=op[2], now=now)
        elif name == "remember":
            await self._quiet(remember_promo, user_id=op[1], code=op[2], ttl=TTL, now=now)
        elif name == "ban":
            await self._quiet(
                admin_set_banned, admin_id=ADMIN, user_id=op[1], banned=op[2], reason="t", now=now
            )
        elif name == "reminders":
            await self.db.run(enqueue_due_reminders, now=now, after_id=0, limit=10, currency=RUB)
        else:  # pragma: no cover
            raise AssertionError(f"unknown op {op!r}")

    async def _renew(self, times: int) -> None:
        renewals = await self._together(
            times,
            claim_and_renew,
            now=self.now,
            limit=2,
            renew_window=dt.timedelta(days=2),
            retry_after=dt.timedelta(hours=6),
            catalog=CATALOG,
            currency=RUB,
        )
        self.seen["renewed"] += sum(r.renewed for r in renewals)
        self.seen["renewal shortfall"] += sum(r.insufficient for r in renewals)

    async def _expire(self, times: int, kind: SubscriptionKind | None) -> None:
        expiries = await self._together(times, expire_due, now=self.now, limit=2, kind=kind)
        self.seen["expired"] += sum(r.expired for r in expiries)

    def check(self, op: tuple[Any, ...], before: dict[str, Any], after: dict[str, Any]) -> None:
        assert after["bad_balances"] == [], f"balance != sum(ledger) or < 0 for users {after['bad_balances']}"
        for payment in after["payments"]:
            effective = payment["status"] in ("applied", "refunded")
            credits = 1 if effective and payment["purpose"] == "topup" else 0
            assert payment["credits"] == credits, payment
            assert payment["rewards"] <= (1 if effective else 0), payment
        for user_id, sub in after["subs"].items():
            present = sub["present"]
            assert present <= 1, sub
            if sub["status"] == "expired" or sub["banned"]:
                assert present == 0, sub
            elif sub["expires_at"] > self.now:
                assert present == 1, sub  # active, time left, not banned: the key is wanted
            old = before["subs"].get(user_id)
            if old is None:
                continue
            audited = op[0] in AUDITED and after["audits"].get(user_id, 0) > before["audits"].get(user_id, 0)
            if old["kind"] == "trial" and sub["kind"] == "paid":
                self.seen["trial converted to paid"] += 1
            if sub["expires_at"] < old["expires_at"]:
                self.seen["expiry moved back (audited)"] += 1
                assert audited, f"expiry moved back without an audited admin action: {old} -> {sub} by {op}"
            had_paid_time = (
                old["kind"] == "paid" and old["status"] == "active" and old["expires_at"] > self.now
            )
            if had_paid_time and not audited:
                assert sub["kind"] == "paid", f"paid time turned into a trial: {old} -> {sub} by {op}"
                assert sub["expires_at"] >= old["expires_at"], (old, sub, op)
                assert sub["status"] == "active" or sub["expires_at"] <= self.now, (old, sub, op)

    async def run(self, program: list[tuple[Any, ...]]) -> None:
        await self.setup()
        before = await self.db.run(_state)
        for op in program:
            await self.step(op)
            after = await self.db.run(_state)
            self.check(op, before, after)
            before = after


@pytest.mark.slow
async def test_random_programs_keep_the_money_invariants(db: Database) -> None:
    examples = 0
    seen: Counter[str] = Counter()

    @settings(
        max_examples=60,
        deadline=None,
        database=None,
        # The same programs on every run: CI must not flake, and the coverage check below must hold.
        # Widen the search locally with derandomize=False and more examples.
        derandomize=True,
        suppress_health_check=list(HealthCheck),
    )
    @given(program=st.lists(OPS, min_size=5, max_size=30))
    def check_program(program: list[tuple[Any, ...]]) -> None:
        nonlocal examples
        examples += 1
        trio.from_thread.run(Program(db, seen).run, program)

    await trio.to_thread.run_sync(check_program)
    assert examples >= 60
    # The programs must have exercised what the invariants are about, or they prove little.
    for event in (
        "payment applied",
        "payment already_applied",
        "payment flagged",
        "concurrent duplicate applications",
        "bought from balance",
        "renewed",
        "renewal shortfall",
        "expired",
        "refunded",
        "trial converted to paid",
        "expiry moved back (audited)",
    ):
        assert seen[event] > 0, f"no example exercised {event!r}: {dict(seen)}"
