"""The one crossing from an aiogram handler (asyncio side) to Atlas's trio-flavoured code.

aiogram runs handlers as asyncio coroutines inside the process's trio-asyncio loop; ``db.run``, the
payment clients and the VPN clients are trio-flavoured. Every handler reaches them through these two
functions, so the crossing (and anything it ever needs, such as a deadline or a metric) lives in
one place.
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import trio_asyncio

from atlas.storage import Database

T = TypeVar("T")


async def run_unit(db: Database, unit: Callable[..., Awaitable[T]], /, **kwargs: Any) -> T:
    """Run a unit of work through ``db.run``; its errors (domain errors included) propagate."""
    result: T = await trio_asyncio.trio_as_aio(functools.partial(db.run, unit, **kwargs))()
    return result


async def run_trio(fn: Callable[..., Awaitable[T]], /, *args: Any, **kwargs: Any) -> T:
    """Call a trio-flavoured coroutine function (a client, an export that pages units)."""
    result: T = await trio_asyncio.trio_as_aio(functools.partial(fn, *args, **kwargs))()
    return result
