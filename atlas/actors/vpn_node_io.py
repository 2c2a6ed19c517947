"""How ``vpn_controller`` sends user changes to one node, and drops its node leases.

:class:`NodeOps` sends a list of :class:`~atlas.vpn.user_batch.UserOp` as ONE batch request
(``POST /v1/users:batch``). An agent older than the batch route answers 404 (405 behind some
proxies); that node is then remembered and worked with the single-user routes, one call per op,
concurrently within the node client's limit. Either way the caller gets one
:class:`~atlas.vpn.user_batch.OpResult` per op, so convergence and reconcile handle both alike.
Errors of the request as a whole (:class:`~atlas.vpn.node_client.NodeError`) propagate from a
batch; in the single-call fallback every failure, an open circuit included, is that op's result
(nothing is raised out of the nursery, so no error arrives wrapped in an exception group).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

import trio

from atlas.storage import Database
from atlas.storage.units.vpn_node_lease import release_node_lease
from atlas.vpn.node_client import NodeClient, NodeError, NodeRejected
from atlas.vpn.user_batch import OpResult, UserOp

_log = logging.getLogger("atlas.actors.vpn_controller")


class NodeOps:
    """Sends ops to nodes (batch, or single calls to older agents); ``beat`` marks progress."""

    def __init__(self, beat: Callable[[], None]) -> None:
        self._beat = beat
        self._single_call_nodes: set[str] = set()

    async def send(self, client: NodeClient, ops: Sequence[UserOp]) -> list[OpResult]:
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
            self._beat()  # progress, even inside a long batch

        async with trio.open_nursery() as nursery:
            for index, op in enumerate(ops):
                nursery.start_soon(one, index, op)
        return [r if r is not None else OpResult.failed(503, "not sent") for r in results]


async def release_lease(db: Callable[[], Database], node: str, holder: str) -> None:
    """Drop a node lease, even while being cancelled (bounded: else the lease simply runs out)."""
    with trio.CancelScope(shield=True), trio.move_on_after(5):
        await db().run(release_node_lease, node=node, holder=holder)
