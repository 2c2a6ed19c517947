-- What the VPN controller (atlas.storage.units.vpn, atlas.actors.vpn_controller) needs beyond 0002.
-- 0002 is applied, so it is not edited: each change below says why it is needed.

-- Finding work must not scan every key on every tick. Units elsewhere change only
-- vpn_keys.desired (bumping generation); the controller "plans" each change once: it marks the
-- key's per-node rows pending (creating them for a present key) and sets planned_generation. The
-- partial index holds only keys changed since they were last planned, so an idle controller
-- finds nothing in O(1). Existing keys start unplanned (0 <> generation >= 1) and are planned.
ALTER TABLE vpn_keys ADD COLUMN planned_generation integer NOT NULL DEFAULT 0;
CREATE INDEX vpn_keys_unplanned ON vpn_keys (id) WHERE planned_generation <> generation;

-- pending: the node's applied state differs from what the key wants (set by planning and by the
-- full reconcile, cleared by a successful node call made at the key's current generation).
-- lease_owner / lease_until: the node call happens AFTER the claiming transaction ends, so the row
-- lock of FOR UPDATE SKIP LOCKED is gone by then; a live lease keeps a second controller (another
-- process) from working on the same (key, node) until the owner records the result or the lease
-- runs out.
ALTER TABLE vpn_key_nodes ADD COLUMN pending boolean NOT NULL DEFAULT true;
ALTER TABLE vpn_key_nodes ADD COLUMN lease_owner text;
ALTER TABLE vpn_key_nodes ADD COLUMN lease_until timestamptz;
UPDATE vpn_key_nodes SET next_attempt_at = updated_at WHERE next_attempt_at IS NULL;
CREATE INDEX vpn_key_nodes_due ON vpn_key_nodes (node, next_attempt_at, key_id) WHERE pending;

-- The full reconcile walks the keys wanted present in UUID order (keyset pagination, merged with
-- each node's user list sorted by email). Absent keys accumulate forever (expired, reissued); this
-- index keeps them out of the walk.
CREATE INDEX vpn_keys_present_uuid ON vpn_keys (uuid) WHERE desired = 'present';
