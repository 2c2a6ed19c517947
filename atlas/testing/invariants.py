"""The whole-system invariant audit: what must hold after any workload, crash or kill.

``atlas demo`` ends with it, and the kill, scale-out and month-long tests assert on it. It reads
the database in bounded units of work, compares it with what the outside world saw (the keys on
each VPN node, the messages the Bot API delivered, the charges the payment providers made) and
returns every broken rule as a sentence an operator can act on:

* **money**: every balance equals the sum of its ledger; a top-up is credited once, exactly when
  its payment was applied; a renewal is charged at most once per renewal period;
* **payments**: every charge a provider made is applied (or refunded) once, and nothing is
  applied that no provider charged;
* **keys**: a key wanted present belongs to an active subscription and is on every node, a key
  wanted absent is on none, and a node has no user the database does not want (no orphans);
* **messages**: no outbox message reached a chat more often than it was sent (a notice in flight
  at a crash may come twice, up to ``allow_doubled_notices``; a broadcast copy never), and, when
  asked, every outbox row ended delivered or failed with a reason.

The checks run after the system has settled (the caller waits for convergence and the outbox);
an audit during a burst of work would report work in progress as broken.
"""

from __future__ import annotations

import contextlib
import datetime as dt
from collections import Counter
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from atlas.actors.outbox.payloads import PayloadError, render
from atlas.storage import Database
from atlas.storage.tx import Tx
from atlas.storage.units.delivery import ClaimedMessage, claimed_message
from atlas.telegram.i18n import Translator, bundled
from atlas.testing.botapi.records import NEW_MESSAGE_KINDS, ChatRecord
from atlas.vpn import Fleet

_SHOWN = 20
"""Violations listed per rule; the rest are counted ("and 1,234 more")."""

_PAGE = 5000
"""Rows per unit of work when a check walks a whole table (keys, outbox)."""

_SETTLED = ("sent", "failed", "blocked", "cancelled", "unknown")
"""Outbox states that end a row: delivered, or given up with a reason (``last_error``)."""


@dataclass(frozen=True, slots=True)
class Delivery:
    """One new message the Bot API delivered to a chat, with its text exactly as the bot sent it."""

    chat_id: int
    text: str


@dataclass(frozen=True, slots=True)
class AuditReport:
    """The outcome of :func:`audit`: broken rules as sentences, and what was looked at."""

    violations: tuple[str, ...]
    counts: Mapping[str, int] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        """True when every invariant holds."""
        return not self.violations

    def describe(self) -> str:
        """A few lines for a terminal or a test failure: the verdict, the counts, each violation."""
        head = "invariants hold" if self.ok else f"{len(self.violations)} invariant violation(s)"
        counted = ", ".join(f"{name} {value:,}" for name, value in sorted(self.counts.items()))
        return "\n".join([f"{head} ({counted})", *(f"  - {v}" for v in self.violations)])


def deliveries_from(records: Iterable[ChatRecord]) -> list[Delivery]:
    """The new text messages among the Bot API emulator's chat records (edits are not deliveries)."""
    return [
        Delivery(record.chat_id, record.text)
        for record in records
        if record.kind in NEW_MESSAGE_KINDS and record.text is not None
    ]


async def node_keys_of(fleet: Fleet, *, page_size: int = 1000) -> dict[str, set[str]]:
    """Every user name on every node of ``fleet``, paged (one bounded page in memory per call)."""
    found: dict[str, set[str]] = {}
    for client in fleet.enabled():
        names: set[str] = set()
        async with contextlib.aclosing(client.iter_all_users(page_size)) as pages:
            async for page in pages:
                names.update(user.email for user in page)
        found[client.name] = names
    return found


