"""The statements of :func:`atlas.storage.units.apply.apply_payments`: lock-and-read, then write.

Kept apart from the decisions so that each statement reads as one piece of SQL. Every statement
takes a *batch* (arrays, one element per payment, ``unnest`` on the server): one payment is a batch
of one, and a batch of thirty costs the same round trips as one (group commit, see the module
docstring of :mod:`atlas.storage.units.apply`).

**LOCK_AND_READ** finds each request's payment and locks, in the package's lock order, every payer
and referrer (ascending id), the payers' subscriptions, the payments, then their promo codes, and
returns one row per request that found a payment. The order inside one statement is forced by data
dependencies, not left to the planner: each ``MATERIALIZED`` CTE's condition reads a ``count(*)``
of the previous one, an aggregate that can only be computed after every row of that CTE has been
produced, and so locked. A ``FOR UPDATE`` CTE's ``ORDER BY`` locks in that order (the lock node
sits above the sort). READ COMMITTED gives every row locked after a wait its newest version. Sets
are passed as ``= ANY (ARRAY(subquery))`` so that each is an index scan over the ids, never a join
the planner might turn into a sequential scan of ``users``.

What one snapshot cannot see is a row *created* by a transaction that committed while this statement
waited for a lock: a subscription that did not exist yet, a referrer set meanwhile, a key. So the
write statement (a new snapshot, every lock already held) decides keys itself, and a subscription
that appeared, or a referrer that was not locked, makes the unit retry
(:class:`~atlas.storage.units.errors.SnapshotMoved`).

**APPLY_EFFECTS** is every effect of the batch's applied payments in one statement of
data-modifying CTEs. Every one of them joins ``applied`` (the conditional ``pending|expired →
applied`` change), so a payment whose change matches no row writes nothing else. The ledger insert
has no ``ON CONFLICT``: a key already posted would mean a second application, and the unique
violation rolls everything back. Data-modifying CTEs run to completion whether or not the final
``SELECT`` reads them, so only what the unit checks is returned (no ``RETURNING`` on the ledger,
the outbox, keys, promo counts or referral rows). **TOPUP_EFFECTS** is the same for the common
case, a round of plain top-ups, without the CTEs that would write nothing.
"""

from __future__ import annotations

GENERIC_PLANS = {"plan_cache_mode": "force_generic_plan"}
"""The transaction settings of ``apply_payments`` (sent with its ``BEGIN``): both statements run on
their cached generic plan.

Without it PostgreSQL may re-plan them on every execution: it compares each statement's generic plan,
costed for arrays of unknown length (``unnest`` of a parameter: 100 rows assumed), with the custom
plans it made for the arrays actually passed (a few elements), finds the custom ones cheaper, and
keeps planning — ~0.7 ms for the write and more for the read, more than executing them. Measured
with 10 callers through the combiner (docs/benchmarks.md, session 5, "The plan choice"): custom
plans cost the server 2–2.5× per payment, and the same code ran at either rate, by connection,
when the choice was left to PostgreSQL. For this unit only, as ``SET LOCAL``: other units'
parameters do change their best plans (a sweep's bound, a ``LIMIT``)."""

PAYMENT_COLUMNS = (
    "id, user_id, provider, external_id, purpose, plan_code, amount_minor, currency, credit_minor, "
    "days, promo_code, status, status_reason"
)

