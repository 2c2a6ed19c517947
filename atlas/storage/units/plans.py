"""The ``plans`` table mirrors the reviewed plan file (:func:`atlas.domain.load_plan_catalog`).

:func:`sync_plans` runs at start: every plan in the file is written, a plan missing from the file is
kept (subscriptions and payments refer to it) but taken off sale. Units that sell read the plan back
as a domain :class:`~atlas.domain.Plan` with :func:`load_plan`, so the same rules price it.
"""

from __future__ import annotations

import datetime as dt

from atlas.domain import Currency, Plan, PlanCatalog, UnknownPlan
from atlas.storage.tx import Record, Tx
from atlas.storage.units._rows import check_now, from_json, status_count, to_json
from atlas.storage.units.records import PlanSync

_PLAN_COLUMNS = "code, duration_days, for_sale, prices, stars_price, titles"
# The plan file is reviewed configuration: a catalogue this long is a mistake, not a product range.
MAX_PLANS = 1000


async def sync_plans(tx: Tx, *, catalog: PlanCatalog, now: dt.datetime) -> PlanSync:
    """Upsert every plan of ``catalog``; plans in the table but not in it become ``for_sale=false``."""
    check_now(now)
    plans = list(catalog)
    if len(plans) > MAX_PLANS:
        raise ValueError(f"a catalogue of {len(plans)} plans (more than {MAX_PLANS}) is not plausible")
    await tx.executemany(
        """
        INSERT INTO plans (code, duration_days, for_sale, prices, stars_price, titles, synced_at)
        VALUES ($1, $2, $3, $4::jsonb, $5, $6::jsonb, $7)
        ON CONFLICT (code) DO UPDATE SET
            duration_days = EXCLUDED.duration_days, for_sale = EXCLUDED.for_sale,
            prices = EXCLUDED.prices, stars_price = EXCLUDED.stars_price,
            titles = EXCLUDED.titles, synced_at = EXCLUDED.synced_at
        """,
        [
            (
                plan.code,
                plan.duration_days,
                plan.for_sale,
                to_json({currency.code: price for currency, price in plan.prices.items()}),
                plan.stars_price,
                to_json(dict(plan.titles)),
                now,
            )
            for plan in plans
        ],
    )
    retired = await tx.execute(
        "UPDATE plans SET for_sale = false, synced_at = $2 WHERE for_sale AND NOT (code = ANY($1::text[]))",
        [plan.code for plan in plans],
        now,
    )
    return PlanSync(upserted=len(plans), retired=status_count(retired))


def plan_from_row(row: Record) -> Plan:
    """A plans row as the domain's :class:`Plan` (titles fall back to the code if none are stored)."""
    prices = {Currency(code): int(price) for code, price in from_json(row["prices"]).items()}
    titles = from_json(row["titles"]) or {"en": row["code"]}
    return Plan(
        code=row["code"],
        duration_days=row["duration_days"],
        prices=prices,
        stars_price=row["stars_price"],
        titles=titles,
        for_sale=row["for_sale"],
    )


async def load_plan(tx: Tx, code: str) -> Plan:
    """The plan with this code, for sale or not; :class:`~atlas.domain.UnknownPlan` if none."""
    if not isinstance(code, str) or not code or len(code) > 64:
        raise UnknownPlan(str(code)[:64])
    row = await tx.fetchrow(f"SELECT {_PLAN_COLUMNS} FROM plans WHERE code = $1", code)
    if row is None:
        raise UnknownPlan(code)
    return plan_from_row(row)


async def plans_for_sale(tx: Tx) -> list[Plan]:
    """The plans a user may buy now (the buttons), by duration."""
    rows = await tx.fetch(
        f"SELECT {_PLAN_COLUMNS} FROM plans WHERE for_sale ORDER BY duration_days, code LIMIT {MAX_PLANS}"
    )
    return [plan_from_row(row) for row in rows]


async def plan_codes(tx: Tx) -> frozenset[str]:
    """Every known plan code (for validating a promo code's ``applies_to``)."""
    rows = await tx.fetch(f"SELECT code FROM plans ORDER BY code LIMIT {MAX_PLANS}")
    return frozenset(row["code"] for row in rows)