async def audit(
    db: Database,
    *,
    now: dt.datetime,
    node_keys: Mapping[str, Collection[str]] | None = None,
    deliveries: Iterable[Delivery] | None = None,
    provider_charges: Mapping[str, Collection[str]] | None = None,
    require_outbox_settled: bool = False,
    allow_doubled_notices: int = 0,
    renew_window: dt.timedelta = dt.timedelta(hours=24),
    translator: Translator | None = None,
) -> AuditReport:
    """Check every invariant; return the violations (empty when the system is whole).

    - ``node_keys``: the user names on each node (:func:`node_keys_of`); None skips the key checks
      against nodes (the database's own key rules are still checked).
    - ``deliveries``: the new messages the Bot API saw (:func:`deliveries_from`); None skips the
      doubled-delivery check.
    - ``provider_charges``: ``{"cryptopay": paid invoice ids, "stars": charge ids}`` as the
      providers know them; None skips the provider check.
    - ``require_outbox_settled``: every outbox row must be delivered or failed with a reason.
    - ``allow_doubled_notices``: how many personal notices may have come twice (those in flight at
      a crash; a broadcast copy never may).
    - ``renew_window``: the renewal policy's window (``ATLAS_RENEW_WINDOW_HOURS``): two renewals of
      one subscription are at least ``min(renew_window, plan length)`` apart.
    """
    violations: list[str] = []
    counts: dict[str, int] = {}
    money = await db.run(_money_violations, renew_window=renew_window)
    violations += money.violations
    counts.update(money.counts)
    wanted = await _wanted_keys(db)
    counts["keys wanted present"] = len(wanted)
    violations += await db.run(_key_rule_violations)
    if node_keys is not None:
        violations += _node_violations(wanted, node_keys)
    if provider_charges is not None:
        violations += await _provider_violations(db, provider_charges)
    outbox = await _outbox_rows(db)
    counts["outbox rows"] = len(outbox)
    if require_outbox_settled:
        violations += _unsettled(outbox)
    if deliveries is not None:
        found, doubled_notices = _doubled(outbox, list(deliveries), translator or bundled())
        counts["notices delivered twice"] = doubled_notices
        violations += found
        if doubled_notices > allow_doubled_notices:
            violations.append(
                f"{doubled_notices} personal notices were delivered twice "
                f"(allowed: {allow_doubled_notices}, the sends in flight at a crash)"
            )
    return AuditReport(tuple(violations), counts)


# ----------------------------------------------------------------------------- money


@dataclass(frozen=True, slots=True)
class _Found:
    violations: list[str]
    counts: dict[str, int]


def _listed(rule: str, rows: list[Any], total: int, line: str) -> list[str]:
    """One sentence per shown row, and a count of the rest."""
    shown = [f"{rule}: {line.format(**dict(row))}" for row in rows[:_SHOWN]]
    if total > len(shown):
        shown.append(f"{rule}: and {total - len(shown):,} more")
    return shown


async def _money_violations(tx: Tx, *, renew_window: dt.timedelta) -> _Found:
    counts = {
        "users": int(await tx.fetchval("SELECT count(*) FROM users")),
        "payments applied": int(await tx.fetchval("SELECT count(*) FROM payments WHERE status = 'applied'")),
        "renewals charged": int(await tx.fetchval("SELECT count(*) FROM ledger WHERE kind = 'renewal'")),
    }
    violations: list[str] = []
    for rule, query, line in _MONEY_RULES:
        violations += await _broken_rows(tx, rule, query, line)
    violations += await _broken_rows(
        tx, "renewed twice within one renewal period", _RENEWAL_SPACING,
        "{subscription} charged at {previous} and again at {charged_at}", renew_window,
    )
    return _Found(violations, counts)


async def _broken_rows(tx: Tx, rule: str, query: str, line: str, *args: object) -> list[str]:
    """Count the rows ``query`` finds breaking ``rule``; describe the first few."""
    total = int(await tx.fetchval(f"SELECT count(*) FROM ({query}) AS broken", *args))
    if not total:
        return []
    rows = await tx.fetch(f"{query} LIMIT {_SHOWN}", *args)
    return _listed(rule, rows, total, line)


