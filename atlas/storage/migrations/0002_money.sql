-- Money and access: users, plans, subscriptions, keys, ledger, payments, promo codes, referrals,
-- outbox, broadcasts, admin audit. Contracts 2, 4, 5, 6 and 7 of DESIGN.md live in these constraints.
-- Every timestamp is written from the application's clock (a parameter), never from now().

CREATE TABLE users (
    id              bigint PRIMARY KEY,                  -- the Telegram user id
    username        text,
    first_name      text,
    language        text        NOT NULL DEFAULT 'ru' CHECK (language IN ('ru', 'en')),
    referral_code   text        NOT NULL UNIQUE CHECK (referral_code ~ '^[A-Za-z0-9_-]{4,32}$'),
    referrer_id     bigint      REFERENCES users (id),
    balance_minor   bigint      NOT NULL DEFAULT 0 CHECK (balance_minor >= 0),
    trial_used_at   timestamptz,                         -- one trial per user, ever
    first_paid_at   timestamptz,                         -- null: never paid (a broadcast segment)
    banned_at       timestamptz,                         -- an admin blocked this user
    bot_blocked_at  timestamptz,                         -- the user blocked the bot (403 from Telegram)
    created_at      timestamptz NOT NULL,
    CHECK (referrer_id IS NULL OR referrer_id <> id)
);
CREATE INDEX users_referrer ON users (referrer_id) WHERE referrer_id IS NOT NULL;
CREATE INDEX users_username ON users (lower(username)) WHERE username IS NOT NULL;

-- Mirrors the reviewed plan config file; synced at start. Payments and subscriptions keep the
-- plan code and the price they were sold at, so editing the file never rewrites history.
CREATE TABLE plans (
    code            text PRIMARY KEY CHECK (code ~ '^[a-z0-9_]{1,32}$'),
    duration_days   integer     NOT NULL CHECK (duration_days > 0),
    for_sale        boolean     NOT NULL DEFAULT true,
    prices          jsonb       NOT NULL,               -- {"RUB": 19900, "USD": 299}
    stars_price     integer     CHECK (stars_price > 0),
    synced_at       timestamptz NOT NULL
);

CREATE TABLE subscriptions (
    id                    bigserial PRIMARY KEY,
    user_id               bigint      NOT NULL UNIQUE REFERENCES users (id),   -- one per user
    kind                  text        NOT NULL CHECK (kind IN ('trial', 'paid')),
    status                text        NOT NULL CHECK (status IN ('active', 'expired')),
    plan_code             text        REFERENCES plans (code),
    starts_at             timestamptz NOT NULL,
    expires_at            timestamptz NOT NULL,
    auto_renew            boolean     NOT NULL DEFAULT false,
    last_auto_renewal_at  timestamptz,
    -- After "not enough balance", the next renewal attempt waits until then: without it, those rows
    -- would fill every claimed batch and starve the subscriptions that can be renewed.
    renew_next_try_at     timestamptz,
    token                 text        NOT NULL UNIQUE CHECK (length(token) >= 22),  -- /sub/<token>, >= 128 bits
    created_at            timestamptz NOT NULL,
    updated_at            timestamptz NOT NULL,
    CHECK (expires_at >= starts_at)
);
CREATE INDEX subscriptions_due ON subscriptions (expires_at, id) WHERE status = 'active';
CREATE INDEX subscriptions_renewable ON subscriptions (expires_at, id)
    WHERE status = 'active' AND kind = 'paid' AND auto_renew;

-- One key (a VLESS UUID) per subscription at a time; reissue makes the old one absent and a new one
-- present. ``desired`` is what every enabled node should have; per-node progress is below.
CREATE TABLE vpn_keys (
    id              bigserial PRIMARY KEY,
    subscription_id bigint      NOT NULL REFERENCES subscriptions (id),
    uuid            uuid        NOT NULL UNIQUE,
    desired         text        NOT NULL CHECK (desired IN ('present', 'absent')),
    generation      integer     NOT NULL DEFAULT 1,      -- bumped on every desired change
    notify_active   boolean     NOT NULL DEFAULT true,   -- tell the user once it is live
    created_at      timestamptz NOT NULL,
    changed_at      timestamptz NOT NULL
);
CREATE UNIQUE INDEX vpn_keys_one_present ON vpn_keys (subscription_id) WHERE desired = 'present';
CREATE INDEX vpn_keys_changed ON vpn_keys (changed_at, id);

