"""VPN convergence and reconcile: the units of work behind ``vpn_controller`` and ``/sub/<token>``.

Other units change only ``vpn_keys.desired`` (bumping ``generation``). The controller turns that
into node calls in four short steps, none of which does I/O (contract 1):

1. :func:`plan_key_changes` picks keys changed since they were last planned (a partial index,
   ``planned_generation <> generation``), marks their per-node rows ``pending`` when the node's
   applied state differs from the wish, and creates the rows of a present key on every enabled
   node (a present key with no row for a node is work; an absent key with no row is not).
2. :func:`claim_node_work` claims a bounded batch of due, pending rows of ONE node with
   ``FOR UPDATE SKIP LOCKED LIMIT n`` and, in the same transaction, writes a lease
   (``lease_owner``, ``lease_until``). The row locks end with the transaction; the lease is what
   keeps a second controller (another process) off those rows while the node calls run.
   :func:`claim_leased_node_work` does the same under the node's converge lease
   (:mod:`atlas.storage.units.vpn_node_lease`), which a full reconcile of the node refuses.
3. The controller calls the node outside any transaction.
4. :func:`record_node_results` records the outcomes, only for rows whose lease is still the
   caller's. Success: ``applied`` = the wish AT THE CLAIMED GENERATION; if the key changed
   meanwhile the row stays pending. Failure: ``attempts + 1`` and ``next_attempt_at = now +
   backoff`` (exponential, capped, persisted: a restart loses nothing). When a present key is
   applied on every enabled node for the first time, the user is told through the outbox, once.

A crash between 2 and 4 leaves leased rows that nobody records; the lease runs out and the rows
are claimed again (node calls are idempotent). The full reconcile reads the wanted keys with
keyset pagination (:func:`wanted_keys_page`), re-checks orphan candidates before the controller
deletes them (:func:`wanted_among`), and marks wanted keys missing from a node
(:func:`mark_missing`) so that convergence puts them back.

Lock order: ``vpn_keys`` (ascending id) → ``vpn_key_nodes``, after the package's
users → subscription order. Claiming skips locked rows and never waits; planning skips locked
keys; recording locks its batch's keys so that a concurrent change of a wish is never overwritten.

A node's rows are ``pending`` when ``needs_work(applied, applied_generation, desired,
generation)``: the applied state differs from the wish, or a present wish has a newer generation
than the one applied (a key revoked and revived while a call was in flight is put again; the
call is idempotent, the doubt is not worth keeping). An absent wish is met by any absent row.
"""

from __future__ import annotations

import datetime as dt
import math
import re
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final, Literal

from atlas.storage.tx import Tx
from atlas.storage.units._rows import check_limit, check_now, status_count
from atlas.storage.units.outbox import enqueue_many
from atlas.storage.units.vpn_node_lease import take_converge_lease

Desired = Literal["present", "absent"]

KEY_ACTIVE_KIND: Final = "key.active"
MAX_BATCH: Final = 1000
MAX_ERROR_TEXT: Final = 500
_NODE_RE = re.compile(r"[a-z0-9][a-z0-9_-]{0,62}")
_TOKEN_RE = re.compile(r"[A-Za-z0-9_-]{22,64}")

# The SQL form of needs_work (see the module docstring), for a node row ``kn`` of key ``k``.
_NEEDS_WORK = "(kn.applied <> k.desired OR (k.desired = 'present' AND kn.applied_generation <> k.generation))"


# -- values -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class NodeWork:
    """One claimed (key, node) row: make the node's user ``email`` match ``desired``."""

    key_id: int
    uuid: uuid.UUID
    desired: Desired
    generation: int
    attempts: int

    @property
    def email(self) -> str:
        """The key's user name on a node: its UUID in canonical lower-case form."""
        return str(self.uuid)


