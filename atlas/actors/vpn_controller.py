"""``vpn_controller``: converge every enabled node to the keys' desired state; repair drift.

Convergence (every tick, level-triggered as in Kubernetes controllers): plan changed keys, then for
each enabled node concurrently, loop within the tick's time budget:

    claim a leased batch (unit)  →  call the node, OUTSIDE any transaction  →  record (unit)

Each call is ``put_user`` / ``delete_user`` (idempotent on the agent), so a call repeated after a
crash is harmless. The node client bounds the calls in flight per node and runs the circuit
breaker. Outcomes:

* success → the row is applied at the claimed generation (see :mod:`atlas.storage.units.vpn`);
* :class:`NodeUnavailable` (timeouts, 5xx, connection errors), :class:`NodeCircuitOpen`,
  :class:`NodeProtocolError` (garbage is never success), :class:`NodeRejected` (4xx) → a failure
  with persisted backoff; the row stays pending and nothing is lost. After an open circuit the
  node is left alone for the rest of the tick; while the circuit is half-open a batch of one is
  claimed, so only the breaker's probe is spent.

Anything else (a bug, :class:`atlas.net.ConnectionHeldAcrossIO`) crashes the actor; its leased
rows are claimed again when the lease runs out. Node calls of one batch are bounded by half the
lease, so an owner never records after its lease has run out; calls still running then are
cancelled and recorded as failures. Set the child's ``stall_after`` above ``lease / 2``.

Full reconcile (every ``reconcile_every`` seconds, and on the message ``"reconcile"``): for each
node, merge-join the node's user list (pages sorted by email) with the wanted keys (keyset pages
ordered by UUID, whose canonical text is the email): users the database does not want are deleted
(after a re-check, so a key wanted meanwhile survives), wanted keys missing from the node (or
there with another UUID or flow) are marked missing so that convergence puts them back. Memory is
bounded by one page of each side plus one flush batch. A node added to the configuration later is
filled this way: every wanted key is missing there. Heartbeats come with every page and every call.

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
    claim_node_work,
    mark_missing,
    plan_key_changes,
    record_node_results,
    wanted_among,
    wanted_keys_page,
)
from atlas.vpn.breaker import BreakerState
from atlas.vpn.node_client import (
    MAX_PAGE,
    Fleet,
    NodeCircuitOpen,
    NodeClient,
    NodeError,
    NodeUser,
)

_log = logging.getLogger("atlas.actors.vpn_controller")


@dataclass(frozen=True, slots=True)
class ConvergeReport:
    """One convergence pass: rows planned, node calls recorded, nodes skipped (circuit open)."""

    planned: int = 0
    converged: int = 0
    failed: int = 0
    stale: int = 0
    notified: int = 0
    skipped_nodes: tuple[str, ...] = ()


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
    failed_nodes: list[str] = field(default_factory=list)


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
      batches after this long. ``batch`` (64): rows claimed per node per batch; a multiple of the
      node's concurrency limit keeps every slot busy.
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
        self._batch = _count("batch", batch, MAX_BATCH)
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
        )
        if report.converged or report.failed or report.stale:
            _log.info(
                "vpn converge: planned=%d converged=%d failed=%d stale=%d notified=%d skipped=%s",
                report.planned,
                report.converged,
                report.failed,
                report.stale,
                report.notified,
                ",".join(report.skipped_nodes) or "-",
            )
        return report

    async def _converge_node(self, client: NodeClient, deadline: float, tally: _Tally) -> None:
        while trio.current_time() < deadline:
            state = client.breaker.state
            if state is BreakerState.OPEN:
                tally.skipped.append(client.name)
                return
            # Half-open: the breaker lets exactly one call through; claim only that one, so the
            # rest of a batch does not burn an attempt each on an instant "circuit open".
            limit = 1 if state is BreakerState.HALF_OPEN else self._batch
            now = self._clock.now()
            work = await self._db().run(
                claim_node_work,
                node=client.name,
                owner=self.owner,
                now=now,
                lease_until=now + dt.timedelta(seconds=self._lease),
                limit=limit,
            )
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
                    "node %s: %d of %d calls failed; first: %s",
                    client.name,
                    outcome.failed,
                    len(results),
                    first,
                )
            if len(work) < limit and state is BreakerState.CLOSED:
                return

    async def _call_node(self, client: NodeClient, work: Sequence[NodeWork]) -> list[NodeResult]:
        """Make every call of a batch (the client bounds how many run at once); never raises a
        node error: each becomes a failed result."""
        results: list[NodeResult | None] = [None] * len(work)

        async def one(index: int, item: NodeWork) -> None:
            try:
                if item.desired == "present":
                    await client.put_user(item.email, str(item.uuid), flow=client.node.flow)
                else:
                    await client.delete_user(item.email)
            except NodeCircuitOpen as exc:
                results[index] = NodeResult.failure(item, str(exc), retry_after=exc.retry_after)
            except NodeError as exc:
                results[index] = NodeResult.failure(item, f"{type(exc).__name__}: {exc}")
            else:
                results[index] = NodeResult.success(item)
            self.heartbeat()  # progress, even inside a long batch

        # Half the lease: the results are recorded well before another controller may claim them.
        with trio.move_on_after(self._lease / 2):
            async with trio.open_nursery() as nursery:
                for index, item in enumerate(work):
                    nursery.start_soon(one, index, item)
        return [
            result
            if result is not None
            else NodeResult.failure(item, f"no answer within {self._lease / 2:g} s (half the lease)")
            for item, result in zip(work, results, strict=True)
        ]

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
        except NodeError as exc:
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
        keep = await self._db().run(wanted_among, emails=list(emails))
        doomed = [email for email in emails if email not in keep]
        emails.clear()
        removed = 0
        errors: list[NodeError] = []

        async def delete(email: str) -> None:
            nonlocal removed
            try:
                if await client.delete_user(email):
                    removed += 1
            except NodeError as exc:
                errors.append(exc)

        async with trio.open_nursery() as nursery:
            for email in doomed:
                nursery.start_soon(delete, email)
        tally.orphans_removed += removed
        self._orphans_removed += removed
        self.heartbeat()
        if errors:
            raise errors[0]

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
