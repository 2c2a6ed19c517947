"""``vpn_controller``: converge every enabled node to the keys' desired state; repair drift.

Convergence (every tick, level-triggered as in Kubernetes controllers): plan changed keys, then for
each enabled node concurrently, run as many *lanes* as the node client allows calls in flight; each
lane loops within the tick's time budget:

    claim a leased batch (unit)  →  ONE batch request to the node, OUTSIDE any transaction  →  record (unit)

The batch request (``POST /v1/users:batch``, :mod:`atlas.vpn.user_batch`) carries every put and
delete of the claimed rows, and the agent writes the core's config file once for it. Every op is
idempotent on the agent, so a batch repeated after a crash is harmless. The node client bounds the
requests in flight per node and runs the circuit breaker. Outcomes, per row:

* its op succeeded → the row is applied at the claimed generation (see :mod:`atlas.storage.units.vpn`);
* its op failed (a per-op result: 400, 502, 500), or the whole request failed with
  :class:`NodeUnavailable` (timeouts, 5xx, connection errors), :class:`NodeCircuitOpen`,
  :class:`NodeProtocolError` (garbage is never success) or :class:`NodeRejected` (4xx) → a failure
  with persisted backoff; the row stays pending and nothing is lost. After an open circuit the
  node is left alone for the rest of the tick; while the circuit is half-open one lane claims a
  batch of one, so only the breaker's probe is spent.

An agent that predates the batch route answers 404 to it; that node is then worked with the
single-user routes (one call per row, as before) for the controller's lifetime.

Every claim takes the node's shared *converge lease* in the same unit, and a pass drops it when
its lanes end (:mod:`atlas.storage.units.vpn_node_lease`). A refused lease (a reconcile of the node
holds it or waits for it) ends the node's pass for this tick (``busy_nodes``).

Anything else (a bug, :class:`atlas.net.ConnectionHeldAcrossIO`) crashes the actor; its leased
rows are claimed again when the lease runs out. Node calls of one batch are bounded by half the
lease, so an owner never records after its lease has run out; calls still running then are
cancelled and recorded as failures. Set the child's ``stall_after`` above ``lease / 2``.

Full reconcile (every ``reconcile_every`` seconds, and on the message ``"reconcile"``): for each
node, merge-join the node's user list (pages sorted by email) with the wanted keys (keyset pages
ordered by UUID, whose canonical text is the email): users the database does not want are deleted,
wanted keys missing from the node (or there with another UUID or flow) are marked missing so that
convergence puts them back. The deletion of each flush of orphans runs under the node's exclusive
*reconcile lease*: take it (waiting up to ``lease`` seconds while convergence passes end), re-check
which candidates are wanted now, delete the others in one batch request, drop it. So no
convergence call is in flight on the node between the re-check and the delete, in this process or
another, and a key wanted meanwhile is put back only after the delete. Memory is bounded by one
page of each side plus one flush batch. A node added to the configuration later is filled this
way: every wanted key is missing there. Heartbeats come with every page and every call.

Messages: ``"reconcile"`` → :class:`ReconcileReport`; ``"converge"`` → :class:`ConvergeReport`.
"""

from __future__ import annotations

import datetime as dt
import logging
import math
import random
import uuid
from collections import deque
from collections.abc import AsyncGenerator, Callable, Sequence
from contextlib import aclosing
from dataclasses import dataclass, field

import trio

from atlas.actors.base import Actor
from atlas.clock import Clock
from atlas.storage import Database
from atlas.storage.units.vpn import (
    MAX_BATCH,
    Backoff,
    NodeResult,
    NodeWork,
    claim_leased_node_work,
    mark_missing,
    plan_key_changes,
    record_node_results,
    wanted_among,
    wanted_keys_page,
)
from atlas.storage.units.vpn_node_lease import release_node_lease, take_reconcile_lease
from atlas.vpn.breaker import BreakerState
from atlas.vpn.node_client import (
    MAX_PAGE,
    Fleet,
    NodeCircuitOpen,
    NodeClient,
    NodeError,
    NodeRejected,
    NodeUser,
)
from atlas.vpn.user_batch import MAX_BATCH_OPS, OpResult, UserOp