CREATE TABLE vpn_key_nodes (
    key_id            bigint      NOT NULL REFERENCES vpn_keys (id),
    node              text        NOT NULL,
    applied           text        NOT NULL CHECK (applied IN ('present', 'absent')),
    applied_generation integer    NOT NULL,
    attempts          integer     NOT NULL DEFAULT 0,
    next_attempt_at   timestamptz,
    last_error        text,
    updated_at        timestamptz NOT NULL,
    PRIMARY KEY (key_id, node)
);

-- Every balance change. Invariant: users.balance_minor = sum(amount_minor) per user.
CREATE TABLE ledger (
    id               bigserial PRIMARY KEY,
    user_id          bigint      NOT NULL REFERENCES users (id),
    amount_minor     bigint      NOT NULL CHECK (amount_minor <> 0),
    kind             text        NOT NULL CHECK (kind IN ('topup', 'purchase', 'renewal', 'refund',
                                                          'referral_reward', 'promo_bonus', 'admin_adjust')),
    reference        text        NOT NULL,
    idempotency_key  text        NOT NULL UNIQUE,
    created_at       timestamptz NOT NULL
);
CREATE INDEX ledger_user ON ledger (user_id, id);

CREATE TABLE payments (
    id               bigserial PRIMARY KEY,
    user_id          bigint      NOT NULL REFERENCES users (id),
    provider         text        NOT NULL CHECK (provider IN ('cryptopay', 'stars')),
    external_id      text,                               -- invoice id / telegram_payment_charge_id
    payload          text        NOT NULL UNIQUE,        -- unguessable; travels in the invoice
    purpose          text        NOT NULL CHECK (purpose IN ('topup', 'plan')),
    plan_code        text        REFERENCES plans (code),
    amount_minor     bigint      NOT NULL CHECK (amount_minor > 0),
    currency         text        NOT NULL CHECK (currency ~ '^[A-Z]{3}$'),
    credit_minor     bigint      NOT NULL DEFAULT 0 CHECK (credit_minor >= 0),  -- top-up: what the balance gets
    bonus_days       integer     NOT NULL DEFAULT 0 CHECK (bonus_days >= 0),
    promo_code       text,
    status           text        NOT NULL CHECK (status IN ('pending', 'applied', 'expired', 'refunded', 'flagged')),
    status_reason    text,
    created_at       timestamptz NOT NULL,
    expires_at       timestamptz NOT NULL,
    applied_at       timestamptz,
    refunded_at      timestamptz,
    UNIQUE (provider, external_id),
    CHECK ((purpose = 'plan') = (plan_code IS NOT NULL))
);
CREATE INDEX payments_pending ON payments (provider, id) WHERE status = 'pending';

CREATE TABLE promo_codes (
    code             text PRIMARY KEY CHECK (code ~ '^[A-Z0-9_-]{2,32}$'),
    kind             text        NOT NULL CHECK (kind IN ('percent', 'fixed', 'free_days', 'balance_bonus')),
    value            bigint      NOT NULL CHECK (value > 0),
    currency         text,                               -- for fixed / balance_bonus amounts
    cap_minor        bigint      CHECK (cap_minor > 0),
    max_uses         integer     CHECK (max_uses > 0),
    uses             integer     NOT NULL DEFAULT 0 CHECK (uses >= 0),
    per_user_limit   integer     NOT NULL DEFAULT 1 CHECK (per_user_limit > 0),
    expires_at       timestamptz,
    new_users_only   boolean     NOT NULL DEFAULT false,
    applies_to       text[],                             -- plan codes; null = any
    purpose          text        NOT NULL DEFAULT 'any' CHECK (purpose IN ('plan', 'topup', 'any')),
    created_by       bigint,
    created_at       timestamptz NOT NULL,
    CHECK (max_uses IS NULL OR uses <= max_uses)
);

