"""Units of work: every change to money or access, each one transaction (``await db.run(unit, ...)``).

Conventions every unit here keeps:

* **One transaction, no I/O.** A unit is ``async def unit(tx, *, ...)``; ``db.run`` gives it one
  transaction, and the connection guard makes any network call inside it raise. Messages are outbox
  rows with a dedupe key (:func:`enqueue_message`), key changes are ``vpn_keys.desired``; actors do
  the I/O afterwards. A unit that raises leaves nothing behind (the transaction rolls back), so
  every refusal is "nothing changed".
* **Time is a parameter.** Every unit that decides anything takes ``now`` (an aware datetime); SQL
  never reads the server's clock.
* **Money is int minor units**, and every balance change is a ledger row with a unique idempotency
  key written with the cached balance (:mod:`.ledger` lists the keys).
* **Idempotent where the world repeats itself**: ``/start``, payments (webhook, watcher, replays),
  purchases (double taps), admin adjustments, renewals, expiry, reminders (dedupe keys).
* **Business rules are the domain's** (:mod:`atlas.domain`): units read and lock rows, ask the
  domain, and write what it decided. Records returned are frozen dataclasses (:mod:`.records`).

Lock order (to keep deadlocks impossible, not merely retried): **users** (ascending id when more than
one: a payer and their referrer) → **the user's subscription** → **payments** → **promo codes** →
**keys**. Units that lock a subset keep the order. The batch workers claim with ``SKIP LOCKED``
(renewal claims the subscription and its user together), so they never wait for a lock and cannot
join a cycle. Serialization failures and deadlocks that still happen are retried by ``db.run``.
``apply_payment`` takes the whole chain (payer and referrer → subscription → payment → promo code) in
one statement (``apply_payments``, its batch form, takes every chain of the batch: all users
ascending, then the subscriptions, the payments and the promo codes, each sorted); the order
inside it is forced by data dependencies between its CTEs (see :mod:`._apply_sql`), and a row
created by a transaction it waited for makes it retry (:class:`~.errors.SnapshotMoved`).

Errors: the domain's :class:`~atlas.domain.DomainError` tree, plus :mod:`.errors` for refusals that
come from stored state (unknown user, no subscription, a refund that cannot be exact).
"""

from atlas.storage.units.admin import admin_adjust_balance as admin_adjust_balance
from atlas.storage.units.admin import admin_grant_days as admin_grant_days
from atlas.storage.units.admin import admin_set_banned as admin_set_banned
from atlas.storage.units.admin import refund_payment as refund_payment
from atlas.storage.units.apply import PaymentToApply as PaymentToApply
from atlas.storage.units.apply import apply_payment as apply_payment
from atlas.storage.units.apply import apply_payments as apply_payments
from atlas.storage.units.audit import audit_log as audit_log
from atlas.storage.units.errors import InvalidAdminInput as InvalidAdminInput
from atlas.storage.units.errors import NoSubscription as NoSubscription
from atlas.storage.units.errors import NothingToPay as NothingToPay
from atlas.storage.units.errors import PaymentConflict as PaymentConflict
from atlas.storage.units.errors import PaymentNotFound as PaymentNotFound
from atlas.storage.units.errors import RefundRefused as RefundRefused
from atlas.storage.units.errors import TooManyInvoices as TooManyInvoices
from atlas.storage.units.errors import UnitError as UnitError
from atlas.storage.units.errors import UnknownUser as UnknownUser
from atlas.storage.units.errors import UserBanned as UserBanned
from atlas.storage.units.expiry import expire_due as expire_due
from atlas.storage.units.keys import reissue_key as reissue_key
from atlas.storage.units.ledger import LedgerKind as LedgerKind
from atlas.storage.units.ledger import ledger_entries as ledger_entries
from atlas.storage.units.outbox import enqueue_message as enqueue_message
from atlas.storage.units.payments import Provider as Provider
from atlas.storage.units.payments import Purpose as Purpose
from atlas.storage.units.payments import attach_external_id as attach_external_id
from atlas.storage.units.payments import create_payment_intent as create_payment_intent
from atlas.storage.units.payments import expire_payment_intents as expire_payment_intents
from atlas.storage.units.payments import pending_payments as pending_payments
from atlas.storage.units.plans import plans_for_sale as plans_for_sale
from atlas.storage.units.plans import sync_plans as sync_plans
from atlas.storage.units.promo import clear_promo_session as clear_promo_session
from atlas.storage.units.promo import create_promo_code as create_promo_code
from atlas.storage.units.promo import list_promo_codes as list_promo_codes
from atlas.storage.units.promo import promo_session_code as promo_session_code
from atlas.storage.units.promo import prune_promo_sessions as prune_promo_sessions
from atlas.storage.units.promo import remember_promo as remember_promo
from atlas.storage.units.purchases import buy_plan_from_balance as buy_plan_from_balance
from atlas.storage.units.records import AccessChange as AccessChange
from atlas.storage.units.records import ApplyOutcome as ApplyOutcome
from atlas.storage.units.records import AuditEntry as AuditEntry
from atlas.storage.units.records import BalanceChange as BalanceChange
from atlas.storage.units.records import ExpiryCounts as ExpiryCounts
from atlas.storage.units.records import KeyReissue as KeyReissue
from atlas.storage.units.records import LedgerEntry as LedgerEntry
from atlas.storage.units.records import PaidDetails as PaidDetails
from atlas.storage.units.records import PaymentIntent as PaymentIntent
from atlas.storage.units.records import PaymentResult as PaymentResult
from atlas.storage.units.records import PendingPayment as PendingPayment
from atlas.storage.units.records import PlanSync as PlanSync
from atlas.storage.units.records import PurchaseResult as PurchaseResult
from atlas.storage.units.records import ReferralStats as ReferralStats
from atlas.storage.units.records import RefundResult as RefundResult
from atlas.storage.units.records import Registration as Registration
from atlas.storage.units.records import ReminderBatch as ReminderBatch
from atlas.storage.units.records import RenewalCounts as RenewalCounts
from atlas.storage.units.records import Stats as Stats
from atlas.storage.units.records import SubscriptionView as SubscriptionView
from atlas.storage.units.records import UserView as UserView
from atlas.storage.units.reminders import enqueue_due_reminders as enqueue_due_reminders
from atlas.storage.units.renewals import claim_and_renew as claim_and_renew
from atlas.storage.units.stats import stats as stats
from atlas.storage.units.subscriptions import get_subscription_view as get_subscription_view
from atlas.storage.units.subscriptions import set_auto_renew as set_auto_renew
from atlas.storage.units.subscriptions import start_trial as start_trial
from atlas.storage.units.subscriptions import subscription_by_token as subscription_by_token
from atlas.storage.units.users import get_user as get_user
from atlas.storage.units.users import referral_stats as referral_stats
from atlas.storage.units.users import register_user as register_user
from atlas.storage.units.users import set_language as set_language
from atlas.storage.units.users import set_referrer as set_referrer
