"""A seeded mixed workload, all due at once, and the checks that it was done once and only once.

:func:`seed_workload` writes (bulk SQL, business time ``now`` = the wall clock the Atlas processes
read) ``quiet + 5 × group`` users with one subscription and one key each, in groups:

============  ==============================================================  ==========================
group         seeded                                                          done when
============  ==============================================================  ==========================
renew         paid m1, auto-renew, ends in 1 h, balance 300.00 (one top-up)   renewed once: 101.00 left
expire        paid, ended 10 min ago, key on the node                         expired, key off the node
converge      paid for 20 days, key wanted but on no node yet                 key on the node
topup         paid for 20 days, key on the node, a pending Crypto Pay top-up  paid once: balance 150.00
remind        paid, not renewing, ends in 12 h, key on the node               one reminder
quiet         paid for 20 days, key on the node, first paid (no broadcast)    untouched
============  ==============================================================  ==========================

The expire and converge groups have never paid (``first_paid_at`` null): a broadcast to
``never_paid`` reaches them, ``2 × group`` copies. Seeded keys do not announce themselves
(``notify_active`` false), so the messages are the workload's own notices and the broadcast.

:func:`check_workload` is the invariant audit of the scale-out and kill tests (balances equal
ledgers, each paid invoice applied once, each renewal once per period, every active key present
and every expired key absent on every node, no message delivered twice, optionally every outbox
row settled) plus the per-group outcomes above.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from atlas.runtime.services import load_catalog
from atlas.runtime.settings import load_settings
from atlas.storage import Database, Tx
from atlas.storage.units.broadcasts import confirm_broadcast, create_broadcast
from atlas.storage.units.plans import sync_plans
from atlas.testing.botapi import BotApiEmulator
from atlas.testing.cryptopay_emulator import CryptoPayEmulator
from atlas.testing.invariants import audit, deliveries_from
from atlas.testing.node_emulator import EmulatedUser, NodeEmulator

GROUPS = ("renew", "expire", "converge", "topup", "remind")
RENEW_BALANCE = 30000
M1_PRICE = 19900
TOPUP_MINOR = 15000
FIRST_USER = 10_000


@dataclass(frozen=True)
class Workload:
    """What was seeded: user ids by group, the seed time, and the Crypto Pay invoice of each top-up."""

    now: dt.datetime
    groups: Mapping[str, tuple[int, ...]]
    quiet: tuple[int, ...]
    invoices: Mapping[int, int]  # user id -> invoice id
    broadcast_id: int | None = None

    @property
    def users(self) -> tuple[int, ...]:
        """Every seeded user id."""
        return tuple(sorted([*self.quiet, *(u for ids in self.groups.values() for u in ids)]))

    @property
    def broadcast_recipients(self) -> tuple[int, ...]:
        """Who the never-paid broadcast reaches."""
        return tuple(sorted([*self.groups["expire"], *self.groups["converge"]]))


def key_uuid(user_id: int) -> str:
    """The UUID of ``user_id``'s seeded key (the seed SQL computes the same: ``md5('fleet' || id)``)."""
    import hashlib

    return str(uuid.UUID(hashlib.md5(f"fleet{user_id}".encode()).hexdigest()))