# $1 providers, $2 external ids, $3 payloads, $4 payment ids (text[], text[], text[], bigint[]; one
# element per request, NULL where not given), $5 how many requests (the bound of the result)
LOCK_AND_READ = f"""
WITH request AS (
    SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::bigint[]) WITH ORDINALITY
        AS r(provider, external_id, payload, payment_id, n)
),
target AS (
    SELECT r.n, f.id, f.user_id FROM request r
    CROSS JOIN LATERAL (
        SELECT id, user_id, provider, 1 AS rank FROM payments
        WHERE r.external_id IS NOT NULL AND provider = r.provider AND external_id = r.external_id
        UNION ALL
        SELECT id, user_id, provider, 2 FROM payments WHERE r.payload IS NOT NULL AND payload = r.payload
        UNION ALL
        SELECT id, user_id, provider, 3 FROM payments WHERE r.payload IS NULL AND id = r.payment_id
        ORDER BY rank LIMIT 1
    ) f
    WHERE f.provider = r.provider
),
locked_users AS MATERIALIZED (
    SELECT id, referrer_id, balance_minor, first_paid_at, banned_at FROM users
    WHERE id = ANY (ARRAY(
        SELECT user_id FROM target
        UNION
        SELECT referrer_id FROM users WHERE id = ANY (ARRAY(SELECT user_id FROM target))
    ))
    ORDER BY id
    FOR UPDATE
),
locked_subscriptions AS MATERIALIZED (
    SELECT id, user_id, kind, status, expires_at FROM subscriptions
    WHERE user_id = ANY (ARRAY(SELECT user_id FROM target)) AND (SELECT count(*) FROM locked_users) > 0
    ORDER BY id
    FOR UPDATE
),
locked_payments AS MATERIALIZED (
    SELECT {PAYMENT_COLUMNS} FROM payments
    WHERE id = ANY (ARRAY(SELECT id FROM target)) AND (SELECT count(*) FROM locked_subscriptions) >= 0
    ORDER BY id
    FOR UPDATE
),
locked_promos AS MATERIALIZED (
    SELECT code FROM promo_codes
    WHERE code = ANY (ARRAY(
        SELECT promo_code FROM locked_payments WHERE status IN ('pending', 'expired')
    ))
    ORDER BY code
    FOR UPDATE
)
SELECT t.n, p.*,
       u.referrer_id AS u_referrer_id, u.balance_minor AS u_balance_minor,
       u.first_paid_at AS u_first_paid_at, u.banned_at AS u_banned_at,
       r.id AS r_id, r.balance_minor AS r_balance_minor,
       s.id AS s_id, s.kind AS s_kind, s.status AS s_status, s.expires_at AS s_expires_at,
       pr.code AS promo_found,
       pl.prices AS plan_prices, pl.stars_price AS plan_stars_price
FROM target t
JOIN locked_payments p ON p.id = t.id
JOIN locked_users u ON u.id = p.user_id
LEFT JOIN locked_users r ON r.id = u.referrer_id
LEFT JOIN locked_subscriptions s ON s.user_id = p.user_id
LEFT JOIN locked_promos pr ON pr.code = p.promo_code
LEFT JOIN plans pl ON pl.code = p.plan_code
ORDER BY t.n
LIMIT $5
"""

