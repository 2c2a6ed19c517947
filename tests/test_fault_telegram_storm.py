"""A Telegram 429 storm, then a Telegram 5xx outage, against the outbox sender.

The other sender tests give single chats a 429 or a few 5xx. Here Telegram refuses *every*
``sendMessage`` for seconds: first with 429 ``retry_after=3`` (a flood limit on the whole bot), then
with 502 (Telegram down). Real aiogram over HTTP against the Bot API emulator, real PostgreSQL.
Asserted: during the storm the sender pauses every chat (a global pause) instead of walking
through the others at full rate; during the 5xx outage each row backs off and no chat is tried
faster than once a second; it never crashes; afterwards every message is delivered exactly once.
"""

from __future__ import annotations

import datetime as dt
import random
from collections import Counter

import pytest
import trio

from atlas.actors.outbox_sender import OutboxSender, SenderSettings
from atlas.clock import Clock
from atlas.storage import Database, Tx
from atlas.supervision import Backoff, ChildContext
from atlas.telegram import make_bot
from atlas.testing.botapi import BotApiEmulator

NOW = dt.datetime(2025, 1, 1, tzinfo=dt.UTC)
CHATS = list(range(300_001, 300_301))
STORM = 6.0  # seconds every send is answered 429
RETRY_AFTER = 3
OUTAGE = 4.0  # seconds every send is answered 502
RATE = 200.0


async def _seed(tx: Tx, *, chats: list[int], now: dt.datetime) -> None:
    await tx.execute(
        "INSERT INTO users (id, first_name, language, referral_code, created_at) "
        "SELECT id, 'U', 'en', 'ref' || id, $2 FROM unnest($1::bigint[]) AS u(id)",
        chats,
        now,
    )
    await tx.execute(
        """
        INSERT INTO outbox (chat_id, kind, payload, dedupe_key, priority, next_attempt_at, created_at)
        SELECT id, 'broadcast', jsonb_build_object('text', 'News for ' || id), 'storm:' || id, 1, $2, $2
        FROM unnest($1::bigint[]) AS u(id)
        """,
        chats,
        now,
    )


async def _pending(tx: Tx) -> int:
    return int(await tx.fetchval("SELECT count(*) FROM outbox WHERE state = 'pending'"))


@pytest.mark.slow
async def test_a_429_storm_and_a_5xx_outage_pause_the_sender_and_lose_nothing(
    bridge: None, db: Database
) -> None:
    await db.run(_seed, chats=CHATS, now=NOW)
    emulator = BotApiEmulator()
    settings = SenderSettings(
        rate=RATE, batch=100, max_in_flight=16, lease=30.0, send_timeout=5.0,
        retry=Backoff(initial=0.2, factor=2.0, maximum=1.0, jitter=0.0), poll_interval=0.1,
        tick_budget=10.0, elected=False,
    )  # fmt: skip
    async with trio.open_nursery() as nursery:
        base = await nursery.start(emulator.serve)
        bot = make_bot(emulator.token, base)
        for chat in CHATS:
            emulator.add_user(chat, f"U{chat}")
        # Every send is refused before the sender starts: the storm meets the whole backlog.
        emulator.inject("sendMessage", error=429, retry_after=RETRY_AFTER, count=None)
        sender = OutboxSender(db=lambda: db, bot=bot, clock=Clock(), rng=random.Random(5), settings=settings)
        storm_from = trio.current_time()
        await nursery.start(sender.run, ChildContext("root/workers/outbox_sender"))
        await trio.sleep(STORM)
        emulator.clear_faults()
        storm_to = trio.current_time()
        await trio.sleep(0.5)
        emulator.fail_all_5xx(True, code=502)
        outage_from = trio.current_time()
        await trio.sleep(OUTAGE)
        emulator.fail_all_5xx(False)
        outage_to = trio.current_time()
        with trio.fail_after(120):  # a bound against hangs, not a speed test
            while await db.run(_pending):  # noqa: ASYNC110 - the table is the event
                await trio.sleep(0.2)
        stats = sender.delivery_statistics()
        stamps = list(emulator.send_stamps)
        logs = {chat: [r.plain_text for r in emulator.chat_log(chat)] for chat in CHATS}
        nursery.cancel_scope.cancel()
        with trio.CancelScope(shield=True):
            await bot.session.close()

    in_storm = [s for s in stamps if storm_from <= s.time < storm_to]
    in_outage = [s for s in stamps if outage_from <= s.time < outage_to]
    # A stamp is the call's arrival; its answer is decided after its body is read, so a call that
    # arrived just before a fault was lifted may be accepted: the "none accepted" checks leave
    # the last second of each window out.
    settled_storm = [s for s in in_storm if s.time < storm_to - 1.0]
    settled_outage = [s for s in in_outage if s.time < outage_to - 1.0]
    # The storm paused every chat: at full rate the sender would have made ~RATE x STORM calls.
    assert stats.global_pauses >= 1
    assert not any(s.accepted for s in settled_storm)
    assert len(in_storm) <= RATE * STORM / 5, f"{len(in_storm)} calls into a 429 storm"
    # The outage: each row backs off on its own (5xx is per message, not a flood limit), and no
    # chat is tried faster than Telegram's one message a second.
    assert not any(s.accepted for s in settled_outage), [
        (round(s.time - outage_from, 3), s.method, s.chat_id) for s in settled_outage if s.accepted
    ][:10]
    per_chat = Counter(s.chat_id for s in in_outage)
    assert not per_chat or max(per_chat.values()) <= OUTAGE + 2, per_chat.most_common(3)
    # Nothing lost, nothing doubled.
    assert all(log == [f"News for {chat}"] for chat, log in logs.items()), {
        chat: log for chat, log in logs.items() if log != [f"News for {chat}"]
    }
    assert len([s for s in stamps if s.accepted]) == len(CHATS)
