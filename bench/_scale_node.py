"""The node side of bench_scale_out.py, in its own process: a node emulator holding given keys.

Run as ``python bench/_scale_node.py TOKEN KEYS_FILE`` (one key UUID a line, each becomes a user
named by it, as the VPN controller names users). Prints the agent URL on its first line, then
serves until killed; a process of its own, so that the node's CPU is not the Atlas processes'.
"""

from __future__ import annotations

import sys
from pathlib import Path

import trio

from atlas.testing.node_emulator import EmulatedUser, NodeEmulator


async def main(token: str, keys: list[str]) -> None:
    """Serve a node emulator holding every key of ``keys``."""
    node = NodeEmulator(token)
    for line in keys:
        node.users[line] = EmulatedUser(uuid=line)
    async with trio.open_nursery() as nursery:
        url = await nursery.start(lambda task_status: node.run(task_status=task_status))
        print(url, flush=True)


if __name__ == "__main__":
    trio.run(main, sys.argv[1], Path(sys.argv[2]).read_text().split())
