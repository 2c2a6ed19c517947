-- What the payment providers' trust fixes (issue 11 items 1, 3, 4, 5) need beyond 0006.

-- What Crypto Pay says was actually paid for an invoice: the asset and the amount in it, the rates
-- the provider used, and its fee. Exact decimals (numeric), never floats; NULL for Stars payments
-- and for payments applied before this migration. Written in apply_payment's own statement.
ALTER TABLE payments ADD COLUMN paid_asset     text CHECK (paid_asset ~ '^[A-Z0-9]{2,10}$');
ALTER TABLE payments ADD COLUMN paid_amount    numeric CHECK (paid_amount >= 0);
ALTER TABLE payments ADD COLUMN paid_fiat_rate numeric CHECK (paid_fiat_rate >= 0);
ALTER TABLE payments ADD COLUMN paid_usd_rate  numeric CHECK (paid_usd_rate >= 0);
ALTER TABLE payments ADD COLUMN fee_asset      text CHECK (fee_asset ~ '^[A-Z0-9]{2,10}$');
ALTER TABLE payments ADD COLUMN fee_amount     numeric CHECK (fee_amount >= 0);

-- A provider's authenticated message Atlas could not use (a signed webhook with a new update_type,
-- an invoice in getInvoices that fails the strict parser): answered 200 / skipped, and kept here
-- for an operator. The same bytes are kept once (a provider's retries and every watcher tick
-- repeat them).
CREATE TABLE provider_messages_kept (
    id           bigserial PRIMARY KEY,
    provider     text        NOT NULL CHECK (provider IN ('cryptopay', 'stars')),
    source       text        NOT NULL CHECK (length(source) BETWEEN 1 AND 64),   -- 'webhook', 'getInvoices'
    body_sha256  text        NOT NULL CHECK (body_sha256 ~ '^[0-9a-f]{64}$'),
    body         bytea       NOT NULL CHECK (length(body) <= 262144),
    reason       text        NOT NULL CHECK (length(reason) BETWEEN 1 AND 1000),
    received_at  timestamptz NOT NULL,
    UNIQUE (provider, body_sha256)
);

-- Provider charges Atlas refunded because they matched nothing it could apply (a Stars charge with
-- no intent, an underpaid or second charge), found by the reconcile. The row is written *before*
-- the refund call ('pending'), so a crash between the two is finished by the next reconcile, and
-- the primary key makes "refund once" a constraint.
CREATE TABLE provider_refunds (
    provider     text        NOT NULL CHECK (provider IN ('cryptopay', 'stars')),
    external_id  text        NOT NULL CHECK (length(external_id) BETWEEN 1 AND 256),
    user_id      bigint      NOT NULL,                -- the payer at the provider; maybe not our user
    amount_minor bigint      NOT NULL CHECK (amount_minor > 0),
    currency     text        NOT NULL CHECK (currency ~ '^[A-Z]{3}$'),
    payment_id   bigint      REFERENCES payments (id),   -- the flagged payment, when there is one
    reason       text        NOT NULL CHECK (length(reason) BETWEEN 1 AND 300),
    state        text        NOT NULL CHECK (state IN ('pending', 'done')),
    created_at   timestamptz NOT NULL,
    done_at      timestamptz,
    PRIMARY KEY (provider, external_id),
    CHECK ((state = 'done') = (done_at IS NOT NULL))
);
CREATE INDEX provider_refunds_pending ON provider_refunds (provider, created_at) WHERE state = 'pending';

-- Where a reconcile walk of a provider's append-only history (getStarTransactions) may resume.
CREATE TABLE reconcile_cursors (
    name         text PRIMARY KEY CHECK (length(name) BETWEEN 1 AND 64),
    position     bigint      NOT NULL CHECK (position >= 0),
    updated_at   timestamptz NOT NULL
);