_log = logging.getLogger("atlas.actors.vpn_controller")


@dataclass(frozen=True, slots=True)
class ConvergeReport:
    """One convergence pass: rows planned, node ops recorded, nodes skipped (circuit open) and
    nodes busy (their lease refused: a reconcile of the node holds it or waits for it)."""

    planned: int = 0
    converged: int = 0
    failed: int = 0
    stale: int = 0
    notified: int = 0
    skipped_nodes: tuple[str, ...] = ()
    busy_nodes: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class ReconcileReport:
    """One full reconcile: orphans deleted, missing keys marked, nodes whose listing failed."""

    orphans_removed: int = 0
    readded: int = 0
    failed_nodes: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class VpnControllerCounters:
    """Lifetime counters for metrics: node calls converged / failed, reconcile repairs."""

    planned: int
    converged: int
    failed: int
    stale: int
    notified: int
    orphans_removed: int
    readded: int
    reconciles: int
    reconcile_failures: int


@dataclass
class _Tally:
    planned: int = 0
    converged: int = 0
    failed: int = 0
    stale: int = 0
    notified: int = 0
    orphans_removed: int = 0
    readded: int = 0
    skipped: list[str] = field(default_factory=list)
    busy: list[str] = field(default_factory=list)
    failed_nodes: list[str] = field(default_factory=list)


@dataclass
class _NodePass:
    """What the lanes of one node's convergence pass share."""

    leased: bool = False
    refused: bool = False
    skipped: bool = False


class _ReconcileLeaseRefused(Exception):
    """The node's reconcile lease was not granted within the wait (convergence kept it)."""

    def __init__(self, node: str, waited: float) -> None:
        super().__init__(f"node {node}: reconcile lease not granted within {waited:g} s")


def _positive(name: str, value: float) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value < math.inf:
        raise ValueError(f"VpnController.{name} must be a positive finite number, got {value!r}")
    return float(value)


