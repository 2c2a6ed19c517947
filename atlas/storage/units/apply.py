"""Applying a payment, exactly once per ``(provider, external_id)`` (contract 6).

The webhook, the payment watcher and a replayed webhook may all call :func:`apply_payment` for the
same payment at the same moment. Exactly one applies it:

1. an unlocked look-up finds the payment and its payer;
2. the payer and their referrer are locked (ascending id), then the payer's subscription; this
   serialises every application of the payer's payments;
3. the payment is read again, locked, and only a ``pending`` (or ``expired``: the user paid after
   our intent lapsed, and their money is real) payment goes on, through one conditional state change
   ``UPDATE ... WHERE status IN ('pending', 'expired')``;
4. in the same transaction, every effect: the top-up credit (ledger ``payment:<id>`` and its bonus)
   or the plan's days (+ a promo's free days and balance bonus), the promo redemption, the referral
   reward, ``users.first_paid_at``, and the notices. All or nothing.

A second, different charge for a payload that is already attached to another charge (a Stars
invoice link paid twice) is real money that matches no intent: it is recorded as a new ``flagged``
payment for an admin to refund, never applied. A paid amount or currency that differs from the
intent flags the intent itself (``status_reason`` says what differed) and applies nothing.

Referral reward base: the amount paid when it is in the balance currency (a top-up's bonus is not
counted). A plan paid in another currency (Stars, a foreign fiat) is converted through the plan's
own prices: ``price_in_balance_currency × paid / price_in_paid_currency``, so a promo discount
lowers the reward in proportion; without both prices the base is 0 (a fixed reward is then 0 too,
as the domain caps a reward at the payment).
"""

from __future__ import annotations

import datetime as dt

from atlas.domain import Currency, ReferralPolicy, referral_reward
from atlas.storage.tx import Record, Tx
from atlas.storage.units import ledger
from atlas.storage.units._rows import check_now, from_json, lock_subscription, lock_users
from atlas.storage.units.ledger import LedgerKind
from atlas.storage.units.outbox import enqueue_message
from atlas.storage.units.payments import Provider, Purpose, check_external_id, new_payload
from atlas.storage.units.promo import find_promo, redeem_promo
from atlas.storage.units.records import ApplyOutcome, PaymentResult
from atlas.storage.units.subscriptions import grant_paid_time

_PAYMENT_COLUMNS = (
    "id, user_id, provider, external_id, payload, purpose, plan_code, amount_minor, currency, "
    "credit_minor, bonus_days, days, promo_code, status, status_reason"
)


async def _find(
    tx: Tx,
    *,
    provider: str,
    external_id: str | None,
    payload: str | None,
    payment_id: int | None,
    lock: bool,
) -> Record | None:
    suffix = " FOR UPDATE" if lock else ""
    if external_id is not None:
        row = await tx.fetchrow(
            f"SELECT {_PAYMENT_COLUMNS} FROM payments WHERE provider = $1 AND external_id = $2{suffix}",
            provider,
            external_id,
        )
        if row is not None:
            return row
    if payload is not None:
        row = await tx.fetchrow(
            f"SELECT {_PAYMENT_COLUMNS} FROM payments WHERE payload = $1{suffix}", payload
        )
    elif payment_id is not None:
        row = await tx.fetchrow(f"SELECT {_PAYMENT_COLUMNS} FROM payments WHERE id = $1{suffix}", payment_id)
    else:
        row = None
    if row is None or row["provider"] != provider:
        return None
    return row


