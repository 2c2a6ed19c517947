"""The outbox sender's pacing and delivery guarantees, on real PostgreSQL and the Bot API emulator.

* Pacing (issue 9): with answers taking 300 ms the sender still starts 30 sends in every virtual
  second, never 31, and one per chat per second (MockClock; the emulator stamps arrivals).
* Trust (issue 11): a broadcast copy whose send has no recorded answer — the sender cancelled in
  mid-send, or killed before it could record — is never sent again; a personal notice is sent
  again only if it was in the air; results that could not be written during an outage are kept
  and land when the database is back, and nothing is resent.
* Several processes (issue 13): two senders on one database — one leads, one stands by — share
  one rate; when the leader stops, the standby takes over.
"""

from __future__ import annotations

import datetime as dt
import math
import os
import random
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

from atlas.actors.outbox.drain import STAGED, STAGED_SECONDS
from atlas.actors.outbox.outcomes import OUTCOMES, Answer, Guarantee, Step, decide
from atlas.actors.outbox_sender import OutboxSender, SenderSettings
from atlas.clock import Clock
from atlas.storage import Database, DatabaseUnavailable, Tx
from atlas.storage.units.delivery import record_deliveries
from atlas.supervision import ChildContext
from atlas.testing.botapi import BotApiEmulator, max_in_window
from tests.test_outbox_sender import (
    NOW,
    TRANSLATOR,
    _add_broadcast,
    _add_rows,
    _add_users,
    emulated,
    fast_settings,
    until_no_pending,
)

Row = tuple[int, str, dict[str, Any], str, int, int | None]


async def _seed(db: Database, chats: list[int], *, broadcast_chats: set[int], notice_chats: set[int]) -> int:
    """One broadcast copy for each of ``broadcast_chats``, one notice for each of ``notice_chats``."""
    await db.run(_add_users, ids=chats, languages=["en"] * len(chats), now=NOW)
    broadcast = await db.run(_add_broadcast, now=NOW)
    rows: list[Row] = [
        (i, "b", {"text": f"news {i}"}, f"b:{i}", 1, broadcast) for i in sorted(broadcast_chats)
    ]
    rows += [(i, "n", {"text": f"notice {i}"}, f"n:{i}", 0, None) for i in sorted(notice_chats)]
    await db.run(_add_rows, rows=rows, now=NOW)
    return broadcast


async def _state_by_key(tx: Tx) -> dict[str, tuple[str, int]]:
    rows = await tx.fetch("SELECT dedupe_key, state, attempts FROM outbox ORDER BY id LIMIT 10000")
    return {row["dedupe_key"]: (row["state"], int(row["attempts"])) for row in rows}


def _copies(emulator: BotApiEmulator, chats: list[int]) -> dict[int, int]:
    return {i: len(emulator.chat_log(i)) for i in chats}


def _sender(db: Any, bot: Any, clock: Clock, settings: SenderSettings, seed: int) -> OutboxSender:
    return OutboxSender(
        db=db, bot=bot, clock=clock, rng=random.Random(seed), settings=settings, translator=TRANSLATOR
    )


def _after_the_lease(settings: SenderSettings) -> Clock:
    return Clock(anchor=dt.datetime.now(dt.UTC) + dt.timedelta(seconds=settings.lease + 60))


class FlakyRecords:
    """A Database whose ``record_deliveries`` fails while ``down`` (the database is away for it)."""

    def __init__(self, db: Database, *, down: bool = True, healthy: int = 0) -> None:
        self._db = db
        self.down = down
        self._healthy = healthy  # record calls that still work before it goes down
        self.refused = 0

    async def run(self, unit: Any, /, **kwargs: Any) -> Any:
        if unit is record_deliveries and self.down:
            if self._healthy > 0:
                self._healthy -= 1
            else:
                self.refused += 1
                raise DatabaseUnavailable("connection lost (simulated)")
        return await self._db.run(unit, **kwargs)