async def seed_rows(tx: Tx, *, groups: Mapping[str, list[int]], quiet: list[int], now: dt.datetime,
                    nodes: list[str]) -> None:  # fmt: skip
    """The database side of :func:`seed_workload` (bulk SQL; the plans must be synced first)."""
    group_of = [(uid, name) for name, ids in groups.items() for uid in ids] + [
        (uid, "quiet") for uid in quiet
    ]
    ids = [uid for uid, _ in group_of]
    names = [name for _, name in group_of]
    await tx.execute(
        """
        INSERT INTO users (id, first_name, language, referral_code, created_at, first_paid_at,
                           balance_minor)
        SELECT g.id, 'Load', 'en', 'fl_' || g.id, $3::timestamptz - interval '40 days',
               CASE WHEN g.grp IN ('expire', 'converge') THEN NULL
                    ELSE $3::timestamptz - interval '40 days' END,
               CASE WHEN g.grp = 'renew' THEN $4::bigint ELSE 0 END
        FROM unnest($1::bigint[], $2::text[]) AS g(id, grp)
        """,
        ids, names, now, RENEW_BALANCE,
    )  # fmt: skip
    await tx.execute(
        """
        INSERT INTO ledger (user_id, amount_minor, kind, reference, idempotency_key, created_at)
        SELECT g.id, $2, 'topup', 'seed', 'seed:' || g.id, $3::timestamptz - interval '40 days'
        FROM unnest($1::bigint[]) AS g(id)
        """,
        list(groups["renew"]), RENEW_BALANCE, now,
    )  # fmt: skip
    await tx.execute(
        """
        INSERT INTO subscriptions (user_id, kind, status, plan_code, starts_at, expires_at, auto_renew,
                                   token, created_at, updated_at)
        SELECT g.id, 'paid', 'active', 'm1', $3::timestamptz - interval '30 days',
               $3::timestamptz + CASE g.grp WHEN 'renew' THEN interval '1 hour'
                                            WHEN 'expire' THEN interval '-10 minutes'
                                            WHEN 'remind' THEN interval '12 hours'
                                            ELSE interval '20 days' END,
               g.grp = 'renew', 'fleet-token-' || lpad(g.id::text, 16, '0'),
               $3::timestamptz - interval '30 days', $3::timestamptz - interval '30 days'
        FROM unnest($1::bigint[], $2::text[]) AS g(id, grp)
        """,
        ids, names, now,
    )  # fmt: skip
    await tx.execute(
        """
        INSERT INTO vpn_keys (subscription_id, uuid, desired, notify_active, created_at, changed_at)
        SELECT s.id, md5('fleet' || s.user_id)::uuid, 'present', false, $2::timestamptz - interval '30 days',
               $2::timestamptz - interval '30 days'
        FROM subscriptions s WHERE s.user_id = ANY($1::bigint[])
        """,
        ids, now,
    )  # fmt: skip
    on_node = [uid for uid, name in group_of if name != "converge"]
    await tx.execute(
        """
        INSERT INTO vpn_key_nodes (key_id, node, applied, applied_generation, updated_at)
        SELECT k.id, n.node, 'present', 1, $3::timestamptz - interval '30 days'
        FROM vpn_keys k JOIN subscriptions s ON s.id = k.subscription_id, unnest($2::text[]) AS n(node)
        WHERE s.user_id = ANY($1::bigint[])
        """,
        on_node, nodes, now,
    )  # fmt: skip
    await tx.execute("ANALYZE")


async def _pending_topups(tx: Tx, *, invoices: Mapping[int, tuple[int, str]], now: dt.datetime) -> None:
    users = list(invoices)
    await tx.execute(
        """
        INSERT INTO payments (user_id, provider, external_id, payload, purpose, amount_minor, currency,
                              credit_minor, status, created_at, expires_at)
        SELECT g.uid, 'cryptopay', g.ext, g.payload, 'topup', $4, 'RUB', $4, 'pending', $5,
               $5::timestamptz + interval '1 hour'
        FROM unnest($1::bigint[], $2::text[], $3::text[]) AS g(uid, ext, payload)
        """,
        users, [str(invoices[u][0]) for u in users], [invoices[u][1] for u in users], TOPUP_MINOR, now,
    )  # fmt: skip


async def seed_workload(
    db: Database,
    *,
    now: dt.datetime,
    group: int,
    quiet: int,
    nodes: Mapping[str, NodeEmulator],
    bot: BotApiEmulator,
    cryptopay: CryptoPayEmulator,
) -> Workload:
    """Seed the database, the nodes (every key recorded as applied), the bot's users and the invoices."""
    next_id = FIRST_USER
    groups: dict[str, list[int]] = {}
    for name in GROUPS:
        groups[name] = list(range(next_id, next_id + group))
        next_id += group
    quiet_ids = list(range(next_id, next_id + quiet))
    catalog = load_catalog(load_settings())  # the shipped example, as ``atlas run`` syncs it
    await db.run(sync_plans, catalog=catalog, now=now)
    await db.run(seed_rows, groups=groups, quiet=quiet_ids, now=now, nodes=list(nodes))
    for uid in [*quiet_ids, *(u for ids in groups.values() for u in ids)]:
        bot.add_user(uid, f"Load{uid}")
        if uid not in groups["converge"]:
            for node in nodes.values():
                node.users[key_uuid(uid)] = EmulatedUser(uuid=key_uuid(uid))
    invoices: dict[int, tuple[int, str]] = {}
    for uid in groups["topup"]:
        payload = f"fleet-topup-{uid}-{uuid.uuid4().hex}"
        invoice = cryptopay.create_invoice(
            currency_type="fiat", fiat="RUB", amount=f"{TOPUP_MINOR // 100}.00", accepted_assets="USDT",
            payload=payload,
        )  # fmt: skip
        invoices[uid] = (invoice.invoice_id, payload)
    await db.run(_pending_topups, invoices=invoices, now=now)
    return Workload(
        now=now,
        groups={name: tuple(ids) for name, ids in groups.items()},
        quiet=tuple(quiet_ids),
        invoices={uid: invoice_id for uid, (invoice_id, _) in invoices.items()},
    )


