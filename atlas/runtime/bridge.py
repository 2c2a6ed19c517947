"""The asyncio bridge: one trio-asyncio loop, opened once at the root of the process.

asyncpg is asyncio-only, and aiogram's ``Dispatcher.feed_update`` reads the running asyncio loop's
clock (its Bot session is httpx on trio, and its handlers run in trio tasks: see
:mod:`atlas.telegram.dispatch`). Atlas hosts them in a single trio-asyncio loop that is opened when
the process starts and closed when it stops; it is never restarted, because asyncpg's pool is bound
to the loop that created it. Code finds the loop through trio-asyncio's context variable, so every
task started below this point inherits it.
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
