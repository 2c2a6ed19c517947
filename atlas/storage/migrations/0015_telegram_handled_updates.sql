-- The Telegram updates this bot has handled, by update_id, so that an update Telegram delivers
-- again (polling: a poller SIGKILLed after handling it but before confirming it; webhook: an
-- answer that never reached Telegram) is recognised by whichever process receives it next,
-- instead of being handled twice. Written in batches (one INSERT per short interval), read only
-- for update ids a predecessor may have handled; rows older than Telegram's redelivery horizon
-- (24 h) are pruned by housekeeping.
CREATE TABLE telegram_handled_updates (
    bot_id      bigint      NOT NULL,
    update_id   bigint      NOT NULL,
    handled_at  timestamptz NOT NULL,
    PRIMARY KEY (bot_id, update_id)
);
CREATE INDEX telegram_handled_updates_handled_at ON telegram_handled_updates (handled_at);
