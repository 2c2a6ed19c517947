-- payments_user (user_id, id) serves no query: every look-up of a user's payments filters on
-- user_id, which payments_user_created (user_id, created_at, migration 0010) serves as well, and
-- paging by id uses the primary key. Each index is one more insert on every new row version, and
-- applying a payment rewrites its row (the status change cannot be a HOT update: status is in the
-- predicate of payments_pending and payments_applied). Measured in docs/benchmarks.md.
DROP INDEX IF EXISTS payments_user;
