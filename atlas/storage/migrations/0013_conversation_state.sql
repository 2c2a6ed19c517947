-- aiogram's FSM state (the conversation an admin or a user is in: "send the broadcast text",
-- "type a promo code") in PostgreSQL, so that with several processes behind a webhook load
-- balancer the next message finds its conversation whichever process it reaches.
CREATE TABLE conversation_state (
    bot_id                  bigint      NOT NULL,
    chat_id                 bigint      NOT NULL,
    user_id                 bigint      NOT NULL,
    thread_id               bigint      NOT NULL DEFAULT 0,   -- 0: no topic thread
    business_connection_id  text        NOT NULL DEFAULT '',
    destiny                 text        NOT NULL,
    state                   text,
    data                    jsonb       NOT NULL DEFAULT '{}'::jsonb,
    updated_at              timestamptz NOT NULL,
    PRIMARY KEY (bot_id, chat_id, user_id, thread_id, business_connection_id, destiny)
);
CREATE INDEX conversation_state_updated ON conversation_state (updated_at);
