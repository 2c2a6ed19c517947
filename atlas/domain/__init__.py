"""Pure business rules: plans, prices, promo codes, referrals, subscriptions, renewal, reminders.

No I/O, no async, no clock: every function takes ``now`` as a parameter and returns a decision;
the storage layer applies it inside one transaction. Money is ``int`` minor units throughout.
Nothing here imports the rest of Atlas (the bottom of the dependency graph, see DESIGN.md).

Modules, one concern each:

    errors          DomainError (user-caused, with i18n code + params) and ConfigError (operator)
    money           Currency, exact parse/format of amounts, percent_of, check_amount
    balance         debit / credit with the never-below-zero rule
    plans           Plan, PlanCatalog, load_plan_catalog (TOML)
    promo           PromoCode and the quotes for plans and top-ups
    referral        ReferralPolicy, rewards, the /start payload
    subscriptions   extend, trials, trial → paid, expiry decisions
    renewal         decide_renewal: Renew | InsufficientFunds | NotDue
    reminders       which expiry reminder is due, with its dedupe key
"""

from atlas.domain.balance import credit as credit
from atlas.domain.balance import debit as debit
from atlas.domain.errors import ConfigError as ConfigError
from atlas.domain.errors import DomainError as DomainError
from atlas.domain.errors import InsufficientBalance as InsufficientBalance
from atlas.domain.errors import InvalidAmount as InvalidAmount
from atlas.domain.errors import InvalidPromoDefinition as InvalidPromoDefinition
from atlas.domain.errors import MalformedPromoCode as MalformedPromoCode
from atlas.domain.errors import MoneyError as MoneyError
from atlas.domain.errors import ParamValue as ParamValue
from atlas.domain.errors import PlanConfigError as PlanConfigError
from atlas.domain.errors import PlanError as PlanError
from atlas.domain.errors import PlanNotForSale as PlanNotForSale
from atlas.domain.errors import PromoError as PromoError
from atlas.domain.errors import PromoExhausted as PromoExhausted
from atlas.domain.errors import PromoExpired as PromoExpired
from atlas.domain.errors import PromoNewUsersOnly as PromoNewUsersOnly
from atlas.domain.errors import PromoNotApplicable as PromoNotApplicable
from atlas.domain.errors import PromoNotFound as PromoNotFound
from atlas.domain.errors import PromoPerUserLimit as PromoPerUserLimit
from atlas.domain.errors import ReferralAlreadySet as ReferralAlreadySet
from atlas.domain.errors import ReferralError as ReferralError
from atlas.domain.errors import SelfReferral as SelfReferral
from atlas.domain.errors import TrialAlreadyUsed as TrialAlreadyUsed
from atlas.domain.errors import TrialError as TrialError
from atlas.domain.errors import TrialNotAllowed as TrialNotAllowed
from atlas.domain.errors import UnknownPlan as UnknownPlan
from atlas.domain.errors import UnsupportedCurrency as UnsupportedCurrency
from atlas.domain.money import MAX_AMOUNT_MINOR as MAX_AMOUNT_MINOR
from atlas.domain.money import XTR as XTR
from atlas.domain.money import Currency as Currency
from atlas.domain.money import check_amount as check_amount
from atlas.domain.money import format_amount as format_amount
from atlas.domain.money import format_money as format_money
from atlas.domain.money import parse_amount as parse_amount
from atlas.domain.money import percent_of as percent_of
from atlas.domain.plans import MAX_DURATION_DAYS as MAX_DURATION_DAYS
from atlas.domain.plans import MAX_STARS as MAX_STARS
from atlas.domain.plans import PLAN_CODE_PATTERN as PLAN_CODE_PATTERN
from atlas.domain.plans import Plan as Plan
from atlas.domain.plans import PlanCatalog as PlanCatalog
from atlas.domain.plans import load_plan_catalog as load_plan_catalog
from atlas.domain.promo import PROMO_CODE_MAX_LENGTH as PROMO_CODE_MAX_LENGTH
from atlas.domain.promo import PromoCode as PromoCode
from atlas.domain.promo import PromoKind as PromoKind
from atlas.domain.promo import PromoPurpose as PromoPurpose
from atlas.domain.promo import PromoSession as PromoSession
from atlas.domain.promo import Quote as Quote
from atlas.domain.promo import TopupQuote as TopupQuote
from atlas.domain.promo import check_promo as check_promo
from atlas.domain.promo import normalise_code as normalise_code
from atlas.domain.promo import quote_plan as quote_plan
from atlas.domain.promo import quote_topup as quote_topup
from atlas.domain.promo import validate_promo_definition as validate_promo_definition
from atlas.domain.referral import REFERRAL_PREFIX as REFERRAL_PREFIX
from atlas.domain.referral import START_PARAM_PATTERN as START_PARAM_PATTERN
from atlas.domain.referral import ReferralPolicy as ReferralPolicy
from atlas.domain.referral import ReferralTrigger as ReferralTrigger
from atlas.domain.referral import RewardKind as RewardKind
from atlas.domain.referral import check_referrer as check_referrer
from atlas.domain.referral import parse_referral_payload as parse_referral_payload
from atlas.domain.referral import referral_payload as referral_payload
from atlas.domain.referral import referral_reward as referral_reward
from atlas.domain.reminders import DEFAULT_SCHEDULE as DEFAULT_SCHEDULE
from atlas.domain.reminders import Reminder as Reminder
from atlas.domain.reminders import ReminderSchedule as ReminderSchedule
from atlas.domain.reminders import due_reminder as due_reminder
from atlas.domain.reminders import reminder_key as reminder_key
from atlas.domain.reminders import threshold_label as threshold_label
from atlas.domain.renewal import InsufficientFunds as InsufficientFunds
from atlas.domain.renewal import NotDue as NotDue
from atlas.domain.renewal import NotDueReason as NotDueReason
from atlas.domain.renewal import Renew as Renew
from atlas.domain.renewal import RenewalDecision as RenewalDecision
from atlas.domain.renewal import decide_renewal as decide_renewal
from atlas.domain.renewal import renewal_charge_key as renewal_charge_key
from atlas.domain.renewal import renewal_notice_key as renewal_notice_key
from atlas.domain.subscriptions import MAX_EXTEND_DAYS as MAX_EXTEND_DAYS
from atlas.domain.subscriptions import ExpiryAction as ExpiryAction
from atlas.domain.subscriptions import SubscriptionKind as SubscriptionKind
from atlas.domain.subscriptions import SubscriptionState as SubscriptionState
from atlas.domain.subscriptions import SubscriptionStatus as SubscriptionStatus
from atlas.domain.subscriptions import convert_trial_to_paid as convert_trial_to_paid
from atlas.domain.subscriptions import expiry_decision as expiry_decision
from atlas.domain.subscriptions import extend as extend
from atlas.domain.subscriptions import grant_paid as grant_paid
from atlas.domain.subscriptions import grant_trial as grant_trial
from atlas.domain.subscriptions import trial_eligibility as trial_eligibility
from atlas.domain.subscriptions import trial_expiry_allowed as trial_expiry_allowed