# $1 now (the batch's business time)
# one element per payment to apply:
#   $2 payment ids, $3 external ids, $4 payer ids, $5 is a plan, $6 locked subscription id or NULL,
#   $7 plan code, $8 new expiry, $9 new subscription token, $10 want a present key, $11 new key uuid,
#   $12 promo code found or NULL, $13 redemption reference, $14 referrer id, $15 reward (0: none),
#   what the provider says was paid: $16 asset, $17 amount, $18 fiat rate, $19 USD rate,
#   $20 fee asset, $21 fee amount (numeric, exact; NULL when the provider does not say)
# one element per ledger row: $22 payment id, $23 user id, $24 amount, $25 kind, $26 reference,
#   $27 idempotency key
# one element per notice: $28 payment id, $29 chat id, $30 kind, $31 payload (JSON text),
#   $32 dedupe key
APPLY_EFFECTS = """
WITH pay AS (
    SELECT * FROM unnest($2::bigint[], $3::text[], $4::bigint[], $5::boolean[], $6::bigint[],
                         $7::text[], $8::timestamptz[], $9::text[], $10::boolean[], $11::uuid[],
                         $12::text[], $13::text[], $14::bigint[], $15::bigint[],
                         $16::text[], $17::numeric[], $18::numeric[], $19::numeric[], $20::text[],
                         $21::numeric[])
        AS b(id, external_id, payer_id, is_plan, s_id, plan_code, expires_at, token, want_key,
             key_uuid, promo_code, promo_reference, referrer_id, reward, paid_asset, paid_amount,
             paid_fiat_rate, paid_usd_rate, fee_asset, fee_amount)
),
applied AS (
    UPDATE payments p SET status = 'applied', applied_at = $1,
        external_id = coalesce(p.external_id, b.external_id),
        paid_asset = b.paid_asset, paid_amount = b.paid_amount, paid_fiat_rate = b.paid_fiat_rate,
        paid_usd_rate = b.paid_usd_rate, fee_asset = b.fee_asset, fee_amount = b.fee_amount
    FROM pay b
    WHERE p.id = b.id AND p.status IN ('pending', 'expired')
    RETURNING p.id
),
ok AS (
    SELECT b.* FROM pay b JOIN applied a ON a.id = b.id
),
entries AS (
    SELECT e.* FROM unnest($22::bigint[], $23::bigint[], $24::bigint[], $25::text[], $26::text[],
                           $27::text[]) AS e(payment_id, user_id, amount_minor, kind, reference,
                                             idempotency_key)
    JOIN applied a ON a.id = e.payment_id
),
posted AS (
    INSERT INTO ledger (user_id, amount_minor, kind, reference, idempotency_key, created_at)
    SELECT e.user_id, e.amount_minor, e.kind, e.reference, e.idempotency_key, $1 FROM entries e
),
balances AS (
    UPDATE users u SET
        balance_minor = u.balance_minor + d.delta,
        first_paid_at = CASE WHEN d.paid THEN coalesce(u.first_paid_at, $1) ELSE u.first_paid_at END
    FROM (
        SELECT user_id, sum(delta)::bigint AS delta, bool_or(paid) AS paid FROM (
            SELECT payer_id AS user_id, 0::bigint AS delta, true AS paid FROM ok
            UNION ALL SELECT user_id, amount_minor, false FROM entries
        ) moves GROUP BY user_id
    ) d
    WHERE u.id = d.user_id
    RETURNING u.id, u.balance_minor
),
new_subscription AS (
    INSERT INTO subscriptions (user_id, kind, status, plan_code, starts_at, expires_at, token,
                               created_at, updated_at)
    SELECT payer_id, 'paid', 'active', plan_code, $1, expires_at, token, $1, $1
    FROM ok WHERE is_plan AND s_id IS NULL
    ON CONFLICT (user_id) DO NOTHING
    RETURNING id, user_id
),
extended_subscription AS (
    UPDATE subscriptions s SET
        kind = 'paid', status = 'active', plan_code = coalesce(o.plan_code, s.plan_code),
        starts_at = CASE WHEN s.status = 'expired' THEN $1 ELSE s.starts_at END,
        expires_at = o.expires_at, renew_next_try_at = NULL, updated_at = $1
    FROM ok o
    WHERE s.id = o.s_id AND o.is_plan
    RETURNING s.id, s.user_id
),
renewal_unblocked AS (
    -- a top-up: money arrived, so a renewal waiting for it may try again at once (only a waiting
    -- one is touched: rewriting a NULL with NULL would cost a row version and its WAL for nothing)
    UPDATE subscriptions s SET renew_next_try_at = NULL
    FROM ok o
    WHERE s.id = o.s_id AND NOT o.is_plan AND s.renew_next_try_at IS NOT NULL
),
granted AS (
    SELECT g.id, g.user_id, o.want_key, o.key_uuid
    FROM (SELECT id, user_id FROM new_subscription
          UNION ALL SELECT id, user_id FROM extended_subscription) g
    JOIN ok o ON o.payer_id = g.user_id
),
revived_key AS (
    -- no key present: the newest one comes back, so a lapsed user's configured client works again
    UPDATE vpn_keys k SET desired = 'present', generation = k.generation + 1, changed_at = $1
    FROM granted g
    WHERE g.want_key AND k.id = (SELECT max(id) FROM vpn_keys WHERE subscription_id = g.id)
      AND NOT EXISTS (SELECT 1 FROM vpn_keys WHERE subscription_id = g.id AND desired = 'present')
),
new_key AS (
    INSERT INTO vpn_keys (subscription_id, uuid, desired, created_at, changed_at)
    SELECT g.id, g.key_uuid, 'present', $1, $1 FROM granted g
    WHERE g.want_key AND NOT EXISTS (SELECT 1 FROM vpn_keys WHERE subscription_id = g.id)
),
redeemed AS (
    INSERT INTO promo_redemptions (code, user_id, payment_id, reference, created_at)
    SELECT promo_code, payer_id, id, promo_reference, $1 FROM ok WHERE promo_code IS NOT NULL
    ON CONFLICT DO NOTHING
    RETURNING code, user_id
),
promo_counted AS (
    UPDATE promo_codes SET uses = uses + 1
    WHERE code IN (SELECT code FROM redeemed) AND (max_uses IS NULL OR uses < max_uses)
),
session_cleared AS (
    DELETE FROM promo_sessions ps USING redeemed r WHERE ps.user_id = r.user_id AND ps.code = r.code
),
rewarded AS (
    INSERT INTO referral_rewards (referrer_id, referred_id, payment_id, amount_minor, created_at)
    SELECT referrer_id, payer_id, id, reward, $1 FROM ok WHERE reward > 0
),
notices AS (
    INSERT INTO outbox (chat_id, kind, payload, dedupe_key, priority, next_attempt_at, created_at)
    SELECT m.chat_id, m.kind, m.payload::jsonb, m.dedupe_key, 0, $1, $1
    FROM unnest($28::bigint[], $29::bigint[], $30::text[], $31::text[], $32::text[])
             AS m(payment_id, chat_id, kind, payload, dedupe_key)
    JOIN applied a ON a.id = m.payment_id
    ON CONFLICT (dedupe_key) DO NOTHING
)
SELECT (SELECT coalesce(array_agg(id), '{}') FROM applied) AS applied_ids,
       (SELECT coalesce(array_agg(id ORDER BY id), '{}') FROM balances) AS balance_ids,
       (SELECT coalesce(array_agg(balance_minor ORDER BY id), '{}') FROM balances) AS balances,
       (SELECT coalesce(array_agg(user_id), '{}') FROM granted) AS granted_users
"""

