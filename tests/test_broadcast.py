"""The admin broadcast end to end: the real aiogram Bot against the Bot API emulator, real
PostgreSQL, the admin screens, the Broadcaster and the real OutboxSender, with 429s and 403s."""

from __future__ import annotations

import datetime as dt
import itertools
import random

import pytest
import trio

from atlas.actors.broadcaster import Broadcaster, BroadcasterSettings
from atlas.actors.outbox_sender import OutboxSender, SenderSettings
from atlas.storage import Database, Tx
from atlas.storage.units.broadcasts import (
    BroadcastError,
    confirm_broadcast,
    create_broadcast,
    get_broadcast,
    materialize_batch,
    segment_size,
)
from atlas.storage.units.delivery import broadcast_progress
from atlas.supervision import Backoff, ChildContext
from atlas.testing.botapi import max_in_window
from tests._admin_support import ADMIN, NOW, add_subscriptions, add_users, admin_bot

DAY = dt.timedelta(days=1)
TEXT = "Big news: <b>new servers</b> & lower prices"
PLAIN = "Big news: new servers & lower prices"


async def _blocked_ids(tx: Tx) -> list[int]:
    rows = await tx.fetch("SELECT id FROM users WHERE bot_blocked_at IS NOT NULL ORDER BY id LIMIT 100000")
    return [int(r["id"]) for r in rows]


async def _latest_broadcast(tx: Tx) -> int | None:
    value = await tx.fetchval("SELECT max(id) FROM broadcasts")
    return None if value is None else int(value)


async def _seed(
    tx: Tx, *, segment: list[int], unreachable: list[int], expired: list[int], none: list[int]
) -> None:
    await add_users(tx, ids=[ADMIN], now=NOW)
    await add_users(tx, ids=segment, now=NOW)
    await add_users(tx, ids=unreachable[:10], now=NOW, banned=True)
    await add_users(tx, ids=unreachable[10:], now=NOW, bot_blocked=True)
    await add_users(tx, ids=expired + none, now=NOW)
    await add_subscriptions(
        tx, ids=segment + unreachable, kind="paid", status="active", expires_at=NOW + 30 * DAY, now=NOW
    )
    await add_subscriptions(tx, ids=expired, kind="paid", status="expired", expires_at=NOW - DAY, now=NOW)