# Each rule: a name, a query returning the rows that break it, and the sentence for one row.
_MONEY_RULES: tuple[tuple[str, str, str], ...] = (
    (
        "balance differs from its ledger",
        """
        SELECT u.id AS user_id, u.balance_minor AS balance, coalesce(l.total, 0) AS ledger
        FROM users u LEFT JOIN (SELECT user_id, sum(amount_minor) AS total FROM ledger GROUP BY user_id) l
             ON l.user_id = u.id
        WHERE u.balance_minor <> coalesce(l.total, 0)
        ORDER BY u.id
        """,
        "user {user_id} has balance {balance}, ledger sums to {ledger}",
    ),
    (
        "top-up credited but not applied, or applied but not credited",
        """
        SELECT p.id AS payment_id, p.status, count(l.id) AS credits
        FROM payments p LEFT JOIN ledger l ON l.idempotency_key = 'payment:' || p.id AND l.kind = 'topup'
        WHERE p.purpose = 'topup'
        GROUP BY p.id, p.status
        HAVING (p.status IN ('applied', 'refunded')) <> (count(l.id) = 1)
        ORDER BY p.id
        """,
        "payment {payment_id} is {status} with {credits} top-up credit(s)",
    ),
    (
        "payment applied without its notice",
        """
        SELECT p.id AS payment_id FROM payments p
        WHERE p.status IN ('applied', 'refunded')
          AND NOT EXISTS (SELECT 1 FROM outbox o WHERE o.dedupe_key = 'payment-applied:' || p.id)
        ORDER BY p.id
        """,
        "payment {payment_id} was applied but its user was never told",
    ),
)


# Two renewals of one subscription closer than min(renew window, plan length): $1 the window.
_RENEWAL_SPACING = """
    SELECT subscription, charged_at, previous FROM (
        SELECT l.reference AS subscription, l.created_at AS charged_at,
               lag(l.created_at) OVER (PARTITION BY l.reference ORDER BY l.created_at) AS previous,
               least($1::interval, make_interval(days => coalesce(p.duration_days, 1))) AS spacing
        FROM ledger l
        JOIN subscriptions s ON l.reference = 'subscription:' || s.id
        LEFT JOIN plans p ON p.code = s.plan_code
        WHERE l.kind = 'renewal'
    ) r
    WHERE previous IS NOT NULL AND charged_at - previous < spacing
    ORDER BY subscription, charged_at
"""


# ----------------------------------------------------------------------------- keys


async def _wanted_page(tx: Tx, *, after: str) -> list[str]:
    rows = await tx.fetch(
        "SELECT uuid::text AS name FROM vpn_keys WHERE desired = 'present' AND uuid::text > $1 "
        "ORDER BY uuid::text LIMIT $2",
        after,
        _PAGE,
    )
    return [row["name"] for row in rows]


async def _wanted_keys(db: Database) -> set[str]:
    wanted: set[str] = set()
    after = ""
    while page := await db.run(_wanted_page, after=after):
        wanted.update(page)
        after = page[-1]
    return wanted


async def _key_rule_violations(tx: Tx) -> list[str]:
    """Keys wanted present must belong to an active subscription of a user not banned."""
    query = """
        SELECT k.uuid::text AS key, s.status, u.banned_at IS NOT NULL AS banned
        FROM vpn_keys k JOIN subscriptions s ON s.id = k.subscription_id JOIN users u ON u.id = s.user_id
        WHERE k.desired = 'present' AND (s.status <> 'active' OR u.banned_at IS NOT NULL)
        ORDER BY k.id
    """
    return await _broken_rows(
        tx, "key live without an active subscription", query,
        "key {key:.8}… is wanted present, subscription {status}, banned {banned}",
    )


def _node_violations(wanted: set[str], node_keys: Mapping[str, Collection[str]]) -> list[str]:
    violations: list[str] = []
    for node, present in sorted(node_keys.items()):
        on_node = set(present)
        missing = sorted(wanted - on_node)
        orphans = sorted(on_node - wanted)
        violations += _named(f"node {node}: wanted key absent", missing)
        violations += _named(f"node {node}: key present that is not wanted (orphan or expired)", orphans)
    return violations


def _named(rule: str, names: list[str], *, secret: bool = True) -> list[str]:
    # Key names are credentials: show a prefix, enough to find the row, never the whole UUID.
    shown = [f"{rule}: {name[:8]}…" if secret else f"{rule}: {name}" for name in names[:_SHOWN]]
    if len(names) > _SHOWN:
        shown.append(f"{rule}: and {len(names) - _SHOWN:,} more")
    return shown


# ----------------------------------------------------------------------------- providers


async def _applied_page(tx: Tx, *, provider: str, after: int) -> list[tuple[int, str | None, str]]:
    rows = await tx.fetch(
        "SELECT id, external_id, status FROM payments WHERE provider = $1 AND id > $2 "
        "AND (status IN ('applied', 'refunded') OR external_id IS NOT NULL) ORDER BY id LIMIT $3",
        provider,
        after,
        _PAGE,
    )
    return [(row["id"], row["external_id"], row["status"]) for row in rows]