# The common case, top-ups that bring no promo bonus and no referral reward, written without the
# subscription, key, promo and referral CTEs of APPLY_EFFECTS: every CTE of a prepared statement is
# initialised and every table it writes is locked and has its indexes opened on each execution,
# even when it writes nothing, and that is most of the statement's cost for a small batch (1.35×
# the payments per second of APPLY_EFFECTS on generic plans: docs/benchmarks.md, session 5).
# $1 now; one element per payment: $2 payment ids, $3 external ids, $4 payer ids, $5 the payer's
# subscription id or NULL, $6..$11 what the provider says was paid (as in APPLY_EFFECTS);
# ledger rows: $12..$17 and notices: $18..$22 (as $22..$32 of APPLY_EFFECTS)
TOPUP_EFFECTS = """
WITH pay AS (
    SELECT * FROM unnest($2::bigint[], $3::text[], $4::bigint[], $5::bigint[], $6::text[],
                         $7::numeric[], $8::numeric[], $9::numeric[], $10::text[], $11::numeric[])
        AS b(id, external_id, payer_id, s_id, paid_asset, paid_amount, paid_fiat_rate, paid_usd_rate,
             fee_asset, fee_amount)
),
applied AS (
    UPDATE payments p SET status = 'applied', applied_at = $1,
        external_id = coalesce(p.external_id, b.external_id),
        paid_asset = b.paid_asset, paid_amount = b.paid_amount, paid_fiat_rate = b.paid_fiat_rate,
        paid_usd_rate = b.paid_usd_rate, fee_asset = b.fee_asset, fee_amount = b.fee_amount
    FROM pay b
    WHERE p.id = b.id AND p.status IN ('pending', 'expired')
    RETURNING p.id
),
entries AS (
    SELECT e.* FROM unnest($12::bigint[], $13::bigint[], $14::bigint[], $15::text[], $16::text[],
                           $17::text[]) AS e(payment_id, user_id, amount_minor, kind, reference,
                                             idempotency_key)
    JOIN applied a ON a.id = e.payment_id
),
posted AS (
    INSERT INTO ledger (user_id, amount_minor, kind, reference, idempotency_key, created_at)
    SELECT e.user_id, e.amount_minor, e.kind, e.reference, e.idempotency_key, $1 FROM entries e
),
balances AS (
    UPDATE users u SET balance_minor = u.balance_minor + d.delta,
                       first_paid_at = coalesce(u.first_paid_at, $1)
    FROM (SELECT user_id, sum(amount_minor)::bigint AS delta FROM entries GROUP BY user_id) d
    WHERE u.id = d.user_id
    RETURNING u.id, u.balance_minor
),
renewal_unblocked AS (
    UPDATE subscriptions s SET renew_next_try_at = NULL
    FROM pay b JOIN applied a ON a.id = b.id
    WHERE s.id = b.s_id AND s.renew_next_try_at IS NOT NULL
),
notices AS (
    INSERT INTO outbox (chat_id, kind, payload, dedupe_key, priority, next_attempt_at, created_at)
    SELECT m.chat_id, m.kind, m.payload::jsonb, m.dedupe_key, 0, $1, $1
    FROM unnest($18::bigint[], $19::bigint[], $20::text[], $21::text[], $22::text[])
             AS m(payment_id, chat_id, kind, payload, dedupe_key)
    JOIN applied a ON a.id = m.payment_id
    ON CONFLICT (dedupe_key) DO NOTHING
)
SELECT (SELECT coalesce(array_agg(id), '{}') FROM applied) AS applied_ids,
       (SELECT coalesce(array_agg(id ORDER BY id), '{}') FROM balances) AS balance_ids,
       (SELECT coalesce(array_agg(balance_minor ORDER BY id), '{}') FROM balances) AS balances,
       '{}'::bigint[] AS granted_users
"""

