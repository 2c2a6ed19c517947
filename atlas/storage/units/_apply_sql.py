"""The two statements of :func:`atlas.storage.units.apply.apply_payment`: lock-and-read, then write.

Kept apart from the decisions so that each statement reads as one piece of SQL.

**LOCK_AND_READ** finds the payment and locks, in the package's lock order, the payer and their
referrer (ascending id), the payer's subscription, the payment and its promo code, then returns them
with the plan's prices: one row per locked user. The order inside one statement is forced by data
dependencies, not left to the planner: each ``MATERIALIZED`` CTE's condition reads a ``count(*)``
of the previous one, an aggregate that can only be computed after every row of that CTE has been
produced, and so locked. A ``FOR UPDATE`` CTE's ``ORDER BY id`` locks in that order (the lock node
sits above the sort). READ COMMITTED gives every row locked after a wait its newest version.

What one snapshot cannot see is a row *created* by a transaction that committed while this statement
waited for a lock: a subscription that did not exist yet, a referrer set meanwhile, a key. So the
write statement (a new snapshot, every lock already held) decides keys itself, and a subscription
that appeared, or a referrer that was not locked, makes the unit retry
(:class:`~atlas.storage.units.errors.SnapshotMoved`).

**APPLY_EFFECTS** is every effect of an applied payment in one statement of data-modifying CTEs.
Every one of them reads ``applied`` (the conditional ``pending|expired → applied`` change), so when
that changes no row, nothing else is written. The ledger insert has no ``ON CONFLICT``: a key already
posted would mean a second application, and the unique violation rolls everything back.
"""

from __future__ import annotations

from atlas.storage.units._rows import SUBSCRIPTION_COLUMNS, USER_COLUMNS

PAYMENT_COLUMNS = (
    "id, user_id, provider, external_id, payload, purpose, plan_code, amount_minor, currency, "
    "credit_minor, bonus_days, days, promo_code, status, status_reason"
)


def _prefixed(columns: str, alias: str, prefix: str) -> str:
    return ", ".join(f"{alias}.{c.strip()} AS {prefix}{c.strip()}" for c in columns.split(","))


# $1 provider, $2 external_id, $3 payload, $4 payment_id
LOCK_AND_READ = f"""
WITH target AS (
    SELECT id, user_id, provider FROM (
        SELECT id, user_id, provider, 1 AS rank FROM payments
        WHERE $2::text IS NOT NULL AND provider = $1 AND external_id = $2
        UNION ALL
        SELECT id, user_id, provider, 2 FROM payments WHERE $3::text IS NOT NULL AND payload = $3
        UNION ALL
        SELECT id, user_id, provider, 3 FROM payments WHERE $3::text IS NULL AND id = $4::bigint
    ) found
    ORDER BY rank LIMIT 1
),
payer AS (SELECT id, user_id FROM target WHERE provider = $1),
locked_users AS MATERIALIZED (
    SELECT {USER_COLUMNS} FROM users
    WHERE id = ANY (ARRAY[
        (SELECT user_id FROM payer),
        (SELECT referrer_id FROM users WHERE id = (SELECT user_id FROM payer))
    ])
    ORDER BY id
    FOR UPDATE
),
locked_subscription AS MATERIALIZED (
    SELECT {SUBSCRIPTION_COLUMNS} FROM subscriptions
    WHERE user_id = (SELECT user_id FROM payer) AND (SELECT count(*) FROM locked_users) > 0
    FOR UPDATE
),
locked_payment AS MATERIALIZED (
    SELECT {PAYMENT_COLUMNS} FROM payments
    WHERE id = (SELECT id FROM payer) AND (SELECT count(*) FROM locked_subscription) >= 0
    FOR UPDATE
),
locked_promo AS MATERIALIZED (
    SELECT code FROM promo_codes
    WHERE code = (SELECT promo_code FROM locked_payment WHERE status IN ('pending', 'expired'))
    FOR UPDATE
)
SELECT {_prefixed(USER_COLUMNS, "u", "u_")},
       {_prefixed(PAYMENT_COLUMNS, "p", "")},
       {_prefixed(SUBSCRIPTION_COLUMNS, "s", "s_")},
       (SELECT code FROM locked_promo) AS promo_found,
       pl.prices AS plan_prices, pl.stars_price AS plan_stars_price
FROM locked_payment p
CROSS JOIN locked_users u
LEFT JOIN locked_subscription s ON true
LEFT JOIN plans pl ON pl.code = p.plan_code
ORDER BY u.id
LIMIT 2
"""

