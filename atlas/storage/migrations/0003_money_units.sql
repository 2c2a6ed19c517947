-- What the units of work (atlas.storage.units) need beyond 0002. 0002 is applied, so it is not
-- edited: each change below says why it is needed.

-- The domain's plan code pattern (atlas.domain.PLAN_CODE_PATTERN) allows '-'; 0002 did not, so a
-- valid catalogue could fail to sync. The titles are kept so that a plan read back from the table
-- is the same Plan the catalogue holds (the bot shows them; Plan requires them).
ALTER TABLE plans DROP CONSTRAINT plans_code_check;
ALTER TABLE plans ADD CONSTRAINT plans_code_check CHECK (code ~ '^[a-z0-9][a-z0-9_-]{0,31}$');
ALTER TABLE plans ADD COLUMN titles jsonb NOT NULL DEFAULT '{}'::jsonb;

-- The domain accepts promo codes of 1-32 characters and "no per-user limit" (None); 0002 demanded
-- 2-32 and a limit.
ALTER TABLE promo_codes DROP CONSTRAINT promo_codes_code_check;
ALTER TABLE promo_codes ADD CONSTRAINT promo_codes_code_check CHECK (code ~ '^[A-Z0-9_-]{1,32}$');
ALTER TABLE promo_codes ALTER COLUMN per_user_limit DROP NOT NULL;

-- Days of access a plan payment grants (plan duration at sale time + promo free days). Stored at
-- intent time so that applying and refunding use what was sold, even if the plan file changed.
ALTER TABLE payments ADD COLUMN days integer NOT NULL DEFAULT 0 CHECK (days >= 0);
ALTER TABLE payments ADD CONSTRAINT payments_plan_days CHECK ((purpose = 'plan') = (days > 0));
-- Revenue statistics by period.
CREATE INDEX payments_applied ON payments (applied_at) WHERE status = 'applied';

-- A refund takes a referral reward back when the referrer's balance still covers it; the row stays
-- (the history) and says so here.
ALTER TABLE referral_rewards ADD COLUMN reversed_at timestamptz;

-- Expiry claims active rows by (expires_at, id) and filters by kind; reminders walk active rows by id.
CREATE INDEX subscriptions_active_id ON subscriptions (id) WHERE status = 'active';
