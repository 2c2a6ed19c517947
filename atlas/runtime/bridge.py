"""The asyncio bridge: one trio-asyncio loop, opened once at the root of the process.

Nothing on the hot path runs on it any more. asyncpg has a loop of its own in the storage thread
(:mod:`atlas.storage.loop`), the Bot session is httpx on trio and handlers run in trio tasks
(:mod:`atlas.telegram.dispatch`). What is left is aiogram's ``Dispatcher.feed_update``, which reads
``asyncio.get_running_loop().time()`` for a log line: trio-asyncio makes that call work from trio
tasks below this point (its loop's clock is trio's). It stays the place for any asyncio-only
library that must run inside the trio thread, off the per-message path. Opened when the process
starts and closed when it stops; code finds it through trio-asyncio's context variable.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import trio_asyncio


class BridgeAlreadyOpen(RuntimeError):
    """A second bridge was requested inside the first: there must be exactly one loop."""


@asynccontextmanager
async def open_bridge() -> AsyncIterator[None]:
    """Open the process's one trio-asyncio loop for the duration of the block."""
    if trio_asyncio.current_loop.get() is not None:
        raise BridgeAlreadyOpen("the asyncio bridge is already open in this context")
    async with trio_asyncio.open_loop():
        yield


def bridge_is_open() -> bool:
    """True inside :func:`open_bridge`."""
    return trio_asyncio.current_loop.get() is not None