# ---------------------------------------------------------------------------------------------
# Pacing


@pytest.mark.slow
async def test_with_300ms_answers_the_sender_keeps_30_per_virtual_second_for_60_seconds(
    db: Database, mock_clock: trio.testing.MockClock
) -> None:
    chats = list(range(500_001, 501_201))  # 1200 chats: the per-chat limit never sets the pace
    await _seed(db, chats, broadcast_chats=set(chats), notice_chats=set(chats[::2]))  # 1800 rows
    async with emulated() as (emulator, bot, nursery):
        for i in chats:
            emulator.add_user(i)
        emulator.set_answer_latency("sendMessage", 0.3)
        # Real sockets are in flight (HTTP to the emulator, PostgreSQL): jump only when truly
        # idle, and only once the seeding is done (a jump there would fire asyncpg's timeout).
        mock_clock.autojump_threshold = 0.01
        # Large claims: a slow claim on a busy machine must not let the queue run dry.
        settings = SenderSettings(rate=30.0, batch=400, elected=False, lease=600.0, tick_budget=300.0)
        sender = _sender(lambda: db, bot, Clock(), settings, seed=5)
        await nursery.start(sender.run, ChildContext("root/workers/outbox_sender"))
        with trio.fail_after(200):
            while len(emulator.send_stamps) < 1800:  # noqa: ASYNC110 - the emulator is the event
                await trio.sleep(1)
        nursery.cancel_scope.cancel()

    stamps = sorted(s.time for s in emulator.send_stamps)
    first = stamps[0]
    per_second = [sum(1 for t in stamps if first + k <= t < first + k + 1) for k in range(60)]
    assert per_second == [30] * 60, per_second  # 30 in each of 60 virtual seconds: not 23, not 31
    assert max_in_window(stamps, 1.0) == 30
    assert emulator.max_per_chat_rate() == 1
    assert {n for n in _copies(emulator, chats).values()} <= {0, 1, 2}


# ---------------------------------------------------------------------------------------------
# Trust


async def test_a_cancel_mid_send_never_resends_a_broadcast_copy_and_resends_only_notices_in_the_air(
    db: Database,
) -> None:
    chats = list(range(600_001, 600_081))
    # Notices (priority 0) go first: 8 of them and 8 broadcast copies fill the 16 send slots.
    notice_chats, broadcast_chats = set(chats[:8]), set(chats[8:])
    await _seed(db, chats, broadcast_chats=broadcast_chats, notice_chats=notice_chats)
    async with emulated() as (emulator, bot, nursery):
        for i in chats:
            emulator.add_user(i)
        emulator.set_answer_latency("sendMessage", 30.0)  # every answer is still out at the cancel
        settings = fast_settings(max_in_flight=16, send_timeout=60.0, lease=120.0)
        scope = trio.CancelScope()
        stopped = trio.Event()
        nursery.start_soon(_drain_in, _sender(lambda: db, bot, Clock(), settings, 1), scope, stopped)
        with trio.fail_after(30):
            while sum(_copies(emulator, chats).values()) < 16:  # noqa: ASYNC110
                await trio.sleep(0.05)
        scope.cancel()  # the actor is stopped with 16 sends in the air
        await stopped.wait()
        in_the_air = {i for i, n in _copies(emulator, chats).items() if n}
        assert len(in_the_air) == 16 and in_the_air & notice_chats and in_the_air & broadcast_chats
        states = await db.run(_state_by_key)
        assert {states[f"b:{i}"] for i in in_the_air & broadcast_chats} == {("unknown", 1)}
        assert {states[f"n:{i}"] for i in in_the_air & notice_chats} == {("pending", 1)}

        emulator.set_answer_latency("sendMessage", 0.0)
        await trio.sleep(1.0)  # the cut-off sends hold their chats one interval (the bot's gate)
        later = Clock(anchor=dt.datetime.now(dt.UTC) + dt.timedelta(seconds=5))  # past the retry backoff
        await _sender(lambda: db, bot, later, settings, 2).drain()
        copies = _copies(emulator, chats)
        assert {copies[i] for i in broadcast_chats} == {1}  # in the air once, or sent once later
        assert {i for i in notice_chats if copies[i] == 2} == in_the_air & notice_chats
        assert all(copies[i] == 1 for i in notice_chats - in_the_air)
        states = await db.run(_state_by_key)
        assert {states[f"b:{i}"][0] for i in broadcast_chats - in_the_air} == {"sent"}
        assert {states[f"n:{i}"][0] for i in notice_chats} == {"sent"}
        nursery.cancel_scope.cancel()


