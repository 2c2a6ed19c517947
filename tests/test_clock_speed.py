"""Business time that runs faster than trio time, and the operational durations that must not.

``Clock(speed=...)`` scales business time; :func:`atlas.clock.tick_period` is the one conversion of
a periodic actor's business period into trio seconds; leases written as business timestamps go
through ``Clock.business_span`` so they keep their length in trio (real) time. At speed 1 every
conversion is the identity (production is unchanged).
"""

from __future__ import annotations

import datetime as dt
import random

import pytest
import trio
import trio.testing

from atlas.actors import Actor
from atlas.actors.outbox_sender import OutboxSender, SenderSettings
from atlas.clock import Clock, tick_period
from atlas.runtime.app import worker_specs
from atlas.runtime.services import make_services
from atlas.runtime.settings import load_settings
from atlas.storage import Database, Tx
from atlas.supervision import Backoff, CrashReporter, RingSink, Strategy, Supervisor
from atlas.telegram import make_bot
from atlas.testing.botapi import BotApiEmulator

ANCHOR = dt.datetime(2026, 3, 1, tzinfo=dt.UTC)


async def test_business_time_runs_speed_times_faster(autojump_clock: trio.testing.MockClock) -> None:
    clock = Clock(ANCHOR, speed=3600)
    assert clock.speed == 3600.0
    await trio.sleep(2.5)
    assert clock.now() == ANCHOR + dt.timedelta(hours=2.5)  # 2.5 trio seconds = 2.5 business hours
    assert clock.business_span(120) == dt.timedelta(hours=120)
    assert clock.trio_seconds(dt.timedelta(days=1)) == pytest.approx(24.0)
    assert clock.trio_seconds(7200.0) == pytest.approx(2.0)


async def test_speed_one_is_real_time(autojump_clock: trio.testing.MockClock) -> None:
    clock = Clock(ANCHOR)
    await trio.sleep(90)
    assert clock.now() == ANCHOR + dt.timedelta(seconds=90)
    assert clock.business_span(120) == dt.timedelta(seconds=120)
    assert clock.trio_seconds(dt.timedelta(minutes=2)) == 120.0


@pytest.mark.parametrize("speed", [0.5, 0, -3, float("inf"), float("nan"), True])
async def test_a_clock_slower_than_real_time_or_not_a_number_is_refused(speed: float) -> None:
    with pytest.raises(ValueError, match="speed"):
        Clock(ANCHOR, speed=speed)


# (business period, speed, floor) -> trio period
PERIODS = [
    ((600.0, 1.0, 0.25), 600.0),  # production: unchanged
    ((0.5, 1.0, 0.25), 0.5),  # production, shorter than the floor: still unchanged
    ((3600.0, 14_400.0, 0.25), 0.25),  # an hourly sweep at speed 14 400: the floor
    ((86_400.0, 14_400.0, 0.25), 6.0),  # a daily job: scaled, above the floor
    ((5.0, 4.0, 0.25), 1.25),
    ((0.1, 100.0, 0.25), 0.1),  # the floor never makes a period longer than it was
    ((60.0, 60.0, 0.0), 1.0),
]


@pytest.mark.parametrize(("args", "expected"), PERIODS)
def test_tick_period_table(args: tuple[float, float, float], expected: float) -> None:
    period, speed, floor = args
    assert tick_period(period, speed=speed, floor=floor) == pytest.approx(expected)


def test_tick_period_refuses_nonsense() -> None:
    with pytest.raises(ValueError, match="business_period"):
        tick_period(0, speed=1, floor=0)
    with pytest.raises(ValueError, match="floor"):
        tick_period(1, speed=1, floor=-1)
    with pytest.raises(ValueError, match="speed"):
        tick_period(1, speed=0.5, floor=0)


class Ticker(Actor):
    def __init__(self, clock: Clock) -> None:
        super().__init__("ticker", period=3600.0, first_tick=(600.0, 600.0))
        self.clock = clock
        self.business_times: list[dt.datetime] = []

    async def tick(self) -> None:
        self.business_times.append(self.clock.now())