async def seed_broadcast(db: Database, *, now: dt.datetime, progress_message_id: int, text: str) -> int:
    """A confirmed broadcast to ``never_paid`` whose progress message is ``progress_message_id``."""
    draft = await db.run(create_broadcast, admin_id=ADMIN, segment="never_paid", text=text, now=now)
    await db.run(
        confirm_broadcast, broadcast_id=draft.id, admin_id=ADMIN, progress_chat_id=ADMIN,
        progress_message_id=progress_message_id, now=now,
    )  # fmt: skip
    return draft.id


ADMIN = 900


# ----------------------------------------------------------------------------- the audit


@dataclass
class Audit:
    """What the audit found: ``violations`` (empty when everything holds) and ``counts``."""

    violations: list[str] = field(default_factory=list)
    counts: Counter[str] = field(default_factory=Counter)

    @property
    def ok(self) -> bool:
        """True when no invariant was violated."""
        return not self.violations

    def expect(self, condition: bool, what: str) -> None:
        """Record ``what`` as a violation unless ``condition`` holds."""
        if not condition:
            self.violations.append(what)


async def _state(tx: Tx, *, users: list[int]) -> dict[str, list[Any]]:
    bound = len(users) * 4 + 10
    subs = await tx.fetch(
        "SELECT s.user_id, s.status, s.expires_at, u.balance_minor, "
        "(SELECT coalesce(sum(amount_minor), 0) FROM ledger l WHERE l.user_id = u.id) AS ledger_sum, "
        "(SELECT count(*) FROM ledger l WHERE l.user_id = u.id AND l.kind = 'renewal') AS renewals, "
        "(SELECT count(*) FROM ledger l WHERE l.user_id = u.id AND l.kind = 'topup') AS topups, "
        "(SELECT array_agg(k.uuid::text) FROM vpn_keys k WHERE k.subscription_id = s.id "
        "  AND k.desired = 'present') AS present_keys, "
        "(SELECT array_agg(k.uuid::text) FROM vpn_keys k WHERE k.subscription_id = s.id "
        "  AND k.desired = 'absent') AS absent_keys "
        "FROM subscriptions s JOIN users u ON u.id = s.user_id WHERE s.user_id = ANY($1::bigint[]) "
        "ORDER BY s.user_id LIMIT $2",
        users, bound,
    )  # fmt: skip
    payments = await tx.fetch(
        "SELECT user_id, external_id, status FROM payments WHERE user_id = ANY($1::bigint[]) LIMIT $2",
        users,
        bound,
    )
    drift = await tx.fetchval(
        "SELECT count(*) FROM users u WHERE balance_minor <> "
        "(SELECT coalesce(sum(amount_minor), 0) FROM ledger l WHERE l.user_id = u.id)"
    )
    outbox = await tx.fetch(
        "SELECT state, (last_error IS NOT NULL) AS has_reason, count(*) AS n FROM outbox "
        "GROUP BY 1, 2 ORDER BY 1, 2 LIMIT 50"
    )
    return {"subs": list(subs), "payments": list(payments), "drift": [drift], "outbox": list(outbox)}


async def check_workload(
    db: Database,
    workload: Workload,
    *,
    nodes: Mapping[str, NodeEmulator],
    bot: BotApiEmulator,
    paid_invoices: Iterable[int],
    require_outbox_settled: bool = False,
    allow_doubled_notices: bool = False,
    renewed: bool = True,
) -> Audit:
    """The invariant audit (:func:`atlas.testing.invariants.audit`) plus the outcome of every group.

    ``allow_doubled_notices``: a personal notice is delivered at least once, so a process killed
    between its send and its record sends it again; then doubles are counted (``doubled``), not
    violations. Broadcast copies are at most once either way (the caller checks them).
    """
    found = Audit()
    paid = set(paid_invoices)
    chats = [*workload.users, ADMIN]
    report = await audit(
        db, now=workload.now, node_keys={name: set(node.users) for name, node in nodes.items()},
        deliveries=deliveries_from(r for chat in chats for r in bot.chat_log(chat)),
        provider_charges={"cryptopay": {str(invoice) for invoice in paid}},
        require_outbox_settled=require_outbox_settled,
        allow_doubled_notices=len(chats) if allow_doubled_notices else 0,
    )  # fmt: skip
    found.violations += report.violations
    found.counts.update(report.counts)
    _check_groups(found, await db.run(_state, users=list(workload.users)), workload, nodes, bot, paid,
                  require_outbox_settled=require_outbox_settled, allow_doubled_notices=allow_doubled_notices,
                  renewed=renewed)  # fmt: skip
    return found


