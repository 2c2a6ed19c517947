"""Applying payments, exactly once per ``(provider, external_id)`` (contract 6), a batch at a time.

The webhook, the payment watcher and a replayed webhook may all ask to apply the same payment at
the same moment. Exactly one applies it.

:func:`apply_payments` takes a batch of requests (:class:`PaymentToApply`) and :func:`apply_payment`
is a batch of one; the statements are the same (arrays, ``unnest`` on the server), so a batch of
thirty costs the round trips, the commit and the per-statement overhead of one. Callers that arrive
together are batched by :class:`~atlas.storage.combiner.UnitCombiner` (group commit). Per request:

1. **lock and read** (one statement for the batch, :data:`~._apply_sql.LOCK_AND_READ`): the
   payment is found by ``external_id``, else ``payload``, else ``payment_id``; the payer and their
   referrer are locked (ascending id), then the payer's subscription, the payment and its promo
   code, the package's lock order. This serialises every application of the payer's payments, so
   what is read is what will be changed;
2. the decisions are made here, in Python, by the domain: only a ``pending`` (or ``expired``: the
   user paid after our intent lapsed, and their money is real) payment goes on; the new expiry
   (:func:`~atlas.domain.grant_paid`), the ledger rows and the balances they lead to, the referral
   reward, the notices;
3. **write** (one statement for the batch, :data:`~._apply_sql.APPLY_EFFECTS`): the conditional state change
   ``pending|expired → applied`` and, reading it, every effect: the top-up credit (ledger
   ``payment:<id>`` and its bonus) or the plan's days (+ a promo's free days and balance bonus) with
   a present key, the cached balances, the promo redemption, the referral reward,
   ``users.first_paid_at``, and the notices (outbox, dedupe keys ``payment-applied:<id>`` and
   ``referral-reward:<id>``). All or nothing. The balances it returns are checked against the
   domain's. A round of plain top-ups (no plan, no promo code, no reward) uses the shorter
   :data:`~._apply_sql.TOPUP_EFFECTS`.

With ``BEGIN`` and ``COMMIT`` that is four round trips (a refusal or a replay: three or four), for a
batch as for one payment (``BEGIN`` also carries ``plan_cache_mode = force_generic_plan``, see
:data:`~._apply_sql.GENERIC_PLANS`); a batch mixing applies with mismatches or second charges adds one
statement for each kind. One request's refusal is its own outcome, never an exception that would
roll back the others. Requests of a batch that touch the same payment, payer or promo code as an
earlier one go to a further round of the same statements in the same transaction (it sees the
earlier round's writes: a replay then reads ``applied``, a second payment of the payer its new
balance). A snapshot made stale by a lock wait (see :mod:`._apply_sql`) raises
:class:`~atlas.storage.units.errors.SnapshotMoved`, and ``db.run`` runs the unit again (the whole
batch). The batch's business time is the latest ``now`` among its requests.

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
from collections.abc import Sequence
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
from atlas.storage.tx import Record, Tx, transaction_settings
from atlas.storage.units._apply_sql import (
    APPLY_EFFECTS,
    FLAG_MISMATCHES,
    GENERIC_PLANS,
    LOCK_AND_READ,
    RECORD_SECOND_CHARGES,
    TOPUP_EFFECTS,
)
from atlas.storage.units._rows import check_now, from_json, to_json
from atlas.storage.units.errors import SnapshotMoved
from atlas.storage.units.ledger import LedgerKind
from atlas.storage.units.outbox import MAX_DEDUPE_KEY
from atlas.storage.units.payments import Provider, Purpose, check_external_id, new_payload
from atlas.storage.units.records import NOTHING_PAID_KNOWN, ApplyOutcome, PaidDetails, PaymentResult
from atlas.storage.units.subscriptions import new_token

MAX_BATCH = 64
"""The most payments one :func:`apply_payments` call takes (the arrays every statement carries)."""


@dataclass(frozen=True, slots=True)
class PaymentToApply:
    """One request to apply a paid payment: the arguments of :func:`apply_payment`, checked.

    Built (and checked) by the caller, so a malformed request raises ``ValueError`` there and never
    reaches a batch it could fail for the others.
    """

    provider: str
    paid_amount_minor: int
    paid_currency: str
    referral_policy: ReferralPolicy
    balance_currency: Currency
    now: dt.datetime
    external_id: str | None = None
    payload: str | None = None
    payment_id: int | None = None
    paid: tuple[object, ...] = field(default=NOTHING_PAID_KNOWN.columns())

    @classmethod
    def of(
        cls,
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
    ) -> PaymentToApply:
        """Check ``apply_payment``'s arguments (``ValueError``) and make the request."""
        check_now(now)
        if external_id is not None:
            check_external_id(external_id)
        if external_id is None and payload is None and payment_id is None:
            raise ValueError("apply_payment needs an external_id, a payload or a payment_id")
        return cls(
            Provider(provider).value,
            paid_amount_minor,
            paid_currency,
            referral_policy,
            Currency.of(balance_currency),
            now,
            external_id,
            payload,
            payment_id,
            paid.columns(),
        )


