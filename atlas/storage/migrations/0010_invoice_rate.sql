-- The per-user limit on invoices opened per hour (create_payment_intent counts a user's payments
-- created since now - 1 hour, with now a parameter): this index answers that count without
-- walking the user's whole payment history.
CREATE INDEX payments_user_created ON payments (user_id, created_at);
