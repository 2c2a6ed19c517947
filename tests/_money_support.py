"""Shared pieces of the money tests: a catalogue, a policy, snapshots, a failing ``Tx``, set-up helpers."""

from __future__ import annotations

import datetime as dt
from typing import Any

from atlas.domain import (
    Currency,
    Plan,
    PlanCatalog,
    PromoCode,
    PromoKind,
    ReferralPolicy,
    ReferralTrigger,
    RewardKind,
)
from atlas.storage import Database, Tx
from atlas.storage.units import (
    PaymentIntent,
    apply_payment,
    create_payment_intent,
    create_promo_code,
    register_user,
    sync_plans,
)

RUB = "RUB"
NOW = dt.datetime(2026, 3, 1, 12, 0, tzinfo=dt.UTC)
DAY = dt.timedelta(days=1)
ADMIN = 999_000
TITLES = {"ru": "план", "en": "plan"}
CATALOG = PlanCatalog(
    [
        Plan("m1", 30, {Currency(RUB): 10_000}, 50, TITLES),
        Plan("d1", 1, {Currency(RUB): 500}, 5, TITLES),
        Plan("old", 90, {Currency(RUB): 20_000}, None, TITLES, for_sale=False),
    ]
)
POLICY = ReferralPolicy(RewardKind.PERCENT, 10, ReferralTrigger.FIRST_PAYMENT)
EVERY_POLICY = ReferralPolicy(RewardKind.PERCENT, 10, ReferralTrigger.EVERY_PAYMENT)
TTL = dt.timedelta(minutes=30)

MONEY_TABLES = (
    "users",
    "plans",
    "subscriptions",
    "vpn_keys",
    "ledger",
    "payments",
    "promo_codes",
    "promo_redemptions",
    "promo_sessions",
    "referral_rewards",
    "outbox",
    "admin_audit",
    "broadcasts",
)


class InjectedFailure(Exception):
    """Raised by :class:`FailingTx` in place of a statement."""


class FailingTx(Tx):
    """A ``Tx`` that runs the first ``allowed`` statements and then raises (a crash between statements)."""

    __slots__ = ("_left", "ran")

    def __init__(self, inner: Tx, allowed: int) -> None:
        super().__init__(inner._conn, inner.unit_name)
        self._left = allowed
        self.ran = 0

    def _tick(self) -> None:
        if self._left <= 0:
            raise InjectedFailure(f"injected after {self.ran} statements")
        self._left -= 1
        self.ran += 1

    async def execute(self, query: str, *args: Any) -> str:
        self._tick()
        return await super().execute(query, *args)

    async def executemany(self, query: str, args: Any) -> None:
        self._tick()
        await super().executemany(query, args)

    async def fetch(self, query: str, *args: Any, bounded_by: str | None = None) -> list[Any]:
        self._tick()
        return await super().fetch(query, *args, bounded_by=bounded_by)

    async def fetchrow(self, query: str, *args: Any) -> Any:
        self._tick()
        return await super().fetchrow(query, *args)

    async def fetchval(self, query: str, *args: Any, column: int = 0) -> Any:
        self._tick()
        return await super().fetchval(query, *args, column=column)


async def run_failing(tx: Tx, *, unit: Any, allowed: int, kwargs: dict[str, Any]) -> Any:
    """A unit of work that runs ``unit`` on a :class:`FailingTx` (so ``db.run`` owns the transaction)."""
    return await unit(FailingTx(tx, allowed), **kwargs)


async def _snapshot(tx: Tx) -> dict[str, str]:
    out = {}
    for table in MONEY_TABLES:
        out[table] = await tx.fetchval(
            f"SELECT coalesce(jsonb_agg(to_jsonb(t) ORDER BY t::text), '[]'::jsonb)::text FROM {table} t"
        )
    return out


async def snapshot(db: Database) -> dict[str, str]:
    """Every money table as text, for "nothing changed" comparisons."""
    return await db.run(_snapshot)


async def setup_catalog(db: Database) -> None:
    """Sync the test catalogue."""
    await db.run(sync_plans, catalog=CATALOG, now=NOW)


async def add_user(db: Database, user_id: int, *, ref_of: str | None = None) -> str:
    """Register a user (optionally through a referral link); return their referral code."""
    reg = await db.run(
        register_user,
        user_id=user_id,
        username=f"u{user_id}",
        first_name="Test",
        language="ru",
        start_payload=None if ref_of is None else f"ref_{ref_of}",
        now=NOW,
    )
    return reg.user.referral_code


async def topup_intent(
    db: Database, user_id: int, amount: int, *, now: dt.datetime = NOW, promo_code: str | None = None
) -> PaymentIntent:
    """Create (not apply) a Crypto Pay top-up intent of ``amount`` in RUB (with ``promo_code``, if any)."""
    intent: PaymentIntent = await db.run(
        create_payment_intent,
        user_id=user_id,
        provider="cryptopay",
        purpose="topup",
        amount_minor=amount,
        currency=RUB,
        promo_code=promo_code,
        balance_currency=RUB,
        ttl=TTL,
        now=now,
    )
    return intent


async def topup(db: Database, user_id: int, amount: int, *, now: dt.datetime = NOW) -> PaymentIntent:
    """Create and apply a Crypto Pay top-up of ``amount``."""
    intent = await topup_intent(db, user_id, amount, now=now)
    await db.run(attach_and_apply, intent=intent, now=now)
    return intent


async def attach_and_apply(tx: Tx, *, intent: PaymentIntent, now: dt.datetime) -> None:
    """Apply ``intent`` as paid in full (invoice id ``inv-<id>``)."""
    await apply_payment(
        tx,
        provider=intent.provider,
        external_id=f"inv-{intent.payment_id}",
        payload=intent.payload,
        paid_amount_minor=intent.amount_minor,
        paid_currency=intent.currency,
        referral_policy=POLICY,
        balance_currency=RUB,
        now=now,
    )


async def add_promo(db: Database, code: str, kind: PromoKind, value: int, **fields: Any) -> None:
    """Create a promo code as the test admin."""
    if kind in (PromoKind.FIXED, PromoKind.BALANCE_BONUS) or "cap_minor" in fields:
        fields.setdefault("currency", Currency(RUB))
    await db.run(
        create_promo_code,
        admin_id=ADMIN,
        promo=PromoCode(code, kind, value, **fields),
        reason="test",
        now=NOW,
    )


async def scalar(db: Database, query: str, *args: Any) -> Any:
    """One value of a query, in its own transaction."""

    async def unit(tx: Tx) -> Any:
        return await tx.fetchval(query, *args)

    return await db.run(unit)


async def rows(db: Database, query: str, *args: Any) -> list[dict[str, Any]]:
    """All rows of a small query, as dicts."""

    async def unit(tx: Tx) -> list[dict[str, Any]]:
        return [dict(r) for r in await tx.fetch(query, *args, bounded_by="test tables are small")]

    return await db.run(unit)


async def ledger_consistent(db: Database) -> list[dict[str, Any]]:
    """Users whose cached balance differs from the sum of their ledger (should be empty)."""
    return await rows(
        db,
        """
        SELECT u.id, u.balance_minor, coalesce(l.total, 0) AS total FROM users u
        LEFT JOIN (SELECT user_id, sum(amount_minor) AS total FROM ledger GROUP BY user_id) l
          ON l.user_id = u.id
        WHERE u.balance_minor <> coalesce(l.total, 0)
        """,
    )