async def _drain_in(sender: OutboxSender, scope: trio.CancelScope, stopped: trio.Event) -> None:
    try:
        with scope:
            await sender.drain()
    finally:
        stopped.set()


async def test_a_sender_killed_before_recording_never_resends_broadcast_copies(db: Database) -> None:
    chats = list(range(700_001, 700_121))
    notice_chats, broadcast_chats = set(chats[:4]), set(chats[4:])  # notices go first
    broadcast = await _seed(db, chats, broadcast_chats=broadcast_chats, notice_chats=notice_chats)
    async with emulated() as (emulator, bot, nursery):
        for i in chats:
            emulator.add_user(i)
        settings = fast_settings(batch=40, max_in_flight=8)
        # The database takes claims and marks, and three writes of results, then no more: then the
        # process is killed
        # (the sender object and its kept results are dropped, as a SIGKILL would).
        flaky = FlakyRecords(db, healthy=3)
        doomed = _sender(lambda: flaky, bot, Clock(), settings, 1)
        with pytest.raises(DatabaseUnavailable):
            await doomed.drain()
        recorded = {int(k[2:]) for k, (state, _) in (await db.run(_state_by_key)).items() if state == "sent"}
        delivered = {i for i, n in _copies(emulator, chats).items() if n} - recorded
        assert delivered & broadcast_chats and doomed.delivery_statistics().unwritten >= len(delivered)
        assert len(delivered) <= settings.max_in_flight + 8  # sends stop once results cannot be written
        del doomed

        await trio.sleep(1.0)  # the last sends hold their chats one interval (the bot's gate)
        await _sender(lambda: db, bot, _after_the_lease(settings), settings, 2).drain()
        copies = _copies(emulator, chats)
        assert max(copies[i] for i in broadcast_chats) == 1  # none twice, ever
        assert {i for i in notice_chats if copies[i] == 2} == delivered & notice_chats  # only those
        assert all(copies[i] == 1 for i in notice_chats - delivered)
        states = await db.run(_state_by_key)
        assert {states[f"b:{i}"][0] for i in delivered & broadcast_chats} == {"unknown"}
        # The price of at most once: a copy marked and then not sent (it was waiting for its start
        # slot when the sends stopped) is lost with the killed process. At most the staged few.
        lost = {i for i in broadcast_chats if not copies[i]}
        staged = max(STAGED, math.ceil(settings.rate * STAGED_SECONDS))
        assert {states[f"b:{i}"][0] for i in lost} <= {"unknown"} and len(lost) <= staged
        progress = await db.run(_progress, broadcast=broadcast)
        unknown = len((delivered & broadcast_chats) | lost)
        assert progress == {"sent": len(broadcast_chats) - unknown, "unknown": unknown}
        nursery.cancel_scope.cancel()


async def _progress(tx: Tx, *, broadcast: int) -> dict[str, int]:
    rows = await tx.fetch(
        "SELECT state, count(*) AS n FROM outbox WHERE broadcast_id = $1 GROUP BY state",
        broadcast,
        bounded_by="6 states",
    )
    return {row["state"]: int(row["n"]) for row in rows}


