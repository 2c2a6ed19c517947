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

Full reconcile (every ``reconcile_every`` seconds, and on the message ``"reconcile"``): every
enabled node concurrently, by :class:`~atlas.actors.vpn_reconcile.NodeReconciler` (merge-join of
the node's users with the wanted keys; orphans deleted under the node's exclusive reconcile lease,
missing keys marked for convergence). Node I/O of both goes through
:class:`~atlas.actors.vpn_node_io.NodeOps` (batches; single calls to older agents).

Messages: ``"reconcile"`` → :class:`ReconcileReport`; ``"converge"`` → :class:`ConvergeReport`.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import random
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import trio

from atlas.actors.base import Actor
from atlas.actors.vpn_node_io import NodeOps, release_lease
from atlas.actors.vpn_reconcile import NodeReconciler, ReconcileLeaseRefused, ReconcileReport, Repairs
from atlas.clock import Clock
from atlas.storage import Database
from atlas.storage.units.vpn import (
    MAX_BATCH,
    Backoff,
    NodeResult,
    NodeWork,
    claim_leased_node_work,
    plan_key_changes,
    record_node_results,
)
from atlas.vpn.breaker import BreakerState
from atlas.vpn.node_client import MAX_PAGE, Fleet, NodeCircuitOpen, NodeClient, NodeError
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
    skipped: list[str] = field(default_factory=list)
    busy: list[str] = field(default_factory=list)


@dataclass
class _NodePass:
    """What the lanes of one node's convergence pass share."""

    leased: bool = False
    refused: bool = False
    skipped: bool = False


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
        self._ops = NodeOps(self.heartbeat)
        self._reconciler = NodeReconciler(
            db=db,
            clock=clock,
            ops=self._ops,
            holder=f"{self.owner}/reconcile",
            lease=self._lease,
            page_size=self._page_size,
            beat=self.heartbeat,
        )
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

    # Retry delays are operational (a node's outage lasts real seconds), but the unit writes them
    # as business timestamps (``next_attempt_at = now + delay``): scale them by the clock's speed.
    def _business_backoff(self) -> Backoff:
        speed = self._clock.speed
        return Backoff(base=self._backoff.base * speed, cap=self._backoff.cap * speed)

    def _in_business_time(self, result: NodeResult) -> NodeResult:
        if not result.retry_after or not math.isfinite(result.retry_after):
            return result
        return dataclasses.replace(result, retry_after=result.retry_after * self._clock.speed)

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
                await release_lease(self._db, client.name, self._converge_holder)
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
                lease_until=now + self._clock.business_span(self._lease),
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
                results=[self._in_business_time(result) for result in results],
                nodes=self._node_names,
                now=self._clock.now(),
                backoff=self._business_backoff(),
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
                answers = await self._ops.send(client, ops)
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

    # -- full reconcile ----------------------------------------------------------------------

    async def reconcile(self) -> ReconcileReport:
        """Repair drift on every enabled node, concurrently (see :mod:`atlas.actors.vpn_reconcile`).

        A node whose listing or deletes fail, or whose lease is never granted, is reported in
        ``failed_nodes``; its repairs so far stand and are counted.
        """
        repairs = Repairs()
        failed: list[str] = []

        async def one(client: NodeClient) -> None:
            try:
                await self._reconciler.reconcile(client, repairs)
            except (NodeError, ReconcileLeaseRefused) as exc:
                failed.append(client.name)
                _log.warning("reconcile of node %s stopped: %s", client.name, exc)

        async with trio.open_nursery() as nursery:
            for client in self._fleet.enabled():
                nursery.start_soon(one, client)
        self._reconciles += 1
        self._reconcile_failures += len(failed)
        self._orphans_removed += repairs.orphans_removed
        self._readded += repairs.readded
        report = ReconcileReport(
            orphans_removed=repairs.orphans_removed, readded=repairs.readded, failed_nodes=tuple(failed)
        )
        _log.info(
            "vpn reconcile: orphans removed=%d, missing marked=%d, failed nodes=%s",
            report.orphans_removed,
            report.readded,
            ",".join(report.failed_nodes) or "-",
        )
        return report
