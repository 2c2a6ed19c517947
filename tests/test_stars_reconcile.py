"""The Stars reconcile (issue 11 item 1): no charge is lost, whatever happened to its update.

The Bot API emulator over real HTTP (``getStarTransactions``, ``refundStarPayment``) with the real
aiogram Bot, real PostgreSQL, the payments router answering pre-checkout queries.
"""

from __future__ import annotations

import datetime as dt
import json
import random

import pytest
from aiogram.exceptions import TelegramBadRequest

from atlas.actors.stars_reconciler import CURSOR, StarsReconciler
from atlas.clock import Clock
from atlas.payments.stars import send_stars_invoice
from atlas.payments.stars_reconcile import BotStarsLedger
from atlas.storage import Database
from tests._money_support import POLICY, RUB, add_user, rows, scalar, setup_catalog, snapshot
from tests.test_payments_flows import StarsBot, payment_row, stars_bot, stars_intent


def reconciler(
    s: StarsBot, *, grace: dt.timedelta = dt.timedelta(0), page_size: int = 100
) -> StarsReconciler:
    # The emulator dates its history with the real clock; so does this reconcile.
    return StarsReconciler(
        db=s.db.as_db,
        ledger=BotStarsLedger(s.bot),
        clock=Clock(),
        rng=random.Random(3),
        referral_policy=POLICY,
        balance_currency=RUB,
        page_size=page_size,
        grace=grace,
    )


async def test_a_charge_whose_update_never_arrived_is_applied_an_unknown_one_refunded_once(
    db: Database,
) -> None:
    await setup_catalog(db)
    await add_user(db, 701)
    await add_user(db, 702)
    async with stars_bot(db) as s:
        payer = s.emulator.add_user(701, "Lost", language_code="en")
        s.emulator.add_user(702, "Stranger", language_code="en")
        intent = await stars_intent(s, 701)
        await send_stars_invoice(
            s.bot, chat_id=701, intent=intent, title="Atlas VPN", description="30 days", label="m1"
        )
        outcome = await payer.pay_stars(await payer.next_message(), deliver=False)
        assert outcome.ok and outcome.charge is not None
        lost = outcome.charge.telegram_payment_charge_id
        stranger = s.emulator.add_star_charge(702, 7, invoice_payload="a payload Atlas never made")
        underpaid = await stars_intent(s, 702)
        short = s.emulator.add_star_charge(702, 20, invoice_payload=underpaid.payload)  # 50 were due
        assert (await payment_row(db, intent.payment_id))["status"] == "pending"  # nothing reached us

        # A reconcile whose grace has not passed touches nothing.
        waiting = reconciler(s, grace=dt.timedelta(hours=1))
        await waiting.tick()
        assert (waiting.applied, waiting.refunded) == (0, 0)
        assert await scalar(db, f"SELECT count(*) FROM reconcile_cursors WHERE name = '{CURSOR}'") == 0

        r = reconciler(s, page_size=2)  # two pages: the walk continues across them
        await r.tick()
        assert (r.applied, r.refunded, r.refusals, r.outages) == (1, 2, 0, 0)
        row = await payment_row(db, intent.payment_id)
        assert row["status"] == "applied" and row["external_id"] == lost
        assert await scalar(db, "SELECT count(*) FROM subscriptions WHERE user_id = 701") == 1
        assert sorted(x.telegram_payment_charge_id for x in s.emulator.refunds) == sorted(
            [stranger.telegram_payment_charge_id, short.telegram_payment_charge_id]
        )
        assert (await payment_row(db, underpaid.payment_id))["status"] == "refunded"
        returned = await rows(
            db, "SELECT chat_id, payload FROM outbox WHERE kind = 'payment.returned' ORDER BY id LIMIT 10"
        )
        amounts = [(n["chat_id"], json.loads(n["payload"])["amount_minor"]) for n in returned]
        assert amounts == [(702, 7), (702, 20)]
        assert await scalar(db, "SELECT count(*) FROM provider_refunds WHERE state = 'done'") == 2

        # Running it again changes nothing, and so does a walk from the very beginning.
        before = await snapshot(db)
        calls = s.emulator.calls["refundStarPayment"]
        await r.tick()
        await db.run(_reset_cursor)
        await reconciler(s).tick()
        assert await snapshot(db) == before
        assert s.emulator.calls["refundStarPayment"] == calls
        assert len(s.emulator.refunds) == 2


async def _reset_cursor(tx: object) -> None:
    await tx.execute("UPDATE reconcile_cursors SET position = 0")  # type: ignore[attr-defined]


async def test_a_refund_recorded_but_not_confirmed_is_finished_by_the_next_pass(db: Database) -> None:
    await setup_catalog(db)
    await add_user(db, 711)
    async with stars_bot(db) as s:
        s.emulator.add_user(711, "Crash", language_code="en")
        charge = s.emulator.add_star_charge(711, 9, invoice_payload="unknown")
        s.emulator.inject("refundStarPayment", error=500, count=1)  # Telegram fails after we recorded it
        r = reconciler(s)
        await r.tick()
        assert r.outages == 1 and s.emulator.refunds == ()
        state = "SELECT state FROM provider_refunds WHERE external_id = $1"
        assert await scalar(db, state, charge.telegram_payment_charge_id) == "pending"
        await r.tick()
        refunded = [x.telegram_payment_charge_id for x in s.emulator.refunds]
        assert refunded == [charge.telegram_payment_charge_id]
        assert await scalar(db, state, charge.telegram_payment_charge_id) == "done"
        assert await scalar(db, "SELECT count(*) FROM outbox WHERE kind = 'payment.returned'") == 1


async def test_get_star_transactions_pages_oldest_first_with_refunds(db: Database) -> None:
    async with stars_bot(db) as s:
        s.emulator.add_user(721, "Pager")
        charges = [s.emulator.add_star_charge(721, n, invoice_payload=f"p{n}") for n in (1, 2, 3)]
        ledger = BotStarsLedger(s.bot)
        await ledger.refund(user_id=721, charge_id=charges[0].telegram_payment_charge_id)
        first = await ledger.transactions(offset=0, limit=2)
        rest = await ledger.transactions(offset=2, limit=100)
        assert [t.id for t in first + rest] == [c.telegram_payment_charge_id for c in charges] + [
            charges[0].telegram_payment_charge_id
        ]
        assert [t.incoming for t in first + rest] == [True, True, True, False]
        assert [t.payload for t in first] == ["p1", "p2"] and rest[-1].user_id == 721
        assert await ledger.transactions(offset=10, limit=5) == []
        for bad in ({"limit": 101}, {"limit": 0}, {"offset": -1}):
            with pytest.raises(TelegramBadRequest):
                await s.bot.get_star_transactions(**bad)