async def test_an_actor_that_follows_the_clock_ticks_each_business_period(
    autojump_clock: trio.testing.MockClock,
) -> None:
    clock = Clock(ANCHOR, speed=600)
    ticker = Ticker(clock)
    ticker.follow_clock(clock, tick_floor=0.25)
    assert ticker.tick_period == pytest.approx(6.0)  # one business hour is 6 trio seconds
    tree = Supervisor(
        "root",
        Strategy.ONE_FOR_ONE,
        [ticker.child_spec()],
        reporter=CrashReporter([RingSink()], now=clock.now),
        backoff=Backoff(initial=0.5, jitter=0.0),
        rng=random.Random(0),
    )
    async with trio.open_nursery() as nursery:
        await nursery.start(tree.run)
        await trio.sleep(6.0 * 24 + 1.5)  # a business day (and the 10-minute first delay)
        nursery.cancel_scope.cancel()
    offsets = [round((at - ANCHOR).total_seconds()) for at in ticker.business_times]
    # First tick after 10 business minutes, then hourly, in phase: 25 ticks in the day.
    assert offsets == [600 + 3600 * n for n in range(25)]


def test_settings_give_the_clock_its_speed_and_every_worker_a_scaled_period(tmp_path: object) -> None:
    async def main() -> None:
        settings = load_settings(clock_speed=7200, tick_floor=0.5, database_url="postgresql://x@127.0.0.1/x")
        services = make_services(settings)
        assert services.clock.speed == 7200.0
        worker_specs(services)
        assert services.actors, "worker_specs registered no actors"
        for actor in services.actors.values():
            assert actor.period is not None and actor.tick_period is not None
            expected = max(actor.period / 7200, min(0.5, actor.period))
            assert actor.tick_period == pytest.approx(expected), actor.name

        production = make_services(load_settings(database_url="postgresql://x@127.0.0.1/x"))
        assert production.clock.speed == 1.0
        worker_specs(production)
        for actor in production.actors.values():
            assert actor.tick_period == actor.period, actor.name  # exactly as before

    trio.run(main)


async def _seed_one_message(tx: Tx, *, now: dt.datetime) -> None:
    await tx.execute(
        "INSERT INTO users (id, first_name, language, referral_code, created_at) "
        "VALUES (7, 'U', 'en', 'ref7', $1)",
        now,
    )
    await tx.execute(
        "INSERT INTO outbox (chat_id, kind, payload, dedupe_key, priority, next_attempt_at, created_at) "
        """VALUES (7, 'x', '{"text": "hi"}'::jsonb, 'k7', 1, $1, $1)""",
        now,
    )


async def _lease_until(tx: Tx) -> dt.datetime | None:
    value = await tx.fetchval("SELECT leased_until FROM outbox WHERE dedupe_key = 'k7'")
    assert value is None or isinstance(value, dt.datetime)
    return value


async def test_an_outbox_lease_lasts_its_trio_seconds_at_any_speed(bridge: None, db: Database) -> None:
    speed = 1000.0
    await db.run(_seed_one_message, now=ANCHOR)
    emulator = BotApiEmulator()
    emulator.add_user(7)
    emulator.set_answer_latency("sendMessage", 2.0)  # the lease is read while the send is in the air
    async with trio.open_nursery() as nursery:
        base = await nursery.start(emulator.serve)
        bot = make_bot(emulator.token, base)
        try:
            clock = Clock(ANCHOR, speed=speed)
            settings = SenderSettings(lease=30.0, send_timeout=5.0, poll_interval=0.1, tick_budget=10.0)
            rng = random.Random(1)
            sender = OutboxSender(db=lambda: db, bot=bot, clock=clock, rng=rng, settings=settings)
            nursery.start_soon(sender.drain)
            with trio.fail_after(30):
                while (until := await db.run(_lease_until)) is None:  # noqa: ASYNC110 - the table is the event
                    await trio.sleep(0.02)
        finally:
            nursery.cancel_scope.cancel()
            with trio.CancelScope(shield=True):
                await bot.session.close()
    # 30 trio seconds of lease = 30 000 business seconds at speed 1000 (not 30 business seconds,
    # which would run out in 0.03 s of real time while the send is still in the air).
    held = (until - ANCHOR).total_seconds()
    assert 30.0 * speed <= held <= 30.0 * speed + 60.0 * speed
