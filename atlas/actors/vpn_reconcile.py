"""The full reconcile of one node for ``vpn_controller``: repair drift both ways, under the node lease.

Merge-join the node's user list (pages sorted by email) with the wanted keys (keyset pages ordered
by UUID, whose canonical text is the email): users the database does not want are deleted; wanted
keys missing from the node (or there with another UUID or flow) are marked missing, so that
convergence puts them back. Memory is bounded by one page of each side plus one flush batch. A node
added to the configuration later is filled this way: every wanted key is missing there.

Each flush of orphans is deleted under the node's exclusive *reconcile lease*
(:mod:`atlas.storage.units.vpn_node_lease`): take it (waiting up to ``lease`` seconds; the
waiting row already keeps new convergence claims off, so running passes end), re-check which
candidates are wanted now, delete the others in one batch request (bounded by half the lease),
drop it. So no convergence call is in flight on the node between the re-check and the delete, in
this process or another, and a key wanted meanwhile is put back only after the delete. Listing
and marking missing need no lease: a key marked missing is only put again (idempotent).

Errors: a failed listing or delete is a :class:`~atlas.vpn.node_client.NodeError`, a lease never
granted is :class:`ReconcileLeaseRefused`; repairs made before either stand and are counted.
"""

from __future__ import annotations

import uuid
from collections import deque
from collections.abc import AsyncGenerator, Callable
from contextlib import aclosing
from dataclasses import dataclass

import trio

from atlas.actors.vpn_node_io import NodeOps, release_lease
from atlas.clock import Clock
from atlas.storage import Database
from atlas.storage.units.vpn import mark_missing, wanted_among, wanted_keys_page
from atlas.storage.units.vpn_node_lease import take_reconcile_lease
from atlas.vpn.node_client import NodeClient, NodeError, NodeUser
from atlas.vpn.user_batch import MAX_BATCH_OPS, UserOp


@dataclass(frozen=True, slots=True)
class ReconcileReport:
    """One full reconcile: orphans deleted, missing keys marked, nodes whose reconcile failed."""

    orphans_removed: int = 0
    readded: int = 0
    failed_nodes: tuple[str, ...] = ()


@dataclass
class Repairs:
    """Repairs counted as they happen (so that those made before a failure are counted too)."""

    orphans_removed: int = 0
    readded: int = 0


class ReconcileLeaseRefused(Exception):
    """The node's reconcile lease was not granted within the wait (convergence kept it)."""

    def __init__(self, node: str, waited: float) -> None:
        super().__init__(f"node {node}: reconcile lease not granted within {waited:g} s")


class NodeReconciler:
    """Reconciles one node at a time; see the module docstring.

    ``holder``: this controller's reconcile lease holder id. ``lease``: seconds a lease lasts (and
    the longest wait for one). ``beat``: the actor's heartbeat, called with every page and call.
    """

    def __init__(
        self,
        *,
        db: Callable[[], Database],
        clock: Clock,
        ops: NodeOps,
        holder: str,
        lease: float,
        page_size: int,
        beat: Callable[[], None],
    ) -> None:
        self._db = db
        self._clock = clock
        self._ops = ops
        self._holder = holder
        self._lease = lease
        self._page_size = page_size
        self._beat = beat

    async def reconcile(self, client: NodeClient, repairs: Repairs) -> None:
        """Merge-join ``client``'s node with the wanted keys, repairing as it goes."""
        orphans: list[str] = []
        missing: list[uuid.UUID] = []
        wanted = _WantedKeys(self._db, self._page_size, self._beat)
        async with aclosing(_users(client, self._page_size, self._beat)) as node_users:
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
                    await self._remove_orphans(client, orphans, repairs)
                if len(missing) >= self._page_size:
                    await self._mark_missing(client, missing, repairs)
            await self._remove_orphans(client, orphans, repairs)
            await self._mark_missing(client, missing, repairs)

    async def _remove_orphans(self, client: NodeClient, emails: list[str], repairs: Repairs) -> None:
        if not emails:
            return
        candidates = list(dict.fromkeys(emails))  # a node's listing never repeats, but be sure
        emails.clear()
        await self._take_lease(client)
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
            failures: list[str] = []
            with trio.move_on_after(self._lease / 2) as scope:
                for start in range(0, len(doomed), MAX_BATCH_OPS):
                    chunk = [UserOp.delete(email) for email in doomed[start : start + MAX_BATCH_OPS]]
                    for op, answer in zip(chunk, await self._ops.send(client, chunk), strict=True):
                        if answer.ok:
                            repairs.orphans_removed += answer.changed
                        else:
                            failures.append(f"{op.email}: HTTP {answer.status}: {answer.error}")
        finally:
            await release_lease(self._db, client.name, self._holder)
        self._beat()
        if scope.cancelled_caught:
            raise NodeError(client.name, f"orphan deletes: no answer within {self._lease / 2:g} s")
        if failures:
            raise NodeError(client.name, f"{len(failures)} orphan deletes failed; first: {failures[0]}")

    async def _take_lease(self, client: NodeClient) -> None:
        """Wait (up to ``lease`` seconds) for the node's exclusive reconcile lease."""
        give_up_at = trio.current_time() + self._lease
        delay = 0.05
        while True:
            now = self._clock.now()
            granted = await self._db().run(
                take_reconcile_lease,
                node=client.name,
                holder=self._holder,
                now=now,
                until=now + self._clock.business_span(self._lease),
                wait_until=now + self._clock.business_span(min(self._lease, 5.0)),
            )
            self._beat()
            if granted:
                return
            if trio.current_time() >= give_up_at:
                await release_lease(self._db, client.name, self._holder)  # drop the waiting row
                raise ReconcileLeaseRefused(client.name, self._lease)
            await trio.sleep(delay)
            delay = min(delay * 2, 1.0)

    async def _mark_missing(self, client: NodeClient, keys: list[uuid.UUID], repairs: Repairs) -> None:
        if not keys:
            return
        marked = await self._db().run(mark_missing, node=client.name, keys=list(keys), now=self._clock.now())
        keys.clear()
        repairs.readded += marked
        self._beat()


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