async def apply_payment(
    tx: Tx,
    *,
    provider: str,
    paid_amount_minor: int,
    paid_currency: str,
    referral_policy: ReferralPolicy,
    balance_currency: str,
    now: dt.datetime,
    external_id: str | None = None,
    payload: str | None = None,
    payment_id: int | None = None,
) -> PaymentResult:
    """Apply a paid payment found by ``external_id``, else ``payload``, else ``payment_id``.

    Returns the outcome (:class:`ApplyOutcome`); never raises for a payment that is unknown,
    already applied or mismatched. Stars: pass ``external_id=telegram_payment_charge_id`` and
    ``payload=invoice_payload``. See the module docstring for the guarantees.
    """
    check_now(now)
    chosen = Provider(provider).value
    if external_id is not None:
        check_external_id(external_id)
    if external_id is None and payload is None and payment_id is None:
        raise ValueError("apply_payment needs an external_id, a payload or a payment_id")
    probe = await _find(
        tx, provider=chosen, external_id=external_id, payload=payload, payment_id=payment_id, lock=False
    )
    if probe is None:
        return PaymentResult(ApplyOutcome.UNKNOWN, reason="no_such_payment")
    payer_id = probe["user_id"]
    referrer_id = await tx.fetchval("SELECT referrer_id FROM users WHERE id = $1", payer_id)
    users = await lock_users(tx, [payer_id] if referrer_id is None else [payer_id, referrer_id])
    payer = users[payer_id]
    if payer["referrer_id"] is not None and payer["referrer_id"] not in users:
        # Recorded between the probe and the lock (rare): lock it now, after the payer.
        users.update(await lock_users(tx, [payer["referrer_id"]]))
    sub = await lock_subscription(tx, payer_id)
    payment = await _find(
        tx, provider=chosen, external_id=external_id, payload=payload, payment_id=payment_id, lock=True
    )
    if payment is None or payment["user_id"] != payer_id:
        return PaymentResult(ApplyOutcome.UNKNOWN, reason="no_such_payment")
    if external_id is not None and payment["external_id"] not in (None, external_id):
        return await _record_second_charge(tx, payment, external_id, paid_amount_minor, paid_currency, now)
    if payment["status"] in ("applied", "refunded"):
        return _result(ApplyOutcome.ALREADY_APPLIED, payment)
    if payment["status"] == "flagged":
        return _result(ApplyOutcome.FLAGGED, payment, payment["status_reason"])
    mismatch = _mismatch(payment, paid_amount_minor, paid_currency)
    if mismatch is not None:
        await tx.execute(
            """
            UPDATE payments SET status = 'flagged', status_reason = $2,
                external_id = coalesce(external_id, $3)
            WHERE id = $1 AND status IN ('pending', 'expired')
            """,
            payment["id"],
            mismatch,
            external_id,
        )
        return _result(ApplyOutcome.FLAGGED, payment, mismatch)
    changed = await tx.fetchval(
        """
        UPDATE payments SET status = 'applied', applied_at = $2, external_id = coalesce(external_id, $3)
        WHERE id = $1 AND status IN ('pending', 'expired')
        RETURNING id
        """,
        payment["id"],
        now,
        external_id,
    )
    if changed is None:  # cannot happen under the locks; refuse to apply effects without the change
        return _result(ApplyOutcome.ALREADY_APPLIED, payment)
    return await _apply_effects(tx, payment, users, sub, referral_policy, Currency.of(balance_currency), now)


def _result(outcome: ApplyOutcome, payment: Record, reason: str | None = None) -> PaymentResult:
    return PaymentResult(
        outcome,
        payment_id=payment["id"],
        user_id=payment["user_id"],
        purpose=payment["purpose"],
        reason=reason,
    )


def _mismatch(payment: Record, paid_amount_minor: int, paid_currency: str) -> str | None:
    currency = paid_currency.strip().upper() if isinstance(paid_currency, str) else repr(paid_currency)
    if currency != payment["currency"]:
        return f"currency: paid {currency[:16]}, expected {payment['currency']}"
    if isinstance(paid_amount_minor, bool) or not isinstance(paid_amount_minor, int):
        return f"amount: paid {paid_amount_minor!r:.32}, expected {payment['amount_minor']}"
    if paid_amount_minor != payment["amount_minor"]:
        return f"amount: paid {paid_amount_minor}, expected {payment['amount_minor']}"
    return None


async def _record_second_charge(
    tx: Tx, payment: Record, external_id: str, paid_amount_minor: int, paid_currency: str, now: dt.datetime
) -> PaymentResult:
    currency = paid_currency.strip().upper() if isinstance(paid_currency, str) else ""
    valid_amount = isinstance(paid_amount_minor, int) and 0 < paid_amount_minor <= 10**15
    new_id = await tx.fetchval(
        """
        INSERT INTO payments (user_id, provider, external_id, payload, purpose, plan_code, amount_minor,
                              currency, credit_minor, bonus_days, days, promo_code, status, status_reason,
                              created_at, expires_at)
        VALUES ($1, $2, $3, $4, $5, $6, $7, $8, 0, 0, $9, NULL, 'flagged', $10, $11, $11)
        ON CONFLICT DO NOTHING
        RETURNING id
        """,
        payment["user_id"],
        payment["provider"],
        external_id,
        new_payload(),
        payment["purpose"],
        payment["plan_code"],
        paid_amount_minor if valid_amount else payment["amount_minor"],
        currency if len(currency) == 3 and currency.isalpha() else payment["currency"],
        payment["days"],
        f"second_charge: payload of payment {payment['id']} was already paid",
        now,
    )
    return PaymentResult(
        ApplyOutcome.FLAGGED,
        payment_id=None if new_id is None else int(new_id),
        user_id=payment["user_id"],
        purpose=payment["purpose"],
        reason="second_charge",
    )