async def test_results_kept_through_an_outage_land_afterwards_and_nothing_is_resent(db: Database) -> None:
    chats = list(range(800_001, 800_061))
    broadcast_chats, notice_chats = set(chats[:30]), set(chats[30:])
    await _seed(db, chats, broadcast_chats=broadcast_chats, notice_chats=notice_chats)
    async with emulated() as (emulator, bot, nursery):
        for i in chats:
            emulator.add_user(i)
        settings = fast_settings(batch=100, max_in_flight=8)
        flaky = FlakyRecords(db)
        sender = _sender(lambda: flaky, bot, Clock(), settings, 1)
        with pytest.raises(DatabaseUnavailable):
            await sender.drain()
        kept = sender.delivery_statistics().unwritten
        delivered = {i for i, n in _copies(emulator, chats).items() if n}
        assert delivered and kept >= len(delivered) and flaky.refused >= 2  # retried, then kept

        # The database is back, after the leases ran out: the kept results go in first.
        flaky.down = False
        sender.clock = _after_the_lease(settings)
        await sender.drain()
        assert sender.delivery_statistics().unwritten == 0
        assert _copies(emulator, chats) == {i: 1 for i in chats}  # every message once: none resent
        states = await db.run(_state_by_key)
        assert {state for state, _ in states.values()} == {"sent"}
        nursery.cancel_scope.cancel()


def test_the_outcome_table_covers_every_answer_and_guarantee() -> None:
    assert set(OUTCOMES) == {(a, g) for a in Answer for g in Guarantee}
    assert OUTCOMES[(Answer.NO_ANSWER, Guarantee.AT_MOST_ONCE)] is Step.RECORD_UNKNOWN
    assert OUTCOMES[(Answer.NO_ANSWER, Guarantee.AT_LEAST_ONCE)] is Step.RECORD_RETRY
    for guarantee in Guarantee:
        assert OUTCOMES[(Answer.SERVER_ERROR, guarantee)] is Step.RECORD_RETRY  # an answer: not taken
        assert OUTCOMES[(Answer.THROTTLED, guarantee)] is Step.REQUEUE
    retry = decide(Answer.SERVER_ERROR, Guarantee.AT_MOST_ONCE, attempts=6, max_attempts=8)
    used_up = decide(Answer.SERVER_ERROR, Guarantee.AT_MOST_ONCE, attempts=7, max_attempts=8)
    assert (retry, used_up) == (Step.RECORD_RETRY, Step.RECORD_FAILED)


# ---------------------------------------------------------------------------------------------
# Several processes


@pytest.mark.slow
async def test_two_processes_elect_one_sender_and_the_standby_takes_over(db: Database) -> None:
    chats = list(range(900_001, 900_061))
    await _seed(db, chats, broadcast_chats=set(chats), notice_chats=set(chats))  # 120 rows
    async with emulated() as (emulator, bot, nursery):
        for i in chats:
            emulator.add_user(i)
        settings = fast_settings(rate=30.0, standby_retry=0.2, lock_check_every=0.5)
        one = _sender(lambda: db, bot, Clock(), settings, 1)
        two = _sender(lambda: db, bot, Clock(), settings, 2)
        first_process, stopped = trio.CancelScope(), trio.Event()
        nursery.start_soon(_run_in, one, first_process, stopped)
        with trio.fail_after(10):
            while one.role != "leader":  # noqa: ASYNC110
                await trio.sleep(0.05)
        await nursery.start(two.run, ChildContext("root/workers/outbox_sender"))
        with trio.fail_after(30):
            while len(emulator.send_stamps) < 50:  # noqa: ASYNC110
                await trio.sleep(0.05)
        assert (one.role, two.role) == ("leader", "standby")
        assert two.delivery_statistics().sent == 0
        first_process.cancel()
        await stopped.wait()
        # The leader's process stopped; the lock goes with its session and the standby takes over.
        await until_no_pending(db, within=60)
        assert two.role == "leader" and two.delivery_statistics().sent > 0
        texts = {i: [r.plain_text for r in emulator.chat_log(i)] for i in chats}
        assert all(texts[i].count(f"news {i}") == 1 for i in chats)  # a broadcast copy: never twice
        # A notice in the air when the leader stopped may come twice (at least once), no other.
        doubled = [i for i in chats if texts[i].count(f"notice {i}") == 2]
        assert all(texts[i].count(f"notice {i}") in (1, 2) for i in chats)
        assert len(doubled) <= settings.max_in_flight
        # Telegram saw one bot at one rate (arrival jitter on a loaded machine: 0.95 s windows).
        assert emulator.max_global_rate(window=0.95) <= settings.rate
        assert emulator.max_per_chat_rate() == 1
        nursery.cancel_scope.cancel()


