-- What the admin screens (atlas.telegram.routers.admin*) and the broadcaster need beyond 0005.

-- Maintenance mode: one row (id is always true). While enabled, non-admin updates get the
-- operator's message instead of a screen. Times are the application's clock, never now().
CREATE TABLE maintenance (
    id          boolean PRIMARY KEY DEFAULT true CHECK (id),
    enabled     boolean     NOT NULL DEFAULT false,
    message     text        NOT NULL DEFAULT '' CHECK (length(message) <= 1000),
    changed_by  bigint,
    changed_at  timestamptz
);
INSERT INTO maintenance (id, enabled, message) VALUES (true, false, '');

-- The broadcaster claims broadcasts that still have work (materializing or sending) by state.
CREATE INDEX broadcasts_active ON broadcasts (id) WHERE state IN ('confirmed', 'materializing', 'sending');
-- Export and lookup page through payments by id.
CREATE INDEX payments_user ON payments (user_id, id);