def _count(name: str, value: int, most: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= most:
        raise ValueError(f"VpnController.{name} must be an integer in 1..{most}, got {value!r}")
    return value


class VpnController(Actor):
    """Converges nodes to the database and repairs drift; see the module docstring.

    - ``db``: returns the open :class:`Database` (a provider, as the runtime reopens it).
    - ``fleet``: one client per enabled node (breaker + concurrency limit live there).
    - ``clock``: business time for ``now``, leases and backoff. ``rng``: tick and reconcile jitter.
    - ``period`` (5 s): seconds between ticks. ``tick_budget`` (20 s): a tick stops claiming new
      batches after this long. ``batch`` (64): rows claimed per lane per batch, sent to the node
      in ONE request (at most ``MAX_BATCH_OPS``); each node runs as many lanes as its client
      allows calls in flight.
    - ``reconcile_every`` (600 s, None = only on request): seconds between full reconciles; the
      first comes ``first_reconcile`` (min, max) seconds after the first tick.
    - ``lease`` (120 s): how long claimed rows belong to this controller.
    - ``backoff``: retry delays after failures (persisted in the rows).
    - ``page_size`` (500): users per node page and keys per database page during reconcile.
    - ``owner``: the lease owner id; unique per controller by default (host-independent random).
    """

    def __init__(
        self,
        *,
        db: Callable[[], Database],
        fleet: Fleet,
        clock: Clock,
        rng: random.Random,
        name: str = "vpn_controller",
        period: float = 5.0,
        first_tick: tuple[float, float] = (1.0, 5.0),
        tick_budget: float = 20.0,
        batch: int = 64,
        reconcile_every: float | None = 600.0,
        first_reconcile: tuple[float, float] = (30.0, 120.0),
        lease: float = 120.0,
        backoff: Backoff | None = None,
        page_size: int = 500,
        owner: str | None = None,
    ) -> None:
        super().__init__(name, period=period, first_tick=first_tick, rng=rng)
        self._db = db
        self._fleet = fleet
        self._clock = clock
        self._random = rng
        self._tick_budget = _positive("tick_budget", tick_budget)
        self._batch = _count("batch", batch, min(MAX_BATCH, MAX_BATCH_OPS))
        self._reconcile_every = (
            None if reconcile_every is None else _positive("reconcile_every", reconcile_every)
        )
        low, high = first_reconcile
        if not 0 <= low <= high < math.inf:
            raise ValueError(
                "VpnController.first_reconcile must be (min, max) with 0 <= min <= max, "
                f"got {first_reconcile!r}"
            )
        self._first_reconcile = (float(low), float(high))
        self._lease = _positive("lease", lease)
        self._backoff = backoff if backoff is not None else Backoff()
        self._page_size = _count("page_size", page_size, min(MAX_PAGE, MAX_BATCH))
        self.owner = owner if owner is not None else f"{name}:{uuid.uuid4().hex[:16]}"
        self._converge_holder = f"{self.owner}/converge"
        self._reconcile_holder = f"{self.owner}/reconcile"
        self._single_call_nodes: set[str] = set()  # agents without the batch route (HTTP 404)
        self._node_names = tuple(client.name for client in fleet.enabled())
        self._next_reconcile: float | None = None
        self._planned = 0
        self._converged = 0
        self._failed = 0
        self._stale = 0
        self._notified = 0
        self._orphans_removed = 0
        self._readded = 0
        self._reconciles = 0
        self._reconcile_failures = 0

    # -- the actor ---------------------------------------------------------------------------

    async def tick(self) -> None:
        """Reconcile when due, then converge within the tick's budget."""
        now = trio.current_time()
        if self._reconcile_every is not None:
            if self._next_reconcile is None:
                self._next_reconcile = now + self._random.uniform(*self._first_reconcile)
            if now >= self._next_reconcile:
                self._next_reconcile = now + self._reconcile_every
                await self.reconcile()
        await self.converge()

    async def handle(self, message: object) -> object:
        """``"reconcile"`` runs a full reconcile now; ``"converge"`` a convergence pass."""
        if message == "reconcile":
            return await self.reconcile()
        if message == "converge":
            return await self.converge()
        raise TypeError(f"{self.name} handles 'reconcile' and 'converge', got {message!r}")

    def counters(self) -> VpnControllerCounters:
        """Lifetime counters (for the metrics exporter and tests)."""
        return VpnControllerCounters(
            planned=self._planned,
            converged=self._converged,
            failed=self._failed,
            stale=self._stale,
            notified=self._notified,
            orphans_removed=self._orphans_removed,
            readded=self._readded,
            reconciles=self._reconciles,
            reconcile_failures=self._reconcile_failures,
        )

    # -- convergence -------------------------------------------------------------------------

    async def converge(self, budget: float | None = None) -> ConvergeReport:
        """Plan changed keys, then work every enabled node's due rows for at most ``budget`` s.

        Returns what this pass did. Cancelled mid-batch: the batch's leases run out and its rows
        are claimed again later; nothing is lost.
        """
        seconds = self._tick_budget if budget is None else _positive("budget", budget)
        deadline = trio.current_time() + seconds
        tally = _Tally()
        while True:
            planned = await self._db().run(
                plan_key_changes, nodes=self._node_names, now=self._clock.now(), limit=MAX_BATCH
            )
            tally.planned += planned
            self._planned += planned
            self.heartbeat()
            if planned < MAX_BATCH or trio.current_time() >= deadline:
                break
        async with trio.open_nursery() as nursery:
            for client in self._fleet.enabled():
                nursery.start_soon(self._converge_node, client, deadline, tally)
        report = ConvergeReport(
            planned=tally.planned,
            converged=tally.converged,
            failed=tally.failed,
            stale=tally.stale,
            notified=tally.notified,
            skipped_nodes=tuple(tally.skipped),
            busy_nodes=tuple(tally.busy),
        )
        if report.converged or report.failed or report.stale:
            _log.info(
                "vpn converge: planned=%d converged=%d failed=%d stale=%d notified=%d skipped=%s busy=%s",
                report.planned,
                report.converged,
                report.failed,
                report.stale,
                report.notified,
                ",".join(report.skipped_nodes) or "-",
                ",".join(report.busy_nodes) or "-",
            )
        return report

    async def _converge_node(self, client: NodeClient, deadline: float, tally: _Tally) -> None:
        node_pass = _NodePass()
        lanes = max(1, int(client.limiter.total_tokens))
        try:
            async with trio.open_nursery() as nursery:
                for lane in range(lanes):
                    nursery.start_soon(self._converge_lane, client, lane, deadline, tally, node_pass)
        finally:
            if node_pass.leased:
                await self._release(client.name, self._converge_holder)
        if node_pass.skipped:
            tally.skipped.append(client.name)
        if node_pass.refused:
            tally.busy.append(client.name)

    async def _converge_lane(
        self, client: NodeClient, lane: int, deadline: float, tally: _Tally, node_pass: _NodePass
    ) -> None:
        while trio.current_time() < deadline and not node_pass.refused:
            state = client.breaker.state
            if state is BreakerState.OPEN:
                node_pass.skipped = True
                return
            # Half-open: the breaker lets exactly one call through; one lane claims only that one,
            # so the rest of a batch does not burn an attempt each on an instant "circuit open".
            if state is not BreakerState.CLOSED and lane > 0:
                return
            limit = 1 if state is BreakerState.HALF_OPEN else self._batch
            now = self._clock.now()
            work = await self._db().run(
                claim_leased_node_work,
                node=client.name,
                owner=self.owner,
                holder=self._converge_holder,
                now=now,
                lease_until=now + dt.timedelta(seconds=self._lease),
                limit=limit,
            )
            if work is None:
                node_pass.refused = True
                return
            node_pass.leased = True
            if not work:
                return
            results = await self._call_node(client, work)
            outcome = await self._db().run(
                record_node_results,
                node=client.name,
                owner=self.owner,
                results=results,
                nodes=self._node_names,
                now=self._clock.now(),
                backoff=self._backoff,
            )
            self.heartbeat()
            tally.converged += outcome.converged
            tally.failed += outcome.failed
            tally.stale += outcome.stale
            tally.notified += outcome.notified
            self._converged += outcome.converged
            self._failed += outcome.failed
            self._stale += outcome.stale
            self._notified += outcome.notified
            if outcome.failed:
                first = next(r.error for r in results if r.error is not None)
                _log.warning(
                    "node %s: %d of %d ops failed; first: %s",
                    client.name,
                    outcome.failed,
                    len(results),
                    first,
                )
            if len(work) < limit and state is BreakerState.CLOSED:
                return

    async def _release(self, node: str, holder: str) -> None:
        """Drop a node lease, even while being cancelled (bounded; else the lease runs out)."""
        with trio.CancelScope(shield=True), trio.move_on_after(5):
            await self._db().run(release_node_lease, node=node, holder=holder)

    async def _call_node(self, client: NodeClient, work: Sequence[NodeWork]) -> list[NodeResult]:
        """Send a claimed batch to the node (one request); never raises a node error: each
        becomes a failed result."""
        ops = [
            UserOp.put(item.email, str(item.uuid), flow=client.node.flow)
            if item.desired == "present"
            else UserOp.delete(item.email)
            for item in work
        ]
        answers: list[OpResult] | None = None
        # Half the lease: the results are recorded well before another controller may claim them.
        with trio.move_on_after(self._lease / 2):
            try:
                answers = await self._send_ops(client, ops)
            except NodeCircuitOpen as exc:
                return [NodeResult.failure(item, str(exc), retry_after=exc.retry_after) for item in work]
            except NodeError as exc:
                return [NodeResult.failure(item, f"{type(exc).__name__}: {exc}") for item in work]
        if answers is None:
            return [
                NodeResult.failure(item, f"no answer within {self._lease / 2:g} s (half the lease)")
                for item in work
            ]
        return [
            NodeResult.success(item)
            if answer.ok
            else NodeResult.failure(item, f"op failed on the node: HTTP {answer.status}: {answer.error}")
            for item, answer in zip(work, answers, strict=True)
        ]

    async def _send_ops(self, client: NodeClient, ops: Sequence[UserOp]) -> list[OpResult]:
        """One batch request, or single calls to an agent that lacks the batch route."""
        if client.name not in self._single_call_nodes:
            try:
                return await client.apply_batch(ops)
            except NodeRejected as exc:
                if exc.status not in (404, 405):
                    raise
                _log.warning(
                    "node %s has no batch route (HTTP %s): using single-user calls", client.name, exc.status
                )
                self._single_call_nodes.add(client.name)
        return await self._send_singly(client, ops)

    async def _send_singly(self, client: NodeClient, ops: Sequence[UserOp]) -> list[OpResult]:
        """The single-user routes, concurrently (the client bounds how many run at once).

        A failure of one call, an open circuit included, is that op's result, as in a batch
        (nothing is raised out of the nursery, so no error arrives wrapped in a group).
        """
        results: list[OpResult | None] = [None] * len(ops)

        async def one(index: int, op: UserOp) -> None:
            try:
                if op.kind == "put":
                    changed = await client.put_user(op.email, op.uuid, flow=op.flow, level=op.level)
                else:
                    changed = await client.delete_user(op.email)
            except NodeError as exc:
                results[index] = OpResult.failed(exc.status or 503, f"{type(exc).__name__}: {exc}")
            else:
                results[index] = OpResult.done(changed)
            self.heartbeat()  # progress, even inside a long batch

        async with trio.open_nursery() as nursery:
            for index, op in enumerate(ops):
                nursery.start_soon(one, index, op)
        return [r if r is not None else OpResult.failed(503, "not sent") for r in results]

    # -- full reconcile ----------------------------------------------------------------------

    async def reconcile(self) -> ReconcileReport:
        """Repair drift on every enabled node, concurrently; see the module docstring.

        A node whose listing fails is reported in ``failed_nodes`` (its repairs so far stand).
        """
        tally = _Tally()
        async with trio.open_nursery() as nursery:
            for client in self._fleet.enabled():
                nursery.start_soon(self._reconcile_node, client, tally)
        self._reconciles += 1
        self._reconcile_failures += len(tally.failed_nodes)
        report = ReconcileReport(
            orphans_removed=tally.orphans_removed,
            readded=tally.readded,
            failed_nodes=tuple(tally.failed_nodes),
        )
        _log.info(
            "vpn reconcile: orphans removed=%d, missing marked=%d, failed nodes=%s",
            report.orphans_removed,
            report.readded,
            ",".join(report.failed_nodes) or "-",
        )
        return report

    async def _reconcile_node(self, client: NodeClient, tally: _Tally) -> None:
        try:
            await self._merge_join(client, tally)
        except (NodeError, _ReconcileLeaseRefused) as exc:
            tally.failed_nodes.append(client.name)
            _log.warning("reconcile of node %s stopped: %s", client.name, exc)

    async def _merge_join(self, client: NodeClient, tally: _Tally) -> None:
        orphans: list[str] = []
        missing: list[uuid.UUID] = []
        wanted = _WantedKeys(self._db, self._page_size, self.heartbeat)
        async with aclosing(_users(client, self._page_size, self.heartbeat)) as node_users:
            user = await anext(node_users, None)
            key = await wanted.next()
            while user is not None or key is not None:
                email = None if key is None else str(key)
                if email is None or (user is not None and user.email < email):
                    assert user is not None
                    orphans.append(user.email)
                    user = await anext(node_users, None)
                elif user is None or email < user.email:
                    assert key is not None
                    missing.append(key)
                    key = await wanted.next()
                else:
                    assert key is not None
                    if user.uuid.lower() != email or user.flow != client.node.flow:
                        missing.append(key)  # the right name with the wrong account: put it again
                    user = await anext(node_users, None)
                    key = await wanted.next()
                if len(orphans) >= self._page_size:
                    await self._remove_orphans(client, orphans, tally)
                if len(missing) >= self._page_size:
                    await self._mark_missing(client, missing, tally)
            await self._remove_orphans(client, orphans, tally)
            await self._mark_missing(client, missing, tally)

    async def _remove_orphans(self, client: NodeClient, emails: list[str], tally: _Tally) -> None:
        if not emails:
            return
        candidates = list(dict.fromkeys(emails))  # a node's listing never repeats, but be sure
        emails.clear()
        await self._take_reconcile_lease(client)
        try:
            # Under the lease: no convergence call on this node is in flight, and none starts
            # until the lease is dropped, so a key found unwanted here stays unwanted on the node
            # until the delete below is done (a later wish puts it back after).
            keep = await self._db().run(wanted_among, emails=candidates)
            doomed: list[str] = []
            folded: set[str] = set()
            for email in candidates:
                if email not in keep and email.casefold() not in folded:
                    folded.add(email.casefold())
                    doomed.append(email)
            removed = 0
            failures: list[str] = []
            with trio.move_on_after(self._lease / 2) as scope:
                for start in range(0, len(doomed), MAX_BATCH_OPS):
                    chunk = [UserOp.delete(email) for email in doomed[start : start + MAX_BATCH_OPS]]
                    for op, answer in zip(chunk, await self._send_ops(client, chunk), strict=True):
                        if answer.ok:
                            removed += answer.changed
                        else:
                            failures.append(f"{op.email}: HTTP {answer.status}: {answer.error}")
        finally:
            await self._release(client.name, self._reconcile_holder)
        tally.orphans_removed += removed
        self._orphans_removed += removed
        self.heartbeat()
        if scope.cancelled_caught:
            raise NodeError(client.name, f"orphan deletes: no answer within {self._lease / 2:g} s")
        if failures:
            raise NodeError(client.name, f"{len(failures)} orphan deletes failed; first: {failures[0]}")

    async def _take_reconcile_lease(self, client: NodeClient) -> None:
        """Wait (up to ``lease`` seconds) for the node's exclusive reconcile lease.

        While refused, the waiting row keeps new convergence claims off, so running passes end.
        """
        waited_until = trio.current_time() + self._lease
        delay = 0.05
        while True:
            now = self._clock.now()
            granted = await self._db().run(
                take_reconcile_lease,
                node=client.name,
                holder=self._reconcile_holder,
                now=now,
                until=now + dt.timedelta(seconds=self._lease),
                wait_until=now + dt.timedelta(seconds=min(self._lease, 5.0)),
            )
            self.heartbeat()
            if granted:
                return
            if trio.current_time() >= waited_until:
                await self._release(client.name, self._reconcile_holder)
                raise _ReconcileLeaseRefused(client.name, self._lease)
            await trio.sleep(delay)
            delay = min(delay * 2, 1.0)

    async def _mark_missing(self, client: NodeClient, keys: list[uuid.UUID], tally: _Tally) -> None:
        if not keys:
            return
        marked = await self._db().run(mark_missing, node=client.name, keys=list(keys), now=self._clock.now())
        keys.clear()
        tally.readded += marked
        self._readded += marked
        self.heartbeat()


async def _users(
    client: NodeClient, page_size: int, beat: Callable[[], None]
) -> AsyncGenerator[NodeUser, None]:
    """Every user of the node, one page in memory at a time, sorted by email."""
    async with aclosing(client.iter_all_users(page_size)) as pages:
        async for page in pages:
            beat()
            for user in page:
                yield user


class _WantedKeys:
    """The keys wanted present, in UUID order, read one keyset page at a time."""

    def __init__(self, db: Callable[[], Database], page_size: int, beat: Callable[[], None]) -> None:
        self._db = db
        self._page_size = page_size
        self._beat = beat
        self._buffer: deque[uuid.UUID] = deque()
        self._after: uuid.UUID | None = None
        self._done = False

    async def next(self) -> uuid.UUID | None:
        if not self._buffer and not self._done:
            page = await self._db().run(wanted_keys_page, after=self._after, limit=self._page_size)
            self._buffer.extend(page)
            if page:
                self._after = page[-1]
            self._done = len(page) < self._page_size
            self._beat()
        return self._buffer.popleft() if self._buffer else None
