-- Per-node leases of the VPN controller (atlas.storage.units.vpn_node_lease): a full reconcile of a
-- node must exclude convergence on that node, across processes. A row is one holder's claim on a
-- node until lease_until: kind 'converge' rows are shared (many controllers may converge one node),
-- a granted 'reconcile' row is exclusive, and a waiting 'reconcile' row (granted = false) already
-- keeps new convergence off, so that a reconcile is not starved by back-to-back passes.
-- A lease row, not a row lock or a session advisory lock: the node calls made under it are network
-- I/O, and a connection never meets I/O (contract 1). Rows are taken, renewed and dropped in short
-- units; a holder that dies simply lets its row run out.
CREATE TABLE vpn_node_leases (
    node        text        NOT NULL,
    holder      text        NOT NULL,
    kind        text        NOT NULL CHECK (kind IN ('converge', 'reconcile')),
    granted     boolean     NOT NULL,
    lease_until timestamptz NOT NULL,
    PRIMARY KEY (node, holder),
    CHECK (granted OR kind = 'reconcile')
);
