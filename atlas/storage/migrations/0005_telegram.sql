-- What the outbox sender (atlas.actors.outbox_sender, units in atlas.storage.units.delivery) needs
-- beyond 0002. 0002 is applied, so it is not edited.

-- A lease: a claimed row belongs to one sender (lease_owner) until leased_until. Two senders never
-- claim the same row (FOR UPDATE SKIP LOCKED + an unexpired lease), a sender records results only
-- for rows it still owns, and the rows of a sender that crashed come back by themselves when the
-- lease runs out. Times are the application's clock (a parameter), never now().
ALTER TABLE outbox ADD COLUMN lease_owner uuid;
ALTER TABLE outbox ADD COLUMN leased_until timestamptz;
ALTER TABLE outbox ADD CONSTRAINT outbox_lease_pair CHECK ((lease_owner IS NULL) = (leased_until IS NULL));
