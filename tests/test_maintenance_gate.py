"""The maintenance switch is read once per TTL, however many updates ask at once."""

from __future__ import annotations

from typing import Any, cast

import trio
import trio.testing

from atlas.storage import Database
from atlas.storage.units.admin_views import MaintenanceState
from atlas.telegram.routers.admin_ops import MaintenanceGate


class SlowCountingDb:
    """Answers the maintenance read after 0.1 s and counts the reads."""

    def __init__(self) -> None:
        self.reads = 0

    async def run(self, unit: Any, **kwargs: Any) -> MaintenanceState:
        self.reads += 1
        await trio.sleep(0.1)
        return MaintenanceState(True, "back soon", None, None)


async def test_a_hundred_concurrent_updates_cause_one_read_per_ttl(
    autojump_clock: trio.testing.MockClock,
) -> None:
    db = SlowCountingDb()
    gate = MaintenanceGate(cast(Database, db), ttl=5.0)
    seen: list[bool] = []

    async def ask() -> None:
        seen.append((await gate.current()).enabled)

    async with trio.open_nursery() as nursery:
        for _ in range(100):
            nursery.start_soon(ask)
    assert db.reads == 1
    assert seen.count(True) == 1  # the one that read; the others got the last known state (off)
    assert (await gate.current()).enabled  # within the TTL: no read
    await trio.sleep(5.0)
    async with trio.open_nursery() as nursery:
        for _ in range(100):
            nursery.start_soon(ask)
    assert db.reads == 2
