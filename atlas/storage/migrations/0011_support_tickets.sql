-- Support tickets: a user's messages to the support chat and the agents' replies, stored so that
-- a reply finds its user after a restart and admins can read every conversation.
--
-- One open ticket per user (a partial unique index): a new message joins it; a closed ticket
-- stays closed and the next message opens a new one.
CREATE TABLE tickets (
    id          bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    user_id     bigint      NOT NULL REFERENCES users (id),
    status      text        NOT NULL DEFAULT 'open' CHECK (status IN ('open', 'closed')),
    created_at  timestamptz NOT NULL,
    updated_at  timestamptz NOT NULL,
    closed_at   timestamptz,
    closed_by   bigint,                                  -- the agent's Telegram id
    CHECK ((status = 'closed') = (closed_at IS NOT NULL))
);
CREATE UNIQUE INDEX tickets_one_open_per_user ON tickets (user_id) WHERE status = 'open';
-- The admin list: open tickets, newest first, keyset on id.
CREATE INDEX tickets_open_newest ON tickets (id DESC) WHERE status = 'open';

-- Every message of a ticket. support_chat_id/support_message_id say where the message is in the
-- support chat: the bot's notice of a user's message (what an agent replies to), or the agent's
-- own reply (unique, so a redelivered update cannot store or send a reply twice).
CREATE TABLE ticket_messages (
    id                  bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    ticket_id           bigint      NOT NULL REFERENCES tickets (id),
    author              text        NOT NULL CHECK (author IN ('user', 'agent')),
    author_id           bigint      NOT NULL,
    author_name         text        NOT NULL DEFAULT '' CHECK (length(author_name) <= 200),
    text                text        NOT NULL CHECK (length(text) BETWEEN 1 AND 4096),
    created_at          timestamptz NOT NULL,
    support_chat_id     bigint,
    support_message_id  bigint,
    CHECK ((support_chat_id IS NULL) = (support_message_id IS NULL))
);
CREATE UNIQUE INDEX ticket_messages_in_support_chat
    ON ticket_messages (support_chat_id, support_message_id) WHERE support_chat_id IS NOT NULL;
CREATE INDEX ticket_messages_by_ticket ON ticket_messages (ticket_id, id);
-- The per-user rate limit counts a user's recent messages.
CREATE INDEX ticket_messages_user_recent ON ticket_messages (author_id, created_at) WHERE author = 'user';