@pytest.mark.slow
async def test_admin_broadcast_to_2000_users_under_429_and_403(db: Database) -> None:
    segment = list(range(100_001, 102_001))  # active subscription, reachable
    unreachable = list(range(103_001, 103_021))  # in the segment, but banned (10) or bot already blocked (10)
    expired = list(range(104_001, 104_301))  # outside the segment
    none = list(range(105_001, 105_201))  # outside: never subscribed
    blocks = set(segment[5::33])  # 61 users block the bot: the sender meets a 403
    throttled = set(segment[7::20])  # 100 users answer 429 once
    await db.run(_seed, segment=segment, unreachable=unreachable, expired=expired, none=none)

    settings = SenderSettings(
        rate=200.0, per_chat_rate=1.0, batch=200, max_in_flight=32, lease=30.0, send_timeout=5.0,
        retry=Backoff(initial=0.2, factor=2.0, maximum=1.0, jitter=0.0), poll_interval=0.2, tick_budget=10.0,
    )  # fmt: skip
    async with admin_bot(db) as h:
        sender = OutboxSender(
            db=lambda: db, bot=h.bot, clock=h.clock, rng=random.Random(1), settings=settings
        )
        broadcaster = Broadcaster(
            db=lambda: db, bot=h.bot, clock=h.clock, rng=random.Random(2), wake_sender=sender.wake,
            settings=BroadcasterSettings(batch=500, poll_interval=0.2, progress_interval=2.0),
            may_edit=lambda: sender.leads,
        )  # fmt: skip
        # A second `atlas run` process: its sender stands by, so its broadcaster must not edit.
        other_sender = OutboxSender(
            db=lambda: db, bot=h.bot, clock=h.clock, rng=random.Random(3), settings=settings
        )
        other_broadcaster = Broadcaster(
            db=lambda: db, bot=h.bot, clock=h.clock, rng=random.Random(4), wake_sender=other_sender.wake,
            settings=BroadcasterSettings(batch=500, poll_interval=0.2, progress_interval=2.0),
            may_edit=lambda: other_sender.leads,
        )  # fmt: skip
        admin = h.emulator.add_user(ADMIN, "Boss")
        users = {i: h.emulator.add_user(i) for i in segment + unreachable + expired + none}
        for i in blocks:
            users[i].block_bot()
        for i in throttled:
            h.emulator.inject("sendMessage", chat_id=i, error=429, retry_after=1)

        # The admin walks the flow: /broadcast → segment → text → preview → confirm.
        admin.send_command("/broadcast")
        assert (await admin.next_message(within=10)).plain_text == "Who gets the broadcast?"
        admin.press("Active subscription")
        assert "Send the text" in ((await admin.next_record(within=10)).plain_text or "")
        admin.send_text(TEXT)  # a scripted user's text has no entities: it is escaped, not HTML
        header = await admin.next_message(within=10)
        assert header.plain_text is not None and "recipients now: 2000" in header.plain_text
        preview = await admin.next_message(within=10)
        assert preview.plain_text == TEXT and preview.button_texts() == ["✅ Send", "✖️ Cancel"]

        # Only now do the workers start: nothing may be sent before the confirm.
        await h.nursery.start(sender.run, ChildContext("root/workers/outbox_sender"))
        await h.nursery.start(broadcaster.run, ChildContext("root/workers/broadcaster"))
        with trio.fail_after(10):
            while sender.role != "leader":  # noqa: ASYNC110 - the election is the event
                await trio.sleep(0.05)
        await h.nursery.start(other_sender.run, ChildContext("other/workers/outbox_sender"))
        await h.nursery.start(other_broadcaster.run, ChildContext("other/workers/broadcaster"))
        confirmed_at = trio.current_time()
        admin.press("✅ Send")
        broadcast_id = None
        with trio.fail_after(120):  # a bound against hangs, not a speed test (the machine may be busy)
            while True:
                broadcast_id = broadcast_id or await db.run(_latest_broadcast)
                if (
                    broadcast_id is not None
                    and (await db.run(get_broadcast, broadcast_id=broadcast_id)).state == "done"
                ):
                    break
                await trio.sleep(0.2)
        assert broadcast_id is not None

        # Every reachable user of the segment got exactly one copy; nobody else got anything.
        for i in segment:
            log = [r for r in users[i].chat_log() if r.kind == "message"]
            if i in blocks:
                assert log == [], i
            else:
                assert [r.plain_text for r in log] == [TEXT], i
        for i in unreachable + expired + none:
            assert users[i].chat_log() == [], i

        # Blocked users are marked (the 10 marked before stay marked); counts are right.
        blocked_now = set(await db.run(_blocked_ids))
        assert blocked_now == blocks | set(unreachable[10:])
        progress = await db.run(broadcast_progress, broadcast_id=broadcast_id)
        sent = len(segment) - len(blocks)
        assert (progress.sent, progress.blocked, progress.failed, progress.pending) == (
            sent,
            len(blocks),
            0,
            0,
        )
        view = await db.run(get_broadcast, broadcast_id=broadcast_id)
        assert view.recipients == len(segment) and view.cursor_user_id == max(segment)

        # The progress message: the preview became it, was edited at most every 2 s, and ends with
        # the final counts.
        edits = [r for r in admin.chat_log() if r.kind == "edit_text" and r.message_id == preview.message_id]
        assert edits[0].plain_text == f"Broadcast #{broadcast_id} confirmed; preparing recipients…"
        assert edits[-1].plain_text == (
            f"Broadcast #{broadcast_id} finished: {sent} sent, {len(blocks)} blocked, 0 failed (of 2000)."
        )
        live = edits[1:-1]
        assert live, "no live progress was shown"
        assert all(
            e.plain_text is not None and e.plain_text.startswith(f"Broadcast #{broadcast_id}: ") for e in live
        )
        gaps = [b.time - a.time for a, b in itertools.pairwise(live)]
        assert all(gap >= 2.0 - 0.05 for gap in gaps), gaps

        # The rates, as Telegram would have measured them (refused calls included), over every
        # send after the confirm (before it, only the admin's own screens were sent).
        stamps = [s for s in h.emulator.send_stamps if s.time >= confirmed_at]
        assert all(s.chat_id != ADMIN for s in stamps)
        # (Starts are paced; on a loaded machine's real clock an arrival may lag its start by
        # milliseconds, hence 0.95 s windows for the global rate; per chat the pacing is exact.)
        assert max_in_window([s.time for s in stamps], 0.95) <= settings.rate
        by_chat: dict[int | str | None, list[float]] = {}
        for s in stamps:
            by_chat.setdefault(s.chat_id, []).append(s.time)
        assert max(max_in_window(times, 1.0) for times in by_chat.values()) <= settings.per_chat_rate
        assert h.emulator.served_429 == len(throttled)
        assert len(stamps) == len(segment) + len(throttled)  # each reachable once, plus the refused 429s
        assert broadcaster.materialized + other_broadcaster.materialized == len(segment)
        # Two processes, one writer: the standby's broadcaster never edited the progress message,
        # and its sender sent nothing (one bot, one rate).
        assert (other_sender.role, other_broadcaster.edits) == ("standby", 0)
        assert other_sender.delivery_statistics().sent == 0