async def test_a_new_leader_takes_over_the_rows_a_dead_leader_had_leased_at_once(db: Database) -> None:
    """A leader killed mid-drain leaves its claim leased for the whole lease (120 s); the next
    leader ends those leases when it is elected, so they go out in seconds, each once (a
    broadcast copy whose attempt was marked becomes 'unknown', never resent)."""
    chats = list(range(910_001, 910_021))
    await _seed(db, chats, broadcast_chats=set(chats[:10]), notice_chats=set(chats[10:]))

    async def leased_by_the_dead(tx: Tx) -> None:
        # Every row claimed by a leader that died: a 120 s lease; one broadcast copy mid-attempt.
        await tx.execute(
            "UPDATE outbox SET lease_owner = gen_random_uuid(), leased_until = $1 WHERE state = 'pending'",
            dt.datetime.now(dt.UTC) + dt.timedelta(seconds=120),
        )
        await tx.execute(
            "UPDATE outbox SET attempt_started_at = $1 WHERE dedupe_key = $2", NOW, f"b:{chats[0]}"
        )

    await db.run(leased_by_the_dead)
    async with emulated() as (emulator, bot, nursery):
        for i in chats:
            emulator.add_user(i)
        heir = _sender(lambda: db, bot, Clock(), fast_settings(standby_retry=0.2, lock_check_every=0.5), 3)
        await nursery.start(heir.run, ChildContext("root/workers/outbox_sender"))
        await until_no_pending(db, within=15)  # not 120 s
        copies = _copies(emulator, chats)
        assert copies == {i: 0 if i == chats[0] else 1 for i in chats}
        states = await db.run(_state_by_key)
        assert states[f"b:{chats[0]}"][0] == "unknown"
        nursery.cancel_scope.cancel()


async def _run_in(sender: OutboxSender, scope: trio.CancelScope, stopped: trio.Event) -> None:
    try:
        with scope:
            await sender.run(ChildContext("root/workers/outbox_sender"))
    finally:
        stopped.set()


# ---------------------------------------------------------------------------------------------
# A real kill


ROOT = Path(__file__).resolve().parent.parent


async def _child(dsn: str, base: str, offset: float, hold_after: int) -> trio.Process:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    command = [sys.executable, "-m", "tests._outbox_kill_child", dsn, base, str(offset), str(hold_after)]
    return await trio.lowlevel.open_process(command, cwd=ROOT, env=env, stdout=subprocess.PIPE)


_ESTABLISHED, _CLOSE_WAIT = "01", "08"


def _open_server_connections(port: int) -> int:
    """Connections to the local ``port`` the server has not closed yet (Linux's /proc/net/tcp)."""
    count = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as lines:
            for line in list(lines)[1:]:
                local, state = line.split()[1], line.split()[3]
                if int(local.rsplit(":", 1)[1], 16) == port and state in (_ESTABLISHED, _CLOSE_WAIT):
                    count += 1
    return count