async def _provider_violations(db: Database, charges: Mapping[str, Collection[str]]) -> list[str]:
    violations: list[str] = []
    for provider, charged in sorted(charges.items()):
        by_external: Counter[str] = Counter()
        applied_unpaid: list[str] = []
        after = 0
        while page := await db.run(_applied_page, provider=provider, after=after):
            after = page[-1][0]
            for payment_id, external_id, status in page:
                if external_id is not None and status in ("applied", "refunded"):
                    by_external[external_id] += 1
                if status in ("applied", "refunded") and (external_id is None or external_id not in charged):
                    applied_unpaid.append(f"payment {payment_id}")
        violations += _named(f"{provider}: applied without a charge at the provider", applied_unpaid,
                             secret=False)
        missed = sorted(str(c) for c in charged if by_external[str(c)] == 0)
        violations += [f"{provider}: charge {c} was never applied nor refunded" for c in missed[:_SHOWN]]
        twice = sorted(c for c, n in by_external.items() if n > 1)
        violations += [f"{provider}: charge {c} applied {by_external[c]} times" for c in twice[:_SHOWN]]
    return violations


# ----------------------------------------------------------------------------- the outbox


@dataclass(frozen=True, slots=True)
class _OutboxRow:
    message: ClaimedMessage
    state: str
    last_error: str | None


async def _outbox_page(tx: Tx, *, after: int) -> list[_OutboxRow]:
    rows = await tx.fetch(
        """
        SELECT o.id, o.chat_id, o.kind, o.payload, o.priority, o.broadcast_id, o.attempts,
               o.next_attempt_at, o.state, o.last_error, u.language
        FROM outbox o LEFT JOIN users u ON u.id = o.chat_id
        WHERE o.id > $1 ORDER BY o.id LIMIT $2
        """,
        after,
        _PAGE,
    )
    return [_OutboxRow(claimed_message(row), row["state"], row["last_error"]) for row in rows]


async def _outbox_rows(db: Database) -> list[_OutboxRow]:
    found: list[_OutboxRow] = []
    after = 0
    while page := await db.run(_outbox_page, after=after):
        found += page
        after = page[-1].message.id
    return found


def _unsettled(rows: list[_OutboxRow]) -> list[str]:
    pending = [f"message {row.message.id} ({row.message.kind}) is still {row.state}"
               for row in rows if row.state not in _SETTLED]
    silent = [f"message {row.message.id} ({row.message.kind}) failed without a reason"
              for row in rows if row.state == "failed" and not row.last_error]
    found = pending[:_SHOWN] + silent[:_SHOWN]
    if len(pending) > _SHOWN:
        found.append(f"and {len(pending) - _SHOWN:,} more messages not settled")
    return [f"outbox not settled: {line}" for line in found]


def _doubled(
    rows: list[_OutboxRow], deliveries: list[Delivery], translator: Translator
) -> tuple[list[str], int]:
    """Violations for broadcast copies seen twice, and how many notices were seen twice."""
    # What each (chat, text) may be seen at most: one per row that was (or may have been) sent.
    allowed: Counter[tuple[int, str]] = Counter()
    broadcast: set[tuple[int, str]] = set()
    for row in rows:
        if row.state not in ("sent", "unknown", "pending"):
            continue
        try:
            text = render(row.message, translator)[0]
        except PayloadError:
            continue  # the sender fails such a row without sending anything
        allowed[(row.message.chat_id, text)] += 1
        if row.message.at_most_once:
            broadcast.add((row.message.chat_id, text))
    seen = Counter((d.chat_id, d.text) for d in deliveries if (d.chat_id, d.text) in allowed)
    violations: list[str] = []
    doubled_notices = 0
    for pair, times in sorted(seen.items()):
        extra = times - allowed[pair]
        if extra <= 0:
            continue
        if pair in broadcast:
            violations.append(f"broadcast copy delivered {times} times to chat {pair[0]}: {pair[1][:40]!r}")
        else:
            doubled_notices += extra
    return violations[:_SHOWN], doubled_notices
