"""A process that runs one outbox drain and stops recording results, to be SIGKILLed there.

Run by ``tests/test_outbox_trust.py``::

    python -m tests._outbox_kill_child DSN BOT_API_BASE CLOCK_OFFSET HOLD_AFTER

It drains the outbox of the database ``DSN`` through the Bot API at ``BOT_API_BASE``, with its
business clock ``CLOCK_OFFSET`` seconds ahead (so that the leases of the process killed before it
have run out). Its first ``HOLD_AFTER`` writes of results go through; at the next one it prints
``holding`` and waits forever — sends are answered, their results are not recorded — which is
where the test kills it. ``HOLD_AFTER`` < 0: never hold (the process drains and prints ``done``).
"""

from __future__ import annotations

import datetime as dt
import random
import sys
from typing import Any

import trio

from atlas.actors.outbox_sender import OutboxSender, SenderSettings
from atlas.clock import Clock
from atlas.runtime.bridge import open_bridge
from atlas.storage import Database, DatabaseSettings
from atlas.storage.units.delivery import record_deliveries
from atlas.supervision import Backoff
from atlas.telegram import make_bot
from atlas.testing.botapi.emulator import DEFAULT_TOKEN


class HoldRecords:
    """Passes every unit through, except that the record after the first ``hold_after`` never ends."""

    def __init__(self, db: Database, hold_after: int) -> None:
        self._db = db
        self._left = hold_after

    async def run(self, unit: Any, /, **kwargs: Any) -> Any:
        if unit is record_deliveries and self._left >= 0:
            if self._left == 0:
                print("holding", flush=True)
                await trio.sleep_forever()
            self._left -= 1
        return await self._db.run(unit, **kwargs)


async def main(dsn: str, base: str, offset: float, hold_after: int) -> None:
    async with open_bridge():
        db = await Database.open(DatabaseSettings(dsn=dsn, pool_size=4, acquire_timeout=30))
        bot = make_bot(DEFAULT_TOKEN, base)
        clock = Clock(anchor=dt.datetime.now(dt.UTC) + dt.timedelta(seconds=offset))
        settings = SenderSettings(
            rate=100.0,
            batch=20,
            max_in_flight=8,
            lease=30.0,
            send_timeout=5.0,
            retry=Backoff(initial=0.1, factor=2.0, maximum=1.0, jitter=0.0),
            elected=False,
        )
        gate = HoldRecords(db, hold_after)
        sender = OutboxSender(
            db=lambda: gate,  # type: ignore[arg-type,return-value]
            bot=bot,
            clock=clock,
            rng=random.Random(int(offset)),
            settings=settings,
        )
        await sender.drain()
        print("done", flush=True)


if __name__ == "__main__":
    trio.run(main, sys.argv[1], sys.argv[2], float(sys.argv[3]), int(sys.argv[4]))
