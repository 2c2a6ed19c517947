"""The node side of bench_sweep.py, in its own process: a node emulator holding the wanted keys.

Run as ``python bench/_sweep_node.py N TOKEN``; prints the agent URL on its first line, then serves
until killed. It holds the keys the sweep database wants present after the expiry sweep (two subscriptions in
three, see ``bench_sweep._seed``) except the first 100 of them (missing: the reconcile marks them), plus 100
users the database does not know (orphans: the reconcile removes them). So a full reconcile
merge-joins about 2N/3 users on both sides.
"""

from __future__ import annotations

import hashlib
import sys
import uuid

import trio

from atlas.testing.node_emulator import EmulatedUser, NodeEmulator

MISSING = 100
ORPHANS = 100


def key_uuid(i: int) -> str:
    """The UUID of subscription ``i``'s key, as the seed SQL computes it (``md5('k' || i)::uuid``)."""
    return str(uuid.UUID(hashlib.md5(f"k{i}".encode()).hexdigest()))


async def main(count: int, token: str) -> None:
    node = NodeEmulator(token)
    skipped = 0
    for i in range(1, count + 1):
        if i % 3 == 1:
            continue  # the trials the expiry sweep ends: not wanted on the node
        if skipped < MISSING:
            skipped += 1
            continue
        email = key_uuid(i)
        node.users[email] = EmulatedUser(uuid=email)
    for j in range(ORPHANS):
        email = str(uuid.UUID(int=j + 1))
        node.put_orphan(email, email)
    async with trio.open_nursery() as nursery:
        url = await nursery.start(node.run)
        print(url, flush=True)


if __name__ == "__main__":
    trio.run(main, int(sys.argv[1]), sys.argv[2])
