"""Applying a payment, exactly once per ``(provider, external_id)`` (contract 6), in two statements.

The webhook, the payment watcher and a replayed webhook may all call :func:`apply_payment` for the
same payment at the same moment. Exactly one applies it:

1. **lock and read** (one statement, :data:`~._apply_sql.LOCK_AND_READ`): the payment is found by
   ``external_id``, else ``payload``, else ``payment_id``; the payer and their referrer are locked
   (ascending id), then the payer's subscription, the payment and its promo code, the package's
   lock order. This serialises every application of the payer's payments, so what is read is what
   will be changed;
2. the decisions are made here, in Python, by the domain: only a ``pending`` (or ``expired``: the
   user paid after our intent lapsed, and their money is real) payment goes on; the new expiry
   (:func:`~atlas.domain.grant_paid`), the ledger rows and the balances they lead to, the referral
   reward, the notices;
3. **write** (one statement, :data:`~._apply_sql.APPLY_EFFECTS`): the conditional state change
   ``pending|expired → applied`` and, reading it, every effect: the top-up credit (ledger
   ``payment:<id>`` and its bonus) or the plan's days (+ a promo's free days and balance bonus) with
   a present key, the cached balances, the promo redemption, the referral reward,
   ``users.first_paid_at``, and the notices (outbox, dedupe keys ``payment-applied:<id>`` and
   ``referral-reward:<id>``). All or nothing. The balances it returns are checked against the
   domain's.

With ``BEGIN`` and ``COMMIT`` that is four round trips (a refusal or a replay: three or four). A
snapshot made stale by a lock wait (see :mod:`._apply_sql`) raises
:class:`~atlas.storage.units.errors.SnapshotMoved`, and ``db.run`` runs the unit again.

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
import uuid
from dataclasses import dataclass, field

from atlas.domain import (
    Currency,
    ReferralPolicy,
    SubscriptionKind,
    SubscriptionState,
    SubscriptionStatus,
    credit,
    grant_paid,
    referral_reward,
)
from atlas.storage.tx import Record, Tx
from atlas.storage.units._apply_sql import (
    APPLY_EFFECTS,
    FLAG_MISMATCH,
    LOCK_AND_READ,
    RECORD_SECOND_CHARGE,
)
from atlas.storage.units._rows import check_now, from_json, to_json
from atlas.storage.units.errors import SnapshotMoved
from atlas.storage.units.ledger import LedgerKind
from atlas.storage.units.outbox import MAX_DEDUPE_KEY
from atlas.storage.units.payments import Provider, Purpose, check_external_id, new_payload
from atlas.storage.units.records import NOTHING_PAID_KNOWN, ApplyOutcome, PaidDetails, PaymentResult
from atlas.storage.units.subscriptions import new_token


@dataclass
class _Effects:
    """What applying one payment writes, decided before the write statement."""

    entries: list[tuple[int, int, LedgerKind, str, str]] = field(default_factory=list)
    balances: dict[int, int] = field(default_factory=dict)
    notices: list[tuple[int, str, str, str]] = field(default_factory=list)

    def credit(self, user_id: int, amount: int, kind: LedgerKind, reference: str, key: str) -> None:
        """A ledger row and the balance it leads to (the domain's :func:`credit` checks the sum)."""
        self.balances[user_id] = credit(self.balances[user_id], amount)
        self.entries.append((user_id, amount, kind, reference, key))

    def notice(self, chat_id: int, kind: str, payload: dict[str, object], dedupe_key: str) -> None:
        """An outbox message, written with the payment or not at all."""
        if not dedupe_key or len(dedupe_key) > MAX_DEDUPE_KEY:
            raise ValueError(f"bad dedupe key {dedupe_key!r}")
        self.notices.append((chat_id, kind, to_json(payload), dedupe_key))


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
    paid: PaidDetails = NOTHING_PAID_KNOWN,
) -> PaymentResult:
    """Apply a paid payment found by ``external_id``, else ``payload``, else ``payment_id``.

    Returns the outcome (:class:`ApplyOutcome`); never raises for a payment that is unknown,
    already applied or mismatched. Stars: pass ``external_id=telegram_payment_charge_id`` and
    ``payload=invoice_payload``. ``paid`` (what the provider says was paid: asset, amount, rates,
    fee) is stored with the payment, applied or flagged. See the module docstring for the guarantees.
    """
    check_now(now)
    chosen = Provider(provider).value
    paid_columns = paid.columns()
    if external_id is not None:
        check_external_id(external_id)
    if external_id is None and payload is None and payment_id is None:
        raise ValueError("apply_payment needs an external_id, a payload or a payment_id")
    rows = await tx.fetch(LOCK_AND_READ, chosen, external_id, payload, payment_id)
    if not rows:
        return PaymentResult(ApplyOutcome.UNKNOWN, reason="no_such_payment")
    payment = rows[0]
    users = {row["u_id"]: row for row in rows}
    payer = users[payment["user_id"]]
    if payer["u_referrer_id"] is not None and payer["u_referrer_id"] not in users:
        raise SnapshotMoved(f"payment {payment['id']}: the payer's referrer was set during the lock wait")
    if external_id is not None and payment["external_id"] not in (None, external_id):
        return await _record_second_charge(
            tx, payment, external_id, paid_amount_minor, paid_currency, paid_columns, now
        )
    if payment["status"] in ("applied", "refunded"):
        return _result(ApplyOutcome.ALREADY_APPLIED, payment)
    if payment["status"] == "flagged":
        return _result(ApplyOutcome.FLAGGED, payment, payment["status_reason"])
    mismatch = _mismatch(payment, paid_amount_minor, paid_currency)
    if mismatch is not None:
        await tx.execute(FLAG_MISMATCH, payment["id"], mismatch, external_id, *paid_columns)
        return _result(ApplyOutcome.FLAGGED, payment, mismatch)
    return await _apply(
        tx, payment, users, external_id, paid_columns, referral_policy, Currency.of(balance_currency), now
    )


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
    tx: Tx,
    payment: Record,
    external_id: str,
    paid_amount_minor: int,
    paid_currency: str,
    paid_columns: tuple[object, ...],
    now: dt.datetime,
) -> PaymentResult:
    currency = paid_currency.strip().upper() if isinstance(paid_currency, str) else ""
    valid_amount = isinstance(paid_amount_minor, int) and 0 < paid_amount_minor <= 10**15
    new_id = await tx.fetchval(
        RECORD_SECOND_CHARGE,
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
        *paid_columns,
    )
    return PaymentResult(
        ApplyOutcome.FLAGGED,
        payment_id=None if new_id is None else int(new_id),
        user_id=payment["user_id"],
        purpose=payment["purpose"],
        reason="second_charge",
    )