async def _apply_effects(
    tx: Tx,
    payment: Record,
    users: dict[int, Record],
    sub: Record | None,
    policy: ReferralPolicy,
    balance_currency: Currency,
    now: dt.datetime,
) -> PaymentResult:
    payment_id: int = payment["id"]
    payer = users[payment["user_id"]]
    balance: int = payer["balance_minor"]
    key = f"payment:{payment_id}"
    expires_at: dt.datetime | None = None
    bonus = payment["credit_minor"]
    if payment["purpose"] == Purpose.TOPUP:
        bonus -= payment["amount_minor"]
        balance = await _credit(
            tx, payer["id"], balance, payment["amount_minor"], LedgerKind.TOPUP, key, key, now
        )
        if sub is not None:  # money arrived: let a waiting renewal try again at once
            await tx.execute("UPDATE subscriptions SET renew_next_try_at = NULL WHERE id = $1", sub["id"])
    else:
        row = await grant_paid_time(
            tx, user=payer, sub=sub, days=payment["days"], plan_code=payment["plan_code"], now=now
        )
        expires_at = row["expires_at"]
    if bonus > 0:
        reference = f"promo:{payment['promo_code']}"
        balance = await _credit(
            tx, payer["id"], balance, bonus, LedgerKind.PROMO_BONUS, reference, f"{key}:bonus", now
        )
    if payment["promo_code"] is not None:
        promo = await find_promo(tx, payment["promo_code"], lock=True)
        if promo is not None:
            await redeem_promo(
                tx, promo=promo, user_id=payer["id"], payment_id=payment_id, reference=key, now=now
            )
    reward = await _referral(tx, payment, users, policy, balance_currency, now)
    await tx.execute(
        "UPDATE users SET first_paid_at = coalesce(first_paid_at, $2) WHERE id = $1", payer["id"], now
    )
    await enqueue_message(
        tx,
        chat_id=payer["id"],
        kind=f"payment.applied.{payment['purpose']}",
        payload={
            "payment_id": payment_id,
            "amount_minor": payment["amount_minor"],
            "currency": payment["currency"],
            "credit_minor": payment["credit_minor"],
            "plan": payment["plan_code"],
            "days": payment["days"],
            "expires_at": expires_at,
            "balance_minor": balance,
        },
        dedupe_key=f"payment-applied:{payment_id}",
        now=now,
    )
    return PaymentResult(
        ApplyOutcome.APPLIED,
        payment_id=payment_id,
        user_id=payer["id"],
        purpose=payment["purpose"],
        credited_minor=payment["credit_minor"],
        expires_at=expires_at,
        referral_reward_minor=reward,
    )


async def _credit(
    tx: Tx,
    user_id: int,
    balance: int,
    amount: int,
    kind: LedgerKind,
    reference: str,
    key: str,
    now: dt.datetime,
) -> int:
    posted = await ledger.post(
        tx,
        user_id=user_id,
        balance_minor=balance,
        amount_minor=amount,
        kind=kind,
        reference=reference,
        idempotency_key=key,
        now=now,
    )
    # The payment's state change is the guard; a key already posted would mean a second application.
    if posted is None:
        raise AssertionError(f"ledger key {key!r} already posted for a payment being applied now")
    return posted


async def _referral(
    tx: Tx,
    payment: Record,
    users: dict[int, Record],
    policy: ReferralPolicy,
    balance_currency: Currency,
    now: dt.datetime,
) -> int:
    payer = users[payment["user_id"]]
    referrer_id = payer["referrer_id"]
    if referrer_id is None:
        return 0
    base = await _reward_base(tx, payment, balance_currency)
    reward = referral_reward(
        policy, payment_amount_minor=base, is_first_payment=payer["first_paid_at"] is None
    )
    if reward <= 0:
        return 0
    referrer = users[referrer_id]
    key = f"referral:payment:{payment['id']}"
    await _credit(
        tx, referrer_id, referrer["balance_minor"], reward, LedgerKind.REFERRAL_REWARD, key, key, now
    )
    await tx.execute(
        """
        INSERT INTO referral_rewards (referrer_id, referred_id, payment_id, amount_minor, created_at)
        VALUES ($1, $2, $3, $4, $5)
        """,
        referrer_id,
        payer["id"],
        payment["id"],
        reward,
        now,
    )
    await enqueue_message(
        tx,
        chat_id=referrer_id,
        kind="referral.reward",
        payload={"amount_minor": reward, "currency": balance_currency.code, "referred_id": payer["id"]},
        dedupe_key=f"referral-reward:{payment['id']}",
        now=now,
    )
    return reward


async def _reward_base(tx: Tx, payment: Record, balance_currency: Currency) -> int:
    if payment["currency"] == balance_currency.code:
        return int(payment["amount_minor"])
    if payment["purpose"] != Purpose.PLAN:
        return 0
    row = await tx.fetchrow("SELECT prices, stars_price FROM plans WHERE code = $1", payment["plan_code"])
    if row is None:
        return 0
    prices = from_json(row["prices"])
    in_balance = prices.get(balance_currency.code)
    in_paid = row["stars_price"] if payment["currency"] == "XTR" else prices.get(payment["currency"])
    if not in_balance or not in_paid:
        return 0
    return int(in_balance) * int(payment["amount_minor"]) // int(in_paid)