# $1 payment id, $2 now, $3 external_id, $4 payer id,
# ledger rows: $5 user ids, $6 amounts, $7 kinds, $8 references, $9 idempotency keys,
# subscription: $10 grant (plan), $11 locked subscription id or NULL, $12 plan code,
#               $13 new expiry, $14 new token, $15 want a present key, $16 new key uuid,
# promo: $17 code or NULL, $18 redemption reference,
# referral: $19 referrer id, $20 reward (0: none),
# outbox: $21 chat ids, $22 kinds, $23 payloads (JSON text), $24 dedupe keys,
# what the provider says was paid: $25 asset, $26 amount, $27 fiat rate, $28 USD rate, $29 fee asset,
# $30 fee amount (numeric, exact; NULL when the provider does not say)
APPLY_EFFECTS = """
WITH applied AS (
    UPDATE payments SET status = 'applied', applied_at = $2, external_id = coalesce(external_id, $3),
        paid_asset = $25, paid_amount = $26, paid_fiat_rate = $27, paid_usd_rate = $28,
        fee_asset = $29, fee_amount = $30
    WHERE id = $1 AND status IN ('pending', 'expired')
    RETURNING id
),
entries AS (
    SELECT * FROM unnest($5::bigint[], $6::bigint[], $7::text[], $8::text[], $9::text[])
        AS e(user_id, amount_minor, kind, reference, idempotency_key)
),
posted AS (
    INSERT INTO ledger (user_id, amount_minor, kind, reference, idempotency_key, created_at)
    SELECT e.user_id, e.amount_minor, e.kind, e.reference, e.idempotency_key, $2
    FROM entries e, applied
    RETURNING id
),
balances AS (
    UPDATE users u SET
        balance_minor = u.balance_minor + d.delta,
        first_paid_at = CASE WHEN u.id = $4 THEN coalesce(u.first_paid_at, $2) ELSE u.first_paid_at END
    FROM (
        SELECT user_id, sum(delta)::bigint AS delta FROM (
            SELECT $4::bigint AS user_id, 0::bigint AS delta
            UNION ALL SELECT user_id, amount_minor FROM entries
        ) moves GROUP BY user_id
    ) d
    WHERE u.id = d.user_id AND EXISTS (SELECT 1 FROM applied)
    RETURNING u.id, u.balance_minor
),
new_subscription AS (
    INSERT INTO subscriptions (user_id, kind, status, plan_code, starts_at, expires_at, token,
                               created_at, updated_at)
    SELECT $4, 'paid', 'active', $12, $2, $13, $14, $2, $2
    FROM applied WHERE $10 AND $11::bigint IS NULL
    ON CONFLICT (user_id) DO NOTHING
    RETURNING id
),
extended_subscription AS (
    UPDATE subscriptions SET
        kind = 'paid', status = 'active', plan_code = coalesce($12, plan_code),
        starts_at = CASE WHEN status = 'expired' THEN $2 ELSE starts_at END,
        expires_at = $13, renew_next_try_at = NULL, updated_at = $2
    WHERE id = $11 AND $10 AND EXISTS (SELECT 1 FROM applied)
    RETURNING id
),
renewal_unblocked AS (
    -- a top-up: money arrived, so a renewal waiting for it may try again at once
    UPDATE subscriptions SET renew_next_try_at = NULL
    WHERE id = $11 AND NOT $10 AND EXISTS (SELECT 1 FROM applied)
    RETURNING id
),
granted AS (
    SELECT id FROM new_subscription UNION ALL SELECT id FROM extended_subscription
),
revived_key AS (
    -- no key present: the newest one comes back, so a lapsed user's configured client works again
    UPDATE vpn_keys k SET desired = 'present', generation = k.generation + 1, changed_at = $2
    FROM granted g
    WHERE $15 AND k.id = (SELECT max(id) FROM vpn_keys WHERE subscription_id = g.id)
      AND NOT EXISTS (SELECT 1 FROM vpn_keys WHERE subscription_id = g.id AND desired = 'present')
    RETURNING k.uuid
),
new_key AS (
    INSERT INTO vpn_keys (subscription_id, uuid, desired, created_at, changed_at)
    SELECT g.id, $16, 'present', $2, $2 FROM granted g
    WHERE $15 AND NOT EXISTS (SELECT 1 FROM vpn_keys WHERE subscription_id = g.id)
    RETURNING uuid
),
redeemed AS (
    INSERT INTO promo_redemptions (code, user_id, payment_id, reference, created_at)
    SELECT $17, $4, $1, $18, $2 FROM applied WHERE $17::text IS NOT NULL
    ON CONFLICT DO NOTHING
    RETURNING code
),
promo_counted AS (
    UPDATE promo_codes SET uses = uses + 1
    WHERE code IN (SELECT code FROM redeemed) AND (max_uses IS NULL OR uses < max_uses)
    RETURNING code
),
session_cleared AS (
    DELETE FROM promo_sessions WHERE user_id = $4 AND code IN (SELECT code FROM redeemed)
    RETURNING user_id
),
rewarded AS (
    INSERT INTO referral_rewards (referrer_id, referred_id, payment_id, amount_minor, created_at)
    SELECT $19, $4, $1, $20, $2 FROM applied WHERE $20::bigint > 0
    RETURNING id
),
notices AS (
    INSERT INTO outbox (chat_id, kind, payload, dedupe_key, priority, next_attempt_at, created_at)
    SELECT m.chat_id, m.kind, m.payload::jsonb, m.dedupe_key, 0, $2, $2
    FROM unnest($21::bigint[], $22::text[], $23::text[], $24::text[])
             AS m(chat_id, kind, payload, dedupe_key),
         applied
    ON CONFLICT (dedupe_key) DO NOTHING
    RETURNING id
)
SELECT (SELECT id FROM applied) AS applied_id,
       (SELECT count(*) FROM posted) AS posted,
       (SELECT coalesce(array_agg(id ORDER BY id), '{}') FROM balances) AS balance_ids,
       (SELECT coalesce(array_agg(balance_minor ORDER BY id), '{}') FROM balances) AS balances,
       (SELECT count(*) FROM granted) AS granted,
       (SELECT count(*) FROM renewal_unblocked) AS renewal_unblocked,
       (SELECT count(*) FROM revived_key) + (SELECT count(*) FROM new_key) AS keys_made_present,
       (SELECT count(*) FROM promo_counted) AS promo_counted,
       (SELECT count(*) FROM session_cleared) AS sessions_cleared,
       (SELECT count(*) FROM rewarded) AS rewarded,
       (SELECT count(*) FROM notices) AS notices
"""

# $1 payment id, $2 reason, $3 external_id, $4..$9 what the provider says was paid (as above)
FLAG_MISMATCH = """
UPDATE payments SET status = 'flagged', status_reason = $2, external_id = coalesce(external_id, $3),
    paid_asset = $4, paid_amount = $5, paid_fiat_rate = $6, paid_usd_rate = $7, fee_asset = $8,
    fee_amount = $9
WHERE id = $1 AND status IN ('pending', 'expired')
"""

# $12..$17 what the provider says was paid (as above)
RECORD_SECOND_CHARGE = """
INSERT INTO payments (user_id, provider, external_id, payload, purpose, plan_code, amount_minor,
                      currency, credit_minor, bonus_days, days, promo_code, status, status_reason,
                      created_at, expires_at, paid_asset, paid_amount, paid_fiat_rate, paid_usd_rate,
                      fee_asset, fee_amount)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, 0, 0, $9, NULL, 'flagged', $10, $11, $11,
        $12, $13, $14, $15, $16, $17)
ON CONFLICT DO NOTHING
RETURNING id
"""