def _subscription(row: Record) -> SubscriptionState | None:
    if row["s_id"] is None:
        return None
    return SubscriptionState(
        SubscriptionKind(row["s_kind"]), SubscriptionStatus(row["s_status"]), row["s_expires_at"]
    )


async def _apply(
    tx: Tx,
    payment: Record,
    users: dict[int, Record],
    external_id: str | None,
    paid_columns: tuple[object, ...],
    policy: ReferralPolicy,
    balance_currency: Currency,
    now: dt.datetime,
) -> PaymentResult:
    payment_id: int = payment["id"]
    payer = users[payment["user_id"]]
    payer_id: int = payer["u_id"]
    key = f"payment:{payment_id}"
    effects = _Effects(balances={uid: row["u_balance_minor"] for uid, row in users.items()})
    is_plan = payment["purpose"] == Purpose.PLAN
    expires_at: dt.datetime | None = None
    bonus = payment["credit_minor"]
    if is_plan:
        expires_at = grant_paid(_subscription(payment), now=now, days=payment["days"]).expires_at
    else:
        bonus -= payment["amount_minor"]
        effects.credit(payer_id, payment["amount_minor"], LedgerKind.TOPUP, key, key)
    if bonus > 0:
        reference = f"promo:{payment['promo_code']}"
        effects.credit(payer_id, bonus, LedgerKind.PROMO_BONUS, reference, f"{key}:bonus")
    reward = _referral_reward(payment, payer, policy, balance_currency)
    referrer_id = payer["u_referrer_id"]
    if reward > 0:
        reward_key = f"referral:payment:{payment_id}"
        effects.credit(referrer_id, reward, LedgerKind.REFERRAL_REWARD, reward_key, reward_key)
    effects.notice(
        payer_id,
        f"payment.applied.{payment['purpose']}",
        {
            "payment_id": payment_id,
            "amount_minor": payment["amount_minor"],
            "currency": payment["currency"],
            "credit_minor": payment["credit_minor"],
            "plan": payment["plan_code"],
            "days": payment["days"],
            "expires_at": expires_at,
            "balance_minor": effects.balances[payer_id],
        },
        f"payment-applied:{payment_id}",
    )
    if reward > 0:
        effects.notice(
            referrer_id,
            "referral.reward",
            {"amount_minor": reward, "currency": balance_currency.code, "referred_id": payer_id},
            f"referral-reward:{payment_id}",
        )
    done = await tx.fetchrow(
        APPLY_EFFECTS,
        payment_id,
        now,
        external_id,
        payer_id,
        [e[0] for e in effects.entries],
        [e[1] for e in effects.entries],
        [e[2].value for e in effects.entries],
        [e[3] for e in effects.entries],
        [e[4] for e in effects.entries],
        is_plan,
        payment["s_id"],
        payment["plan_code"],
        expires_at,
        new_token(),
        is_plan and payer["u_banned_at"] is None,
        uuid.uuid4(),
        payment["promo_found"],
        key,
        referrer_id,
        reward,
        [n[0] for n in effects.notices],
        [n[1] for n in effects.notices],
        [n[2] for n in effects.notices],
        [n[3] for n in effects.notices],
        *paid_columns,
    )
    assert done is not None
    if done["applied_id"] is None:  # cannot happen under the locks; nothing was written
        return _result(ApplyOutcome.ALREADY_APPLIED, payment)
    if is_plan and done["granted"] != 1:
        raise SnapshotMoved(f"payment {payment_id}: the payer's subscription appeared during the lock wait")
    written = dict(zip(done["balance_ids"], done["balances"], strict=True))
    expected = {uid: effects.balances[uid] for uid in written}
    if written != expected or payer_id not in written:
        # The balances the notices carry must be the ones committed: a bug that must not commit.
        raise AssertionError(f"payment {payment_id}: balances {written} after applying, expected {expected}")
    return PaymentResult(
        ApplyOutcome.APPLIED,
        payment_id=payment_id,
        user_id=payer_id,
        purpose=payment["purpose"],
        credited_minor=payment["credit_minor"],
        expires_at=expires_at,
        referral_reward_minor=reward,
    )


def _referral_reward(
    payment: Record, payer: Record, policy: ReferralPolicy, balance_currency: Currency
) -> int:
    if payer["u_referrer_id"] is None:
        return 0
    return referral_reward(
        policy,
        payment_amount_minor=_reward_base(payment, balance_currency),
        is_first_payment=payer["u_first_paid_at"] is None,
    )


def _reward_base(payment: Record, balance_currency: Currency) -> int:
    if payment["currency"] == balance_currency.code:
        return int(payment["amount_minor"])
    if payment["purpose"] != Purpose.PLAN or payment["plan_prices"] is None:
        return 0
    prices = from_json(payment["plan_prices"])
    in_balance = prices.get(balance_currency.code)
    paid_in = payment["currency"]
    in_paid = payment["plan_stars_price"] if paid_in == "XTR" else prices.get(paid_in)
    if not in_balance or not in_paid:
        return 0
    return int(in_balance) * int(payment["amount_minor"]) // int(in_paid)