@dataclass(frozen=True, slots=True)
class NodeResult:
    """The outcome of one node call for a claimed row; ``error`` None means it succeeded.

    ``retry_after``: seconds the next attempt must wait at least (an open circuit's reopen time),
    on top of the backoff.
    """

    key_id: int
    desired: Desired
    generation: int
    error: str | None = None
    retry_after: float = 0.0

    @classmethod
    def success(cls, work: NodeWork) -> NodeResult:
        """The node now matches ``work.desired``."""
        return cls(work.key_id, work.desired, work.generation)

    @classmethod
    def failure(cls, work: NodeWork, error: str, retry_after: float = 0.0) -> NodeResult:
        """The call failed (or was not made); ``error`` is kept in ``last_error``."""
        return cls(work.key_id, work.desired, work.generation, error or "unknown error", retry_after)


@dataclass(frozen=True, slots=True)
class Backoff:
    """Delay before retry number ``attempts``: ``min(cap, base * 2 ** (attempts - 1))`` seconds.

    Defaults: 5 s, 10 s, 20 s, ... capped at 15 minutes, so a node back from a long outage gets
    every key within the cap (the circuit breaker, not the backoff, protects the node meanwhile).
    """

    base: float = 5.0
    cap: float = 900.0

    def __post_init__(self) -> None:
        for name in ("base", "cap"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value < math.inf:
                raise ValueError(f"Backoff.{name} must be a positive finite number of seconds, got {value!r}")
        if self.cap < self.base:
            raise ValueError(f"Backoff.cap ({self.cap!r}) must be >= Backoff.base ({self.base!r})")

    def delay(self, attempts: int) -> float:
        """Seconds to wait after the ``attempts``-th consecutive failure (``attempts >= 1``)."""
        return min(self.cap, self.base * 2.0 ** min(max(attempts, 1) - 1, 60))


@dataclass(frozen=True, slots=True)
class RecordOutcome:
    """What :func:`record_node_results` wrote.

    ``converged``: successes recorded (``still_pending`` of them at a generation that is no longer
    current). ``failed``: failures recorded. ``stale``: results not recorded because the lease was
    no longer the caller's (it ran out and another controller claimed the row). ``notified``:
    keys whose "your key is active" message was written.
    """

    converged: int
    still_pending: int
    failed: int
    stale: int
    notified: int


@dataclass(frozen=True, slots=True)
class SubscriptionAccess:
    """What ``/sub/<token>`` needs: the subscription's state, its present key and the language."""

    subscription_id: int
    user_id: int
    kind: str
    status: str
    expires_at: dt.datetime
    key_uuid: uuid.UUID | None
    language: str
    is_active: bool
    banned: bool = False


# -- checks -------------------------------------------------------------------------------------


def _check_node(node: str) -> str:
    if not isinstance(node, str) or not _NODE_RE.fullmatch(node):
        raise ValueError(f"node must be a node name ([a-z0-9][a-z0-9_-]*), got {node!r}")
    return node


def _check_nodes(nodes: Sequence[str]) -> list[str]:
    if isinstance(nodes, str):
        raise ValueError(f"nodes must be a sequence of node names, got the string {nodes!r}")
    checked = [_check_node(node) for node in nodes]
    if len(set(checked)) != len(checked):
        raise ValueError(f"nodes must not repeat a name, got {list(nodes)!r}")
    return checked


def _check_owner(owner: str) -> str:
    if not isinstance(owner, str) or not 1 <= len(owner) <= 200:
        raise ValueError(f"owner must be a non-empty string of at most 200 characters, got {owner!r}")
    return owner


# -- 1. plan ------------------------------------------------------------------------------------


async def plan_key_changes(tx: Tx, *, nodes: Sequence[str], now: dt.datetime, limit: int) -> int:
    """Plan at most ``limit`` changed keys for ``nodes`` (the enabled node names); return how many.

    A planned key's rows get ``pending`` recomputed and a fresh start (attempts 0, due now): a new
    wish is not delayed by the backoff of an older one. A present key gets a row on every node in
    ``nodes`` that lacks one. Keys locked by another transaction are skipped this time.
    """
    names = _check_nodes(nodes)
    check_now(now)
    check_limit(limit, most=MAX_BATCH)
    rows = await tx.fetch(
        """
        WITH batch AS (
            SELECT id FROM vpn_keys WHERE planned_generation <> generation
            ORDER BY id LIMIT $1 FOR NO KEY UPDATE SKIP LOCKED
        )
        UPDATE vpn_keys k SET planned_generation = k.generation FROM batch WHERE k.id = batch.id
        RETURNING k.id
        """,
        limit,
    )
    if not rows:
        return 0
    ids = [row["id"] for row in rows]
    await tx.execute(
        f"""
        UPDATE vpn_key_nodes kn SET pending = {_NEEDS_WORK}, attempts = 0, next_attempt_at = $2,
            last_error = NULL, updated_at = $2
        FROM vpn_keys k
        WHERE k.id = ANY($1::bigint[]) AND kn.key_id = k.id
        """,
        ids,
        now,
    )
    if names:
        await tx.execute(
            """
            INSERT INTO vpn_key_nodes (key_id, node, applied, applied_generation, pending, attempts,
                                       next_attempt_at, updated_at)
            SELECT k.id, n.node, 'absent', 0, true, 0, $3, $3
            FROM vpn_keys k CROSS JOIN unnest($2::text[]) AS n(node)
            WHERE k.id = ANY($1::bigint[]) AND k.desired = 'present'
            ON CONFLICT (key_id, node) DO NOTHING
            """,
            ids,
            names,
            now,
        )
    return len(ids)


# -- 2. claim -----------------------------------------------------------------------------------


async def claim_node_work(
    tx: Tx, *, node: str, owner: str, now: dt.datetime, lease_until: dt.datetime, limit: int
) -> list[NodeWork]:
    """Lease at most ``limit`` due, pending rows of ``node`` to ``owner`` until ``lease_until``.

    Rows locked by another claimer, or under another owner's live lease, are skipped; the oldest
    due rows come first (a row that failed goes to the back by its ``next_attempt_at``). The
    result is ordered by key id.
    """
    _check_node(node)
    _check_owner(owner)
    check_now(now)
    check_now(lease_until)
    check_limit(limit, most=MAX_BATCH)
    if lease_until <= now:
        raise ValueError(f"lease_until must be after now, got {lease_until!r} <= {now!r}")
    rows = await tx.fetch(
        """
        WITH picked AS (
            SELECT key_id FROM vpn_key_nodes
            WHERE node = $1 AND pending AND next_attempt_at <= $2
              AND (lease_until IS NULL OR lease_until <= $2)
            ORDER BY next_attempt_at, key_id
            LIMIT $5
            FOR UPDATE SKIP LOCKED
        )
        UPDATE vpn_key_nodes kn SET lease_owner = $3, lease_until = $4
        FROM picked JOIN vpn_keys k ON k.id = picked.key_id
        WHERE kn.node = $1 AND kn.key_id = picked.key_id
        RETURNING kn.key_id, k.uuid, k.desired, k.generation, kn.attempts
        """,
        node,
        now,
        owner,
        lease_until,
        limit,
    )
    work = [
        NodeWork(
            key_id=row["key_id"],
            uuid=uuid.UUID(str(row["uuid"])),
            desired=row["desired"],
            generation=row["generation"],
            attempts=row["attempts"],
        )
        for row in rows
    ]
    work.sort(key=lambda item: item.key_id)
    return work


async def claim_leased_node_work(
    tx: Tx,
    *,
    node: str,
    owner: str,
    holder: str,
    now: dt.datetime,
    lease_until: dt.datetime,
    limit: int,
) -> list[NodeWork] | None:
    """:func:`claim_node_work` under ``holder``'s converge lease of ``node``, in one transaction.

    Returns None, claiming nothing, when the node's lease is refused (a reconcile holds or waits
    for it; see :mod:`atlas.storage.units.vpn_node_lease`). The converge lease is kept covering
    at least three quarters of ``lease_until - now``, so it outlives every call made for the rows
    claimed here (the controller bounds them by half the lease).
    """
    _check_node(node)
    check_now(now)
    # An idle node (the usual tick) costs one indexed read: no lease is taken without due work,
    # and nothing can need excluding when nothing is claimed.
    due = await tx.fetchval(
        """
        SELECT EXISTS (SELECT 1 FROM vpn_key_nodes
                       WHERE node = $1 AND pending AND next_attempt_at <= $2
                         AND (lease_until IS NULL OR lease_until <= $2))
        """,
        node,
        now,
    )
    if not due:
        return []
    if not await take_converge_lease(tx, node=node, holder=holder, now=now, until=lease_until):
        return None
    return await claim_node_work(tx, node=node, owner=owner, now=now, lease_until=lease_until, limit=limit)


# -- 4. record ----------------------------------------------------------------------------------


async def record_node_results(
    tx: Tx,
    *,
    node: str,
    owner: str,
    results: Sequence[NodeResult],
    nodes: Sequence[str],
    now: dt.datetime,
    backoff: Backoff,
) -> RecordOutcome:
    """Record the outcomes of ``owner``'s node calls on ``node`` (see the module docstring).

    ``nodes`` are the enabled node names: a present key applied on all of them for the first time
    gets one ``key.active`` outbox message (dedupe key ``key-active:<uuid>``, payload
    ``{"subscription_id", "key"}``) and ``notify_active`` cleared. Results for rows whose lease is
    no longer ``owner``'s are dropped (counted as ``stale``).
    """
    _check_node(node)
    _check_owner(owner)
    names = _check_nodes(nodes)
    check_now(now)
    if len(results) > MAX_BATCH:
        raise ValueError(f"at most {MAX_BATCH} results per call, got {len(results)}")
    if len({r.key_id for r in results}) != len(results):
        raise ValueError("results must not repeat a key_id")
    if not results:
        return RecordOutcome(0, 0, 0, 0, 0)
    # Lock the keys first (ascending id): a concurrent change of a key's wish waits for this unit,
    # so "pending" below is computed against the key's latest generation, and two nodes recording
    # the same key's last success serialize, so the "active everywhere" check cannot miss both.
    await tx.fetch(
        "SELECT id FROM vpn_keys WHERE id = ANY($1::bigint[]) ORDER BY id FOR NO KEY UPDATE",
        sorted(r.key_id for r in results),
        bounded_by="the keys of one recorded batch (at most MAX_BATCH)",
    )
    ok = [r for r in results if r.error is None]
    bad = [r for r in results if r.error is not None]
    converged: list[int] = []
    still_pending = 0
    if ok:
        rows = await tx.fetch(
            """
            UPDATE vpn_key_nodes kn SET applied = r.desired, applied_generation = r.generation,
                pending = (r.desired <> k.desired
                           OR (k.desired = 'present' AND r.generation <> k.generation)),
                attempts = 0, last_error = NULL, next_attempt_at = $5,
                lease_owner = NULL, lease_until = NULL, updated_at = $5
            FROM unnest($2::bigint[], $3::text[], $4::int[]) AS r(key_id, desired, generation),
                 vpn_keys k
            WHERE kn.node = $1 AND kn.key_id = r.key_id AND kn.lease_owner = $6 AND k.id = r.key_id
            RETURNING kn.key_id, kn.pending, r.desired
            """,
            node,
            [r.key_id for r in ok],
            [r.desired for r in ok],
            [r.generation for r in ok],
            now,
            owner,
            bounded_by="one row per result (at most MAX_BATCH)",
        )
        still_pending = sum(1 for row in rows if row["pending"])
        converged = [row["key_id"] for row in rows if row["desired"] == "present" and not row["pending"]]
        ok_recorded = len(rows)
    else:
        ok_recorded = 0
    failed = 0
    if bad:
        status = await tx.execute(
            """
            UPDATE vpn_key_nodes kn SET attempts = kn.attempts + 1,
                next_attempt_at = $5::timestamptz + make_interval(secs => greatest(
                    r.retry_after, least($7::float8, $6::float8 * power(2, least(kn.attempts, 60))))),
                last_error = r.error, lease_owner = NULL, lease_until = NULL, updated_at = $5
            FROM unnest($2::bigint[], $3::text[], $4::float8[]) AS r(key_id, error, retry_after)
            WHERE kn.node = $1 AND kn.key_id = r.key_id AND kn.lease_owner = $8
            """,
            node,
            [r.key_id for r in bad],
            [(r.error or "")[:MAX_ERROR_TEXT] for r in bad],
            [max(0.0, float(r.retry_after)) if math.isfinite(r.retry_after) else 0.0 for r in bad],
            now,
            float(backoff.base),
            float(backoff.cap),
            owner,
        )
        failed = status_count(status)
    notified = await _notify_active(tx, converged, names, now) if converged and names else 0
    return RecordOutcome(
        converged=ok_recorded,
        still_pending=still_pending,
        failed=failed,
        stale=len(results) - ok_recorded - failed,
        notified=notified,
    )


async def _notify_active(tx: Tx, key_ids: list[int], nodes: list[str], now: dt.datetime) -> int:
    """Tell users whose key just became present on every enabled node (once per key)."""
    rows = await tx.fetch(
        """
        WITH ready AS (
            SELECT k.id, k.uuid, k.subscription_id, s.user_id
            FROM vpn_keys k JOIN subscriptions s ON s.id = k.subscription_id
            WHERE k.id = ANY($1::bigint[]) AND k.desired = 'present' AND k.notify_active
              AND (SELECT count(*) FROM vpn_key_nodes kn
                   WHERE kn.key_id = k.id AND kn.node = ANY($2::text[]) AND kn.applied = 'present') = $3
        )
        UPDATE vpn_keys k SET notify_active = false FROM ready WHERE k.id = ready.id
        RETURNING ready.uuid, ready.subscription_id, ready.user_id
        """,
        key_ids,
        nodes,
        len(nodes),
        bounded_by="the keys converged in one recorded batch",
    )
    if not rows:
        return 0
    await enqueue_many(
        tx,
        [
            (
                row["user_id"],
                KEY_ACTIVE_KIND,
                {"subscription_id": row["subscription_id"], "key": str(row["uuid"])},
                f"key-active:{row['uuid']}",
            )
            for row in rows
        ],
        now=now,
    )
    return len(rows)


# -- reconcile ----------------------------------------------------------------------------------


async def wanted_keys_page(tx: Tx, *, after: uuid.UUID | None, limit: int) -> list[uuid.UUID]:
    """The next ``limit`` keys wanted present, ordered by UUID, strictly after ``after``.

    UUID order is the order of their canonical lower-case text, which is how nodes sort emails,
    so the controller can merge-join the two lists page by page.
    """
    check_limit(limit, most=MAX_BATCH)
    if after is None:
        rows = await tx.fetch(
            "SELECT uuid FROM vpn_keys WHERE desired = 'present' ORDER BY uuid LIMIT $1", limit
        )
    else:
        rows = await tx.fetch(
            "SELECT uuid FROM vpn_keys WHERE desired = 'present' AND uuid > $1 ORDER BY uuid LIMIT $2",
            after,
            limit,
        )
    return [uuid.UUID(str(row["uuid"])) for row in rows]


def canonical_key_email(email: str) -> uuid.UUID | None:
    """The key behind a node user name, or None when the name is not a canonical key email."""
    try:
        parsed = uuid.UUID(email)
    except (ValueError, AttributeError, TypeError):
        return None
    return parsed if str(parsed) == email else None


async def wanted_among(tx: Tx, *, emails: Sequence[str]) -> frozenset[str]:
    """Of these node user names, the ones the database wants present right now.

    The reconcile asks this just before deleting orphan candidates, so a key that became wanted
    after its page of wanted keys was read is not deleted.
    """
    if len(emails) > MAX_BATCH:
        raise ValueError(f"at most {MAX_BATCH} emails per call, got {len(emails)}")
    keys = {key: email for email in emails if (key := canonical_key_email(email)) is not None}
    if not keys:
        return frozenset()
    rows = await tx.fetch(
        "SELECT uuid FROM vpn_keys WHERE uuid = ANY($1::uuid[]) AND desired = 'present'",
        list(keys),
        bounded_by="the candidate emails passed in (at most MAX_BATCH)",
    )
    return frozenset(keys[uuid.UUID(str(row["uuid"]))] for row in rows)


async def mark_missing(tx: Tx, *, node: str, keys: Sequence[uuid.UUID], now: dt.datetime) -> int:
    """Record that wanted ``keys`` are missing from ``node``: applied absent, pending, due now.

    Convergence then puts them back. Keys no longer wanted present are left alone. Returns how
    many rows were marked.
    """
    _check_node(node)
    check_now(now)
    if len(keys) > MAX_BATCH:
        raise ValueError(f"at most {MAX_BATCH} keys per call, got {len(keys)}")
    if not keys:
        return 0
    status = await tx.execute(
        """
        INSERT INTO vpn_key_nodes (key_id, node, applied, applied_generation, pending, attempts,
                                   next_attempt_at, last_error, updated_at)
        SELECT k.id, $1, 'absent', 0, true, 0, $3, 'missing on the node (reconcile)', $3
        FROM vpn_keys k WHERE k.uuid = ANY($2::uuid[]) AND k.desired = 'present'
        ON CONFLICT (key_id, node) DO UPDATE SET applied = 'absent', applied_generation = 0,
            pending = true, attempts = 0, next_attempt_at = EXCLUDED.next_attempt_at,
            last_error = EXCLUDED.last_error, updated_at = EXCLUDED.updated_at
        """,
        node,
        list(keys),
        now,
    )
    return status_count(status)


# -- /sub/<token> -------------------------------------------------------------------------------


async def subscription_access(tx: Tx, *, token: str, now: dt.datetime) -> SubscriptionAccess | None:
    """The subscription behind ``/sub/<token>``, or None for an unknown (or malformed) token.

    ``is_active``: status active and ``expires_at`` after ``now``. ``key_uuid`` is the key wanted
    present (None after expiry, for a banned user, or between a revocation and a purchase).
    ``banned``: an admin blocked the user (whatever the subscription's own state).
    """
    check_now(now)
    if not isinstance(token, str) or not _TOKEN_RE.fullmatch(token):
        return None
    row = await tx.fetchrow(
        """
        SELECT s.id, s.user_id, s.kind, s.status, s.expires_at, u.language,
               u.banned_at IS NOT NULL AS banned,
               (SELECT k.uuid FROM vpn_keys k
                WHERE k.subscription_id = s.id AND k.desired = 'present') AS key_uuid
        FROM subscriptions s JOIN users u ON u.id = s.user_id
        WHERE s.token = $1
        """,
        token,
    )
    if row is None:
        return None
    key = row["key_uuid"]
    return SubscriptionAccess(
        subscription_id=row["id"],
        user_id=row["user_id"],
        kind=row["kind"],
        status=row["status"],
        expires_at=row["expires_at"],
        key_uuid=None if key is None else uuid.UUID(str(key)),
        language=row["language"],
        is_active=row["status"] == "active" and row["expires_at"] > now,
        banned=row["banned"],
    )
