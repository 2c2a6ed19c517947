-- The language of the admin who wrote a broadcast, from their Telegram client, so the progress and
-- final reports are in it even when the admin has no user row (admins need not be users of the
-- bot). NULL for broadcasts written before: their reports fall back to the admin's user row.
ALTER TABLE broadcasts ADD COLUMN admin_language text
    CHECK (admin_language IS NULL OR admin_language ~ '^[a-z]{2,3}$');