async def _until_the_server_is_done_with_the_dead(base: str) -> None:
    """Wait until the emulator has read and answered all a killed child had sent it.

    A request the child wrote just before SIGKILL can still sit in the emulator's socket buffer
    when ``wait()`` returns; on a loaded machine the emulator handles it (records the message)
    after the test has counted the copies, and the count would miss it. The server closes such a
    connection only after handling what came on it, so no connection left open means none is left.
    """
    port = int(base.rsplit(":", 1)[1])
    with trio.fail_after(30):
        while _open_server_connections(port):  # noqa: ASYNC110 - the kernel's table is the event
            await trio.sleep(0.05)


async def _read_line(process: trio.Process) -> str:
    assert process.stdout is not None
    data = b""
    while not data.endswith(b"\n"):
        chunk = await process.stdout.receive_some(1)
        if not chunk:
            break
        data += chunk
    return data.decode().strip()


@pytest.mark.slow
async def test_sigkill_between_answers_and_records_twenty_times(db: Database, fresh_database: str) -> None:
    chats = list(range(950_001, 950_201))
    broadcast_chats, notice_chats = set(chats[1::2]), set(chats[::2])
    await _seed(db, chats, broadcast_chats=broadcast_chats, notice_chats=notice_chats)
    in_the_air_at_kills: dict[int, int] = {i: 0 for i in chats}
    seen: dict[int, int] = {i: 0 for i in chats}
    async with emulated() as (emulator, _bot, nursery):
        for i in chats:
            emulator.add_user(i)
        base = emulator.url
        for kill in range(20):
            child = await _child(fresh_database, base, offset=100.0 * (kill + 1), hold_after=2)
            with trio.fail_after(90):
                line = await _read_line(child)
            if line != "holding":  # nothing left to send: it finished
                await child.wait()
                break
            child.send_signal(signal.SIGKILL)  # sends answered, results not recorded
            await child.wait()
            await _until_the_server_is_done_with_the_dead(base)
            states = await db.run(_state_by_key)
            for i, n in _copies(emulator, chats).items():
                key = f"n:{i}" if i in notice_chats else f"b:{i}"
                if n > seen[i] and states[key][0] == "pending":  # delivered by this one, not recorded
                    in_the_air_at_kills[i] += 1
                seen[i] = n
        kills = kill + 1
        assert kills >= 10  # the work really was cut short again and again
        final = await _child(fresh_database, base, offset=100.0 * 30, hold_after=-1)
        with trio.fail_after(120):
            assert await _read_line(final) == "done"
        await final.wait()
        copies = _copies(emulator, chats)
        assert max(copies[i] for i in broadcast_chats) == 1  # zero broadcast copies doubled
        # A notice comes once more for each kill that caught it between its answer and its record.
        assert {i: copies[i] for i in notice_chats} == {i: 1 + in_the_air_at_kills[i] for i in notice_chats}
        assert any(in_the_air_at_kills[i] for i in notice_chats)  # the window was really hit
        states = await db.run(_state_by_key)
        assert {states[f"n:{i}"][0] for i in notice_chats} == {"sent"}
        nursery.cancel_scope.cancel()


async def test_marks_asked_for_together_share_one_write(autojump_clock: trio.testing.MockClock) -> None:
    from collections.abc import Sequence

    from atlas.actors.outbox.marks import AttemptMarker

    writes: list[list[int]] = []

    async def write(ids: Sequence[int]) -> list[int]:
        writes.append(list(ids))
        await trio.sleep(0.01)  # the round trip, during which more marks are asked for
        return [i for i in ids if i != 13]  # row 13 was lost to another sender

    marker = AttemptMarker(write)
    answers: dict[int, bool] = {}

    async def ask(row_id: int, after: float) -> None:
        await trio.sleep(after)
        answers[row_id] = await marker.mark(row_id)

    async with trio.open_nursery() as nursery:
        for row_id, after in ((1, 0.0), (2, 0.001), (13, 0.002), (4, 0.003), (5, 0.02)):
            nursery.start_soon(ask, row_id, after)
    assert writes == [[1], [2, 13, 4], [5]]  # whoever asks while a write runs rides the next one
    assert answers == {1: True, 2: True, 13: False, 4: True, 5: True}