# one element per flagged payment: $1 payment id, $2 reason, $3 external id, $4..$9 what the
# provider says was paid (as above)
FLAG_MISMATCHES = """
UPDATE payments p SET status = 'flagged', status_reason = f.reason,
    external_id = coalesce(p.external_id, f.external_id),
    paid_asset = f.paid_asset, paid_amount = f.paid_amount, paid_fiat_rate = f.paid_fiat_rate,
    paid_usd_rate = f.paid_usd_rate, fee_asset = f.fee_asset, fee_amount = f.fee_amount
FROM unnest($1::bigint[], $2::text[], $3::text[], $4::text[], $5::numeric[], $6::numeric[],
            $7::numeric[], $8::text[], $9::numeric[])
    AS f(id, reason, external_id, paid_asset, paid_amount, paid_fiat_rate, paid_usd_rate, fee_asset,
         fee_amount)
WHERE p.id = f.id AND p.status IN ('pending', 'expired')
"""

# $1 now; one element per second charge: $2 user id, $3 provider, $4 external id, $5 new payload,
# $6 purpose, $7 plan code, $8 amount, $9 currency, $10 days, $11 reason, $12..$17 what the provider
# says was paid (as above)
RECORD_SECOND_CHARGES = """
INSERT INTO payments (user_id, provider, external_id, payload, purpose, plan_code, amount_minor,
                      currency, credit_minor, bonus_days, days, promo_code, status, status_reason,
                      created_at, expires_at, paid_asset, paid_amount, paid_fiat_rate, paid_usd_rate,
                      fee_asset, fee_amount)
SELECT c.user_id, c.provider, c.external_id, c.payload, c.purpose, c.plan_code, c.amount_minor,
       c.currency, 0, 0, c.days, NULL, 'flagged', c.reason, $1, $1, c.paid_asset, c.paid_amount,
       c.paid_fiat_rate, c.paid_usd_rate, c.fee_asset, c.fee_amount
FROM unnest($2::bigint[], $3::text[], $4::text[], $5::text[], $6::text[], $7::text[], $8::bigint[],
            $9::text[], $10::integer[], $11::text[], $12::text[], $13::numeric[], $14::numeric[],
            $15::numeric[], $16::text[], $17::numeric[])
    AS c(user_id, provider, external_id, payload, purpose, plan_code, amount_minor, currency, days,
         reason, paid_asset, paid_amount, paid_fiat_rate, paid_usd_rate, fee_asset, fee_amount)
ON CONFLICT DO NOTHING
RETURNING id, provider, external_id
"""