@transaction_settings(**GENERIC_PLANS)
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
    fee) is stored with the payment, applied or flagged. A batch of one :func:`apply_payments`; see
    the module docstring for the guarantees.
    """
    request = PaymentToApply.of(
        provider=provider,
        paid_amount_minor=paid_amount_minor,
        paid_currency=paid_currency,
        referral_policy=referral_policy,
        balance_currency=balance_currency,
        now=now,
        external_id=external_id,
        payload=payload,
        payment_id=payment_id,
        paid=paid,
    )
    (result,) = await apply_payments(tx, requests=[request])
    return result


@transaction_settings(**GENERIC_PLANS)
async def apply_payments(tx: Tx, *, requests: Sequence[PaymentToApply]) -> list[PaymentResult]:
    """Apply every request in one transaction; return each one's own outcome, in order.

    One request's refusal (unknown, already applied, mismatched, a second charge) is its outcome,
    never the others' failure. Requests that touch what an earlier request of the batch touches (the
    same payment, payer or promo code) are applied in a further round of the same statements,
    which sees the earlier round's writes. Raises only what the statements raise (the whole batch
    then rolls back): :class:`SnapshotMoved` makes ``db.run`` run it again.
    """
    if not 1 <= len(requests) <= MAX_BATCH:
        raise ValueError(f"apply_payments takes 1..{MAX_BATCH} requests, got {len(requests)}")
    results: list[PaymentResult | None] = [None] * len(requests)
    waiting = list(range(len(requests)))
    # One business time for the batch: the latest any caller asked for (callers read their clocks
    # a few milliseconds apart; no payment is applied before its own caller's `now`).
    now = max(request.now for request in requests)
    while waiting:
        waiting = await _Round(tx, requests, waiting, now).run(results)
    done = [result for result in results if result is not None]
    assert len(done) == len(requests), "every request is decided in some round"
    return done


@dataclass
class _Round:
    """One pass of the statements over the requests not yet decided (the first pass: all)."""

    tx: Tx
    requests: Sequence[PaymentToApply]
    indices: list[int]
    now: dt.datetime
    balances: dict[int, int] = field(default_factory=dict)
    applies: list[tuple[object, ...]] = field(default_factory=list)
    entries: list[tuple[int, int, int, str, str, str]] = field(default_factory=list)
    notices: list[tuple[int, int, str, str, str]] = field(default_factory=list)
    flags: list[tuple[object, ...]] = field(default_factory=list)
    second_charges: list[tuple[object, ...]] = field(default_factory=list)
    # index → what to report once the writes succeeded (second charges: filled in afterwards)
    decided: dict[int, PaymentResult] = field(default_factory=dict)
    second_charge_of: dict[tuple[str, str], int] = field(default_factory=dict)
    plan_payers: dict[int, int] = field(default_factory=dict)
    # Only plain top-ups (no plan, no promo code found, no referral reward): TOPUP_EFFECTS will do.
    only_plain_topups: bool = True

    async def run(self, results: list[PaymentResult | None]) -> list[int]:
        """Read, decide, write; fill ``results``; return the indices left for another round."""
        chosen = [self.requests[i] for i in self.indices]
        rows = await self.tx.fetch(
            LOCK_AND_READ,
            [r.provider for r in chosen],
            [r.external_id for r in chosen],
            [r.payload for r in chosen],
            [r.payment_id for r in chosen],
            len(chosen),
        )
        found = {row["n"]: row for row in rows}
        for locked in rows:
            self.balances.setdefault(locked["user_id"], locked["u_balance_minor"])
            if locked["r_id"] is not None:
                self.balances.setdefault(locked["r_id"], locked["r_balance_minor"])
        deferred: list[int] = []
        touched: set[tuple[str, object]] = set()
        for n, index in enumerate(self.indices, start=1):
            row: Record | None = found.get(n)
            if row is None:
                self.decided[index] = PaymentResult(ApplyOutcome.UNKNOWN, reason="no_such_payment")
                continue
            if row["u_referrer_id"] is not None and row["r_id"] is None:
                raise SnapshotMoved(f"payment {row['id']}: the payer's referrer was set during the lock wait")
            if ("payment", row["id"]) in touched or not self._decide(
                index, self.requests[index], row, touched
            ):
                deferred.append(index)
            touched.add(("payment", row["id"]))
        await self._write()
        for index, result in self.decided.items():
            results[index] = result
        return deferred

    def _decide(
        self, index: int, request: PaymentToApply, payment: Record, touched: set[tuple[str, object]]
    ) -> bool:
        """Decide one request; False when it must wait for the next round (see ``touched``).

        ``touched`` holds what this round's earlier requests will change: their payments, and the
        payers and promo codes of those that apply. A request that would apply to any of them waits,
        so that it reads their writes; a refusal or a replay writes nothing they read, so it goes on.
        """
        external_id = request.external_id
        if external_id is not None and payment["external_id"] not in (None, external_id):
            self._second_charge(index, request, payment, external_id)
        elif payment["status"] in ("applied", "refunded"):
            self.decided[index] = _result(ApplyOutcome.ALREADY_APPLIED, payment)
        elif payment["status"] == "flagged":
            self.decided[index] = _result(ApplyOutcome.FLAGGED, payment, payment["status_reason"])
        elif (mismatch := _mismatch(payment, request.paid_amount_minor, request.paid_currency)) is not None:
            self.flags.append((payment["id"], mismatch, external_id, *request.paid))
            self.decided[index] = _result(ApplyOutcome.FLAGGED, payment, mismatch)
        else:
            claims: set[tuple[str, object]] = {("payer", payment["user_id"])}
            if payment["promo_code"] is not None:
                claims.add(("promo", payment["promo_code"]))
            if claims & touched:
                return False
            touched |= claims
            self.decided[index] = self._apply(request, payment)
        return True

    def _second_charge(self, index: int, request: PaymentToApply, payment: Record, external_id: str) -> None:
        # Real money that matches no intent: recorded as a new flagged payment for an admin to refund.
        amount, paid_currency = request.paid_amount_minor, request.paid_currency
        currency = paid_currency.strip().upper() if isinstance(paid_currency, str) else ""
        valid_amount = isinstance(amount, int) and 0 < amount <= 10**15
        self.second_charges.append(
            (
                payment["user_id"],
                payment["provider"],
                external_id,
                new_payload(),
                payment["purpose"],
                payment["plan_code"],
                amount if valid_amount else payment["amount_minor"],
                currency if len(currency) == 3 and currency.isalpha() else payment["currency"],
                payment["days"],
                f"second_charge: payload of payment {payment['id']} was already paid",
                *request.paid,
            )
        )
        self.second_charge_of[(payment["provider"], external_id)] = index
        self.decided[index] = PaymentResult(
            ApplyOutcome.FLAGGED,
            user_id=payment["user_id"],
            purpose=payment["purpose"],
            reason="second_charge",
        )

    def _credit(
        self, payment_id: int, user_id: int, amount: int, kind: LedgerKind, reference: str, key: str
    ) -> None:
        # A ledger row and the balance it leads to (the domain's `credit` checks the sum).
        self.balances[user_id] = credit(self.balances[user_id], amount)
        self.entries.append((payment_id, user_id, amount, kind.value, reference, key))

    def _notice(self, payment_id: int, chat_id: int, kind: str, payload: dict[str, object], key: str) -> None:
        # An outbox message, written with the payment or not at all.
        if not key or len(key) > MAX_DEDUPE_KEY:
            raise ValueError(f"bad dedupe key {key!r}")
        self.notices.append((payment_id, chat_id, kind, to_json(payload), key))

    def _apply(self, request: PaymentToApply, payment: Record) -> PaymentResult:
        payment_id: int = payment["id"]
        payer_id: int = payment["user_id"]
        key = f"payment:{payment_id}"
        is_plan = payment["purpose"] == Purpose.PLAN
        expires_at: dt.datetime | None = None
        bonus = payment["credit_minor"]
        if is_plan:
            expires_at = grant_paid(_subscription(payment), now=self.now, days=payment["days"]).expires_at
            self.plan_payers[payment_id] = payer_id
        else:
            bonus -= payment["amount_minor"]
            self._credit(payment_id, payer_id, payment["amount_minor"], LedgerKind.TOPUP, key, key)
        if bonus > 0:
            reference = f"promo:{payment['promo_code']}"
            self._credit(payment_id, payer_id, bonus, LedgerKind.PROMO_BONUS, reference, f"{key}:bonus")
        reward = _referral_reward(payment, request.referral_policy, request.balance_currency)
        referrer_id = payment["u_referrer_id"]
        if reward > 0:
            reward_key = f"referral:payment:{payment_id}"
            self._credit(payment_id, referrer_id, reward, LedgerKind.REFERRAL_REWARD, reward_key, reward_key)
        if is_plan or reward > 0 or payment["promo_found"] is not None:
            self.only_plain_topups = False
        self._notice(
            payment_id,
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
                "balance_minor": self.balances[payer_id],
            },
            f"payment-applied:{payment_id}",
        )
        if reward > 0:
            self._notice(
                payment_id,
                referrer_id,
                "referral.reward",
                {"amount_minor": reward, "currency": request.balance_currency.code, "referred_id": payer_id},
                f"referral-reward:{payment_id}",
            )
        self.applies.append(
            (
                payment_id,
                request.external_id,
                payer_id,
                is_plan,
                payment["s_id"],
                payment["plan_code"],
                expires_at,
                new_token() if is_plan else None,
                is_plan and payment["u_banned_at"] is None,
                uuid.uuid4() if is_plan else None,
                payment["promo_found"],
                key,
                referrer_id,
                reward,
                *request.paid,
            )
        )
        return PaymentResult(
            ApplyOutcome.APPLIED,
            payment_id=payment_id,
            user_id=payer_id,
            purpose=payment["purpose"],
            credited_minor=payment["credit_minor"],
            expires_at=expires_at,
            referral_reward_minor=reward,
        )

    async def _write(self) -> None:
        if self.second_charges:
            inserted = await self.tx.fetch(
                RECORD_SECOND_CHARGES,
                self.now,
                *_columns(self.second_charges, 16),
                bounded_by="one row per second charge passed in, at most MAX_BATCH",
            )
            for row in inserted:
                index = self.second_charge_of[(row["provider"], row["external_id"])]
                self.decided[index] = _with_payment_id(self.decided[index], int(row["id"]))
        if self.flags:
            await self.tx.execute(FLAG_MISMATCHES, *_columns(self.flags, 9))
        if not self.applies:
            return
        if self.only_plain_topups:
            # every ledger row is then a payer's: TOPUP_EFFECTS sets first_paid_at on each
            columns = _columns(self.applies, 20)
            done = await self.tx.fetchrow(
                TOPUP_EFFECTS,
                self.now,
                *columns[0:3],
                columns[4],
                *columns[14:20],
                *_columns(self.entries, 6),
                *_columns(self.notices, 5),
            )
        else:
            done = await self.tx.fetchrow(
                APPLY_EFFECTS,
                self.now,
                *_columns(self.applies, 20),
                *_columns(self.entries, 6),
                *_columns(self.notices, 5),
            )
        assert done is not None
        if len(done["applied_ids"]) != len(self.applies):
            # Cannot happen under the locks: a payment changed state after it was read locked.
            raise SnapshotMoved("a payment locked for applying was no longer pending")
        granted = set(done["granted_users"])
        for payment_id, payer_id in self.plan_payers.items():
            if payer_id not in granted:
                raise SnapshotMoved(
                    f"payment {payment_id}: the payer's subscription appeared during the lock wait"
                )
        written = dict(zip(done["balance_ids"], done["balances"], strict=True))
        expected = {uid: self.balances[uid] for uid in written}
        payers = {a[2] for a in self.applies}
        if written != expected or not payers <= written.keys():
            # The balances the notices carry must be the ones committed: a bug that must not commit.
            raise AssertionError(f"balances {written} after applying, expected {expected}")


def _columns(rows: Sequence[tuple[object, ...]], width: int) -> list[list[object]]:
    """Row tuples as one array per column (what ``unnest`` takes)."""
    if not rows:
        return [[] for _ in range(width)]
    return [list(column) for column in zip(*rows, strict=True)]


def _with_payment_id(result: PaymentResult, payment_id: int) -> PaymentResult:
    return PaymentResult(result.outcome, payment_id, result.user_id, result.purpose, result.reason)


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


def _subscription(row: Record) -> SubscriptionState | None:
    if row["s_id"] is None:
        return None
    return SubscriptionState(
        SubscriptionKind(row["s_kind"]), SubscriptionStatus(row["s_status"]), row["s_expires_at"]
    )


def _referral_reward(payment: Record, policy: ReferralPolicy, balance_currency: Currency) -> int:
    if payment["u_referrer_id"] is None:
        return 0
    return referral_reward(
        policy,
        payment_amount_minor=_reward_base(payment, balance_currency),
        is_first_payment=payment["u_first_paid_at"] is None,
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