CREATE TABLE promo_redemptions (
    id               bigserial PRIMARY KEY,
    code             text        NOT NULL REFERENCES promo_codes (code),
    user_id          bigint      NOT NULL REFERENCES users (id),
    payment_id       bigint      UNIQUE REFERENCES payments (id),
    reference        text        NOT NULL UNIQUE,        -- idempotency: one redemption per purchase
    created_at       timestamptz NOT NULL
);
CREATE INDEX promo_redemptions_user ON promo_redemptions (code, user_id);

-- A promo code a user typed, remembered for a while until they buy (the predecessor's TTL session).
CREATE TABLE promo_sessions (
    user_id          bigint PRIMARY KEY REFERENCES users (id),
    code             text        NOT NULL REFERENCES promo_codes (code),
    expires_at       timestamptz NOT NULL
);

CREATE TABLE referral_rewards (
    id               bigserial PRIMARY KEY,
    referrer_id      bigint      NOT NULL REFERENCES users (id),
    referred_id      bigint      NOT NULL REFERENCES users (id),
    payment_id       bigint      NOT NULL UNIQUE REFERENCES payments (id),
    amount_minor     bigint      NOT NULL CHECK (amount_minor > 0),
    created_at       timestamptz NOT NULL
);
CREATE INDEX referral_rewards_referrer ON referral_rewards (referrer_id);

CREATE TABLE broadcasts (
    id               bigserial PRIMARY KEY,
    created_by       bigint      NOT NULL,
    segment          text        NOT NULL CHECK (segment IN ('all', 'active', 'expired', 'trial', 'never_paid')),
    text             text        NOT NULL CHECK (length(text) BETWEEN 1 AND 4096),
    state            text        NOT NULL CHECK (state IN ('draft', 'confirmed', 'materializing', 'sending',
                                                           'done', 'cancelled')),
    cursor_user_id   bigint      NOT NULL DEFAULT 0,     -- keyset position of materialization
    recipients       integer     NOT NULL DEFAULT 0,
    progress_chat_id bigint,
    progress_message_id bigint,
    created_at       timestamptz NOT NULL,
    confirmed_at     timestamptz,
    finished_at      timestamptz
);

-- Every message Atlas sends leaves through here (contract 2). dedupe_key makes "notify once" a
-- constraint instead of a hope.
CREATE TABLE outbox (
    id               bigserial PRIMARY KEY,
    chat_id          bigint      NOT NULL,
    kind             text        NOT NULL,
    payload          jsonb       NOT NULL,
    dedupe_key       text        NOT NULL UNIQUE,
    priority         smallint    NOT NULL DEFAULT 0,     -- 0 personal notices, 1 bulk (broadcasts)
    broadcast_id     bigint      REFERENCES broadcasts (id),
    state            text        NOT NULL DEFAULT 'pending'
                                 CHECK (state IN ('pending', 'sent', 'failed', 'blocked', 'cancelled')),
    attempts         integer     NOT NULL DEFAULT 0,
    next_attempt_at  timestamptz NOT NULL,
    last_error       text,
    created_at       timestamptz NOT NULL,
    sent_at          timestamptz
);
CREATE INDEX outbox_due ON outbox (priority, next_attempt_at, id) WHERE state = 'pending';
CREATE INDEX outbox_broadcast ON outbox (broadcast_id, state) WHERE broadcast_id IS NOT NULL;

CREATE TABLE admin_audit (
    id               bigserial PRIMARY KEY,
    admin_id         bigint      NOT NULL,
    action           text        NOT NULL,
    target_user_id   bigint,
    details          jsonb       NOT NULL DEFAULT '{}'::jsonb,
    reason           text        NOT NULL CHECK (length(btrim(reason)) > 0),
    created_at       timestamptz NOT NULL
);
CREATE INDEX admin_audit_target ON admin_audit (target_user_id, id);
