"""The batch workers (renewal, expiry, reminders, trial notices) on real rows, tick by tick.

The predecessor's auto-renewal crashed on its first row (a NameError) and nobody noticed; these
tests run every worker's tick over real subscriptions, across several batches, twice (a second tick
must do nothing new).
"""

from __future__ import annotations

import datetime as dt
import random

from atlas.actors.expiry import ExpiryWorker
from atlas.actors.reminders import ReminderWorker
from atlas.actors.renewal import RenewalWorker
from atlas.clock import Clock
from atlas.domain import SubscriptionKind
from atlas.storage import Database
from atlas.storage.units.purchases import buy_plan_from_balance
from atlas.storage.units.subscriptions import set_auto_renew, start_trial
from tests._money_support import CATALOG, DAY, NOW, RUB, add_user, scalar, setup_catalog, topup


async def _paid_users(db: Database, first_id: int, count: int, *, balance: int) -> None:
    for user_id in range(first_id, first_id + count):
        await add_user(db, user_id)
        await topup(db, user_id, balance)
        await db.run(
            buy_plan_from_balance, user_id=user_id, plan_code="m1", currency=RUB, promo_code=None,
            idempotency_key=f"buy-{user_id}", now=NOW,
        )
        await db.run(set_auto_renew, user_id=user_id, enabled=True, now=NOW)


async def test_renewal_worker_renews_every_due_subscription_once_across_batches(db: Database) -> None:
    await setup_catalog(db)
    await _paid_users(db, 1000, 60, balance=20_000)  # m1 costs 10_000: one renewal covered
    await _paid_users(db, 2000, 3, balance=10_000)  # nothing left after the purchase

    def worker(at: dt.datetime) -> RenewalWorker:
        return RenewalWorker(db=lambda: db, clock=Clock(at), rng=random.Random(1), catalog=CATALOG,
                             currency=RUB, batch=25)

    almost_expired = NOW + 29 * DAY + dt.timedelta(hours=12)
    first = worker(almost_expired)
    await first.tick()
    assert (first.renewed, first.insufficient) == (60, 3)
    again = worker(almost_expired + dt.timedelta(hours=1))
    await again.tick()
    assert again.renewed == 0

    renewals = await scalar(db, "SELECT count(*) FROM ledger WHERE kind = 'renewal'")
    notices = await scalar(db, "SELECT count(*) FROM outbox WHERE kind = 'renewal.insufficient'")
    extended = await scalar(
        db, "SELECT count(*) FROM subscriptions WHERE expires_at = $1", NOW + 60 * DAY
    )
    broke = await scalar(db, "SELECT count(*) FROM users WHERE balance_minor < 0")
    assert (renewals, notices, extended, broke) == (60, 3, 60, 0)


async def test_expiry_and_trial_workers_end_trials_once_and_revoke_their_keys(db: Database) -> None:
    await setup_catalog(db)
    for user_id in range(3000, 3030):
        await add_user(db, user_id)
        await db.run(start_trial, user_id=user_id, trial_days=3, now=NOW)

    # Six hours before the end: one trial reminder each, once.
    trial = ReminderWorker(db=lambda: db, clock=Clock(NOW + 3 * DAY - dt.timedelta(hours=5)),
                           rng=random.Random(2), currency=RUB, kind=SubscriptionKind.TRIAL, batch=7)
    await trial.tick()
    await trial.tick()
    assert trial.enqueued == 30
    assert trial.expired == 0

    expiry = ExpiryWorker(db=lambda: db, clock=Clock(NOW + 3 * DAY + dt.timedelta(minutes=1)),
                          rng=random.Random(3), batch=8)
    await expiry.tick()
    await expiry.tick()
    assert expiry.expired == 30

    active = await scalar(db, "SELECT count(*) FROM subscriptions WHERE status = 'active'")
    present = await scalar(db, "SELECT count(*) FROM vpn_keys WHERE desired = 'present'")
    per_user = await scalar(
        db, "SELECT max(n) FROM (SELECT chat_id, kind, count(*) AS n FROM outbox GROUP BY chat_id, kind) t"
    )
    expired_notices = await scalar(db, "SELECT count(*) FROM outbox WHERE kind LIKE '%expired%'")
    assert (active, present) == (0, 0)
    assert per_user == 1  # every kind of notice reached each user exactly once
    assert expired_notices == 30
