-- A subscription's keys by id: applying a plan payment revives the newest key of a lapsed
-- subscription (max(id) WHERE subscription_id = ...) or inserts one when it has none (NOT EXISTS),
-- and ensure_present_key does the same for renewals and purchases from the balance. Without this
-- index only the partial vpn_keys_one_present (desired = 'present') covered subscription_id, so
-- both look-ups scanned the whole table: found with EXPLAIN of the write's generic plan at 200,000
-- keys (docs/benchmarks.md, session 5). The foreign key to subscriptions is served by it too.
CREATE INDEX IF NOT EXISTS vpn_keys_subscription ON vpn_keys (subscription_id, id);
