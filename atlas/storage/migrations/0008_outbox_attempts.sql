-- What the outbox sender needs beyond 0005 to never send a broadcast copy twice (issue 11).

-- A broadcast copy is delivered at most once: the sender marks the attempt (attempt_started_at,
-- the application's clock) in a committed unit *before* it calls Telegram, and clears it when it
-- records the result. A row still marked when its lease has run out belongs to a sender that
-- stopped between the send and the record: whether Telegram got it is unknown, and it is not sent
-- again. claim_outbox turns it into the final state 'unknown'.
ALTER TABLE outbox ADD COLUMN attempt_started_at timestamptz;
ALTER TABLE outbox DROP CONSTRAINT outbox_state_check;
ALTER TABLE outbox ADD CONSTRAINT outbox_state_check
    CHECK (state IN ('pending', 'sent', 'failed', 'blocked', 'cancelled', 'unknown'));
-- Marked rows are few (at most the sends in the air); the claim looks for abandoned ones by lease.
CREATE INDEX outbox_attempted ON outbox (leased_until) WHERE state = 'pending' AND attempt_started_at IS NOT NULL;