# ---------------------------------------------------------------------------------------------
# The units on their own


async def test_materialize_is_keyset_paged_and_idempotent(db: Database) -> None:
    ids = list(range(1, 1201))
    await db.run(add_users, ids=[ADMIN], now=NOW)
    await db.run(add_users, ids=ids, now=NOW)
    await db.run(add_users, ids=[2001], now=NOW, paid=True)
    draft = await db.run(create_broadcast, admin_id=ADMIN, segment="never_paid", text="hi", now=NOW)
    assert await db.run(segment_size, segment="never_paid", now=NOW) == 1201  # the admin too
    # Not confirmed yet: the broadcaster must not touch it.
    step = await db.run(materialize_batch, broadcast_id=draft.id, now=NOW, limit=500)
    assert (step.examined, step.enqueued, step.state) == (0, 0, "draft")
    await db.run(
        confirm_broadcast,
        broadcast_id=draft.id,
        admin_id=ADMIN,
        progress_chat_id=ADMIN,
        progress_message_id=1,
        now=NOW,
    )
    with pytest.raises(BroadcastError) as refused:
        await db.run(
            confirm_broadcast,
            broadcast_id=draft.id,
            admin_id=ADMIN,
            progress_chat_id=ADMIN,
            progress_message_id=1,
            now=NOW,
        )
    assert refused.value.reason == "not_draft"
    steps = []
    while True:
        step = await db.run(materialize_batch, broadcast_id=draft.id, now=NOW, limit=500)
        steps.append((step.examined, step.enqueued, step.state))
        if step.finished:
            break
    assert steps == [(500, 500, "materializing"), (500, 500, "materializing"), (201, 201, "sending")]

    # A repeated batch (a crash after writing, before the cursor moved) writes nothing twice.
    async def rewind(tx: Tx) -> None:
        await tx.execute(
            "UPDATE broadcasts SET state = 'materializing', cursor_user_id = 0 WHERE id = $1", draft.id
        )

    await db.run(rewind)
    step = await db.run(materialize_batch, broadcast_id=draft.id, now=NOW, limit=5000)
    assert (step.examined, step.enqueued, step.finished) == (1201, 0, True)
    progress = await db.run(broadcast_progress, broadcast_id=draft.id)
    assert progress.pending == 1201  # the admin and 1200 users; the paid user is not in the segment


async def test_bad_broadcasts_are_refused_and_nothing_is_written(db: Database) -> None:
    await db.run(add_users, ids=[ADMIN], now=NOW)
    for segment, text, reason in (
        ("everyone", "hi", "unknown_segment"),
        ("all", "   ", "empty_text"),
        ("all", "x" * 4097, "text_too_long"),
    ):
        with pytest.raises(BroadcastError) as refused:
            await db.run(create_broadcast, admin_id=ADMIN, segment=segment, text=text, now=NOW)
        assert refused.value.reason == reason
    assert await db.run(_latest_broadcast) is None