def _check_groups(
    audit: Audit,
    state: dict[str, list[Any]],
    workload: Workload,
    nodes: Mapping[str, NodeEmulator],
    bot: BotApiEmulator,
    paid: set[int],
    *,
    require_outbox_settled: bool,
    allow_doubled_notices: bool,
    renewed: bool,
) -> None:
    """Each group's own outcome (module docstring), on top of the general audit."""
    group_of = {uid: name for name, ids in workload.groups.items() for uid in ids}
    invoice_of = dict(workload.invoices)
    audit.expect(state["drift"][0] == 0, f"{state['drift'][0]} users' balances differ from their ledgers")
    on_node = {name: {user.uuid for user in node.users.values()} for name, node in nodes.items()}
    for row in state["subs"]:
        uid, group = row["user_id"], group_of.get(row["user_id"], "quiet")
        audit.counts[f"{group}:{row['status']}"] += 1
        audit.expect(row["balance_minor"] == row["ledger_sum"], f"user {uid}: balance != ledger")
        audit.expect(row["renewals"] <= 1, f"user {uid}: renewed {row['renewals']} times in one period")
        present, absent = row["present_keys"] or [], row["absent_keys"] or []
        for node, uuids in on_node.items():
            if row["status"] == "active":
                audit.expect(all(k in uuids for k in present) and bool(present),
                             f"user {uid} ({group}): active key missing on {node}")  # fmt: skip
            else:
                audit.expect(not present, f"user {uid}: expired subscription still wants a key")
            audit.expect(not any(k in uuids for k in absent), f"user {uid} ({group}): revoked key on {node}")
        if group == "renew" and renewed:
            audit.expect(row["renewals"] == 1 and row["balance_minor"] == RENEW_BALANCE - M1_PRICE,
                         f"user {uid}: renewal not charged exactly once ({row['renewals']})")  # fmt: skip
            audit.expect(row["expires_at"] == workload.now + dt.timedelta(hours=1, days=30),
                         f"user {uid}: renewed to {row['expires_at']}")  # fmt: skip
        if group == "expire":
            audit.expect(row["status"] == "expired", f"user {uid}: not expired")
        if group == "topup":
            applied = invoice_of[uid] in paid
            audit.expect(
                row["topups"] == (1 if applied else 0), f"user {uid}: {row['topups']} top-ups applied"
            )
            audit.expect(
                row["balance_minor"] == (TOPUP_MINOR if applied else 0), f"user {uid}: top-up balance"
            )
        audit.counts["renewal charges"] += row["renewals"]
    for row in state["payments"]:
        was_paid = int(row["external_id"]) in paid
        audit.expect(
            (row["status"] == "applied") == was_paid, f"payment of {row['user_id']}: {row['status']}"
        )
        audit.counts[f"payment:{row['status']}"] += 1
    delivered = 0
    for uid in workload.users:
        texts = [r.text for r in bot.chat_log(uid) if r.kind == "message"]
        delivered += len(texts)
        doubled = [text for text, n in Counter(texts).items() if n > 1]
        audit.counts["doubled"] += len(doubled)
        audit.expect(allow_doubled_notices or not doubled, f"chat {uid}: delivered twice: {doubled[:1]}")
    audit.counts["messages delivered"] = delivered
    for row in state["outbox"]:
        audit.counts[f"outbox:{row['state']}"] += row["n"]
        if require_outbox_settled:
            settled = row["state"] in ("sent", "blocked", "cancelled") or (
                row["state"] in ("failed", "unknown") and row["has_reason"]
            )
            audit.expect(
                settled, f"{row['n']} outbox rows {row['state']} (has a reason: {row['has_reason']})"
            )
