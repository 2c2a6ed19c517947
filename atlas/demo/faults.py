"""The faults the demo injects while the crowd runs, and how each is ended.

The schedule is a pure table (what, when as a fraction of the run, for how long); :func:`run_faults`
then acts on it. Every fault comes from outside the tree, through the real wire:

* ``bot_api_429``   the Bot API answers a burst of ``sendMessage`` calls with 429 ``retry_after``;
* ``node_outage``   the VPN node goes away (the V2Ray core stops; with the emulator, the agent);
* ``cryptopay_outage``  Crypto Pay answers 503 to everything;
* ``intake_crash``  the Bot API answers one ``getUpdates`` with an unexpected 400: the polling
                    intake treats that as "the request is wrong", crashes, and the telegram
                    supervisor restarts it (the actor that crashes).

The tree must recover from each: the summary shows the restarts and that the work got done.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from enum import Enum

import trio

from atlas.clock import Clock
from atlas.demo.clocks import sleep_business
from atlas.demo.vpn_node import DemoNode
from atlas.testing.botapi import BotApiEmulator
from atlas.testing.cryptopay_emulator import CryptoPayEmulator


class Fault(Enum):
    """The faults, by name."""

    BOT_API_429 = "bot_api_429"
    NODE_OUTAGE = "node_outage"
    CRYPTOPAY_OUTAGE = "cryptopay_outage"
    INTAKE_CRASH = "intake_crash"


@dataclass(frozen=True)
class Scheduled:
    """One fault: when it starts and how long it lasts, as fractions of the run's business time."""

    fault: Fault
    at: float
    lasts: float


# The rules as a table. Spaced out so that each recovery is seen on its own.
SCHEDULE: tuple[Scheduled, ...] = (
    Scheduled(Fault.BOT_API_429, at=0.12, lasts=0.0),
    Scheduled(Fault.NODE_OUTAGE, at=0.25, lasts=0.08),
    Scheduled(Fault.CRYPTOPAY_OUTAGE, at=0.42, lasts=0.08),
    Scheduled(Fault.INTAKE_CRASH, at=0.60, lasts=0.0),
)


def burst_size(users: int) -> int:
    """How many ``sendMessage`` calls the 429 burst refuses: one per five users, 3 to 40, so that
    a small crowd is not silenced for the rest of its run (each refused call counts, whenever)."""
    return max(3, min(40, users // 5))


@dataclass
class FaultLog:
    """What was injected and ended, with the business times (the summary reads it)."""

    injected: dict[Fault, float] = field(default_factory=dict)  # trio time
    ended: dict[Fault, float] = field(default_factory=dict)  # trio time


@dataclass
class FaultTargets:
    """The outside world the faults act on."""

    emulator: BotApiEmulator
    cryptopay: CryptoPayEmulator
    node: DemoNode
    clock: Clock
    burst: int  # sendMessage calls the 429 burst refuses (see burst_size)


Action = Callable[[], Awaitable[None]]


def _actions(targets: FaultTargets) -> dict[Fault, tuple[Action, Action]]:
    """Each fault's start and end (an instant fault ends by itself)."""
    emulator, cryptopay, node = targets.emulator, targets.cryptopay, targets.node

    async def burst() -> None:
        emulator.inject("sendMessage", error=429, retry_after=1, count=targets.burst)

    async def refuse_one_poll() -> None:
        emulator.inject(
            "getUpdates", error=400, count=1, description="Bad Request: demo fault, an unexpected answer"
        )

    async def crypto_down() -> None:
        cryptopay.outage()

    async def crypto_up() -> None:
        cryptopay.recover()

    async def nothing() -> None:
        return None

    return {
        Fault.BOT_API_429: (burst, nothing),
        Fault.NODE_OUTAGE: (node.outage, node.recover),
        Fault.CRYPTOPAY_OUTAGE: (crypto_down, crypto_up),
        Fault.INTAKE_CRASH: (refuse_one_poll, nothing),
    }


async def run_faults(targets: FaultTargets, horizon: dt.timedelta, log: FaultLog) -> None:
    """Inject every scheduled fault at its time and end it after its span (each in its own task)."""
    actions = _actions(targets)

    async def one(item: Scheduled) -> None:
        start, end = actions[item.fault]
        await sleep_business(targets.clock, horizon * item.at)
        await start()
        log.injected[item.fault] = trio.current_time()
        await sleep_business(targets.clock, horizon * item.lasts)
        await end()
        log.ended[item.fault] = trio.current_time()

    async with trio.open_nursery() as nursery:
        for item in SCHEDULE:
            nursery.start_soon(one, item)
