"""The outbox sender against the Bot API emulator (real aiogram Bot, real HTTP) and real PostgreSQL.

The emulator measures every send call (accepted or refused) on the trio clock, so the rate checks
below look at what Telegram would have seen, retries and refused calls included.
"""

from __future__ import annotations

import datetime as dt
import json
import random
import uuid
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import asynccontextmanager
from typing import Any

import pytest
import trio
from aiogram import Bot
from aiogram.exceptions import (
    TelegramBadRequest,
    TelegramForbiddenError,
    TelegramNetworkError,
    TelegramRetryAfter,
    TelegramServerError,
    TelegramUnauthorizedError,
)
from aiogram.methods import SendMessage

from atlas.actors.outbox.outcomes import Answer
from atlas.actors.outbox_sender import (
    OutboxSender,
    PayloadError,
    SenderSettings,
    SenderUnauthorized,
    classify,
    render,
)
from atlas.clock import Clock
from atlas.storage import Database, DatabaseUnavailable, Tx
from atlas.storage.units.delivery import (
    ClaimedMessage,
    Delivery,
    DeliveryStatus,
    broadcast_progress,
    claim_outbox,
    record_deliveries,
)
from atlas.supervision import Backoff, ChildContext
from atlas.telegram import make_bot
from atlas.telegram.i18n import Translator
from atlas.testing.botapi import BotApiEmulator

NOW = dt.datetime(2025, 1, 1, tzinfo=dt.UTC)
TRANSLATOR = Translator.from_toml(
    {
        "ru": '[notice]\nhello = "Привет, {name}! Ваш баланс: {amount}"',
        "en": '[notice]\nhello = "Hello, {name}! Your balance: {amount}"',
    }
)


def fast_settings(**overrides: Any) -> SenderSettings:
    options: dict[str, Any] = dict(
        rate=200.0,
        batch=100,
        max_in_flight=16,
        lease=30.0,
        send_timeout=5.0,
        retry=Backoff(initial=0.2, factor=2.0, maximum=1.0, jitter=0.0),
        poll_interval=0.1,
        tick_budget=10.0,
    )
    options.update(overrides)
    return SenderSettings(**options)


# ---------------------------------------------------------------------------------------------
# Seeding and reading


async def _add_users(tx: Tx, *, ids: list[int], languages: list[str], now: dt.datetime) -> None:
    await tx.execute(
        """
        INSERT INTO users (id, first_name, language, referral_code, created_at)
        SELECT id, 'U', lang, 'ref' || id, $3 FROM unnest($1::bigint[], $2::text[]) AS u(id, lang)
        """,
        ids,
        languages,
        now,
    )


async def _add_broadcast(tx: Tx, *, now: dt.datetime) -> int:
    return int(
        await tx.fetchval(
            "INSERT INTO broadcasts (created_by, segment, text, state, created_at) "
            "VALUES (1, 'all', 'x', 'sending', $1) RETURNING id",
            now,
        )
    )


async def _add_rows(
    tx: Tx, *, rows: list[tuple[int, str, dict[str, Any], str, int, int | None]], now: dt.datetime
) -> None:
    await tx.execute(
        """
        INSERT INTO outbox (chat_id, kind, payload, dedupe_key, priority, broadcast_id,
                            next_attempt_at, created_at)
        SELECT chat_id, kind, payload::jsonb, key, priority, broadcast_id, $7, $7
        FROM unnest($1::bigint[], $2::text[], $3::text[], $4::text[], $5::smallint[], $6::bigint[])
             AS r(chat_id, kind, payload, key, priority, broadcast_id)
        """,
        [r[0] for r in rows],
        [r[1] for r in rows],
        [json.dumps(r[2]) for r in rows],
        [r[3] for r in rows],
        [r[4] for r in rows],
        [r[5] for r in rows],
        now,
    )


async def _states(tx: Tx) -> dict[str, int]:
    rows = await tx.fetch("SELECT state, count(*) AS n FROM outbox GROUP BY state", bounded_by="5 states")
    return {row["state"]: int(row["n"]) for row in rows}


async def _rows(tx: Tx) -> list[dict[str, Any]]:
    rows = await tx.fetch(
        "SELECT id, chat_id, state, attempts, last_error, lease_owner FROM outbox ORDER BY id LIMIT 10000"
    )
    return [dict(row) for row in rows]


async def _blocked_users(tx: Tx) -> list[int]:
    rows = await tx.fetch("SELECT id FROM users WHERE bot_blocked_at IS NOT NULL ORDER BY id LIMIT 10000")
    return [int(row["id"]) for row in rows]


def broadcast_text(chat_id: int) -> str:
    return f"News for {chat_id}: <b>sale</b>"


def broadcast_payload(chat_id: int) -> dict[str, Any]:
    return {
        "text": broadcast_text(chat_id),
        "parse_mode": "HTML",
        "buttons": [
            [{"text": "Open", "callback_data": "menu"}, {"text": "Site", "url": "https://example.org/"}]
        ],
    }


@asynccontextmanager
async def emulated() -> AsyncIterator[tuple[BotApiEmulator, Bot, trio.Nursery]]:
    emulator = BotApiEmulator()
    async with trio.open_nursery() as nursery:
        base = await nursery.start(emulator.serve)
        bot = make_bot(emulator.token, base)
        try:
            yield emulator, bot, nursery
        finally:
            nursery.cancel_scope.cancel()
            with trio.CancelScope(shield=True):
                await bot.session.close()


async def until_no_pending(db: Database, within: float) -> None:
    """Wait (polling the table) until no outbox row is pending."""
    with trio.fail_after(within):
        while (await db.run(_states)).get("pending", 0):  # noqa: ASYNC110 - the table is the event
            await trio.sleep(0.2)


def sender_for(
    db: Callable[[], Any], bot: Bot, clock: Clock, settings: SenderSettings, seed: int
) -> OutboxSender:
    return OutboxSender(
        db=db, bot=bot, clock=clock, rng=random.Random(seed), settings=settings, translator=TRANSLATOR
    )


def accepted_texts(emulator: BotApiEmulator, chat_ids: Iterable[int]) -> dict[int, list[str]]:
    return {chat: [r.plain_text or "" for r in emulator.chat_log(chat)] for chat in chat_ids}


# ---------------------------------------------------------------------------------------------
# The broadcast under faults


@pytest.mark.slow
async def test_2000_messages_under_429_403_and_5xx_respect_the_limits(bridge: None, db: Database) -> None:
    ids = list(range(100_001, 102_001))
    blocked = set(ids[7::20])  # 100 users blocked the bot
    throttled = set(ids[3::20])  # 100 users answer 429 once
    flaky = set(ids[11::67]) - blocked - throttled - set(ids[:40])  # 26 users answer 502 twice
    refused = set(ids[213::400])  # 5 users answer 400
    noticed = ids[1:40:2]  # 20 users also get a personal notice (priority 0)
    assert len(flaky) == 26 and not refused & (blocked | throttled | flaky | set(noticed))

    languages = ["en" if i % 2 else "ru" for i in ids]
    await db.run(_add_users, ids=ids, languages=languages, now=NOW)
    broadcast = await db.run(_add_broadcast, now=NOW)
    rows = [(i, "broadcast", broadcast_payload(i), f"b{broadcast}:{i}", 1, broadcast) for i in ids]
    rows += [(i, "notice.hello", {"name": f"N{i}", "amount": "5 ₽"}, f"n:{i}", 0, None) for i in noticed]
    await db.run(_add_rows, rows=rows, now=NOW)

    async with emulated() as (emulator, bot, nursery):
        users = {i: emulator.add_user(i, f"U{i}") for i in ids}
        for i in blocked:
            users[i].block_bot()
        for i in throttled:
            emulator.inject("sendMessage", chat_id=i, error=429, retry_after=1)
        for i in flaky:
            emulator.inject("sendMessage", chat_id=i, error=502, count=2)
        for i in refused:
            emulator.inject("sendMessage", chat_id=i, error=400, description="Bad Request: chat not found")

        settings = fast_settings()
        sender = sender_for(lambda: db, bot, Clock(), settings, seed=1)
        await nursery.start(sender.run, ChildContext("root/workers/outbox_sender"))
        await until_no_pending(db, within=120)  # a bound against hangs, not a speed test

        # Every reachable user got exactly one copy of each message meant for them.
        logs = accepted_texts(emulator, ids)
        for i in ids:
            expected = (
                [] if i in blocked | refused else [broadcast_text(i).replace("<b>", "").replace("</b>", "")]
            )
            if i in noticed and i not in blocked | refused:
                greeting = "Hello" if languages[ids.index(i)] == "en" else "Привет"
                # Priority 0 first: the personal notice arrives before the broadcast copy.
                expected.insert(
                    0,
                    f"{greeting}, N{i}! "
                    + ("Your balance: 5 ₽" if greeting == "Hello" else "Ваш баланс: 5 ₽"),
                )
            assert logs[i] == expected, i
        record = emulator.chat_log(ids[0])[0]
        assert record.reply_markup == {
            "inline_keyboard": [
                [{"text": "Open", "callback_data": "menu"}, {"text": "Site", "url": "https://example.org/"}]
            ]
        }

        # Blocked users are marked, refused rows failed with Telegram's words, retries counted.
        assert set(await db.run(_blocked_users)) == blocked
        progress = await db.run(broadcast_progress, broadcast_id=broadcast)
        assert (progress.sent, progress.blocked, progress.failed, progress.pending) == (
            2000 - len(blocked) - len(refused),
            len(blocked),
            len(refused),
            0,
        )
        table = {row["chat_id"]: row for row in await db.run(_rows) if row["id"] <= 2000}
        assert {table[i]["last_error"] for i in refused} == {"Bad Request: chat not found"}
        assert {table[i]["attempts"] for i in flaky} == {2}  # two 502s, then delivered
        assert {table[i]["attempts"] for i in throttled} == {0}  # a 429 is not a failed attempt
        assert all(row["lease_owner"] is None for row in table.values())

        # The limits, as Telegram would have measured them (refused calls count too). The global
        # pacer spaces send *starts*; on the real clock of a loaded machine an arrival may lag its
        # start by some milliseconds, so the global check uses 0.95 s windows (the exact check is
        # the MockClock test in test_outbox_trust.py). Per chat the pacer counts from the answer:
        # exact here too.
        assert emulator.max_global_rate(window=0.95) <= settings.rate
        assert emulator.max_per_chat_rate() <= 1
        stats = sender.delivery_statistics()
        assert stats.throttled == len(throttled) and stats.global_pauses == 0
        assert stats.retried == 2 * len(flaky)
        assert emulator.served_429 == len(throttled)
        assert len(emulator.send_stamps) == 2020 + len(throttled) + 2 * len(flaky)  # nothing sent twice
        nursery.cancel_scope.cancel()


async def test_the_default_rate_binds_the_sender(bridge: None, db: Database) -> None:
    # 30/s is well below what this machine can push through the emulator, so here the pacer — not
    # the plumbing — sets the pace, and the measured peak must sit just under the limit.
    ids = list(range(200_001, 200_151))
    await db.run(_add_users, ids=ids, languages=["en"] * len(ids), now=NOW)
    await db.run(_add_rows, rows=[(i, "x", {"text": f"hi {i}"}, f"k{i}", 1, None) for i in ids], now=NOW)
    async with emulated() as (emulator, bot, nursery):
        for i in ids:
            emulator.add_user(i)
        settings = fast_settings(rate=30.0)
        await sender_for(lambda: db, bot, Clock(), settings, seed=3).drain()
        assert (await db.run(_states)) == {"sent": len(ids)}
        assert 25 <= emulator.max_global_rate(window=0.95) <= 30
        assert emulator.max_per_chat_rate() == 1
        nursery.cancel_scope.cancel()


# ---------------------------------------------------------------------------------------------
# Concurrency and crashes


async def test_two_senders_at_once_never_double_send(bridge: None, db: Database) -> None:
    ids = list(range(300_001, 300_301))
    await db.run(_add_users, ids=ids, languages=["en"] * len(ids), now=NOW)
    await db.run(
        _add_rows, rows=[(i, "x", {"text": f"only once {i}"}, f"k{i}", 1, None) for i in ids], now=NOW
    )
    async with emulated() as (emulator, bot, nursery):
        for i in ids:
            emulator.add_user(i)
        settings = fast_settings(batch=20)
        one = sender_for(lambda: db, bot, Clock(), settings, seed=1)
        two = sender_for(lambda: db, bot, Clock(), settings, seed=2)
        async with trio.open_nursery() as both:
            both.start_soon(one.drain)
            both.start_soon(two.drain)
        assert (await db.run(_states)) == {"sent": len(ids)}
        assert {i: len(emulator.chat_log(i)) for i in ids} == {i: 1 for i in ids}
        counts = (one.delivery_statistics().sent, two.delivery_statistics().sent)
        assert sum(counts) == len(ids) and min(counts) > 0, counts  # both worked, never on one row
        nursery.cancel_scope.cancel()


class DyingDatabase:
    """A Database whose result recording dies after ``healthy`` record calls (the crash)."""

    def __init__(self, db: Database, healthy: int) -> None:
        self._db = db
        self._healthy = healthy
        self.records = 0
        self.first_refused = 0  # results in the first write that failed

    async def run(self, unit: Any, /, **kwargs: Any) -> Any:
        if unit is record_deliveries:
            self.records += 1
            if self.records > self._healthy:
                self.first_refused = self.first_refused or len(kwargs["deliveries"])
                raise DatabaseUnavailable("connection lost (simulated)")
        return await self._db.run(unit, **kwargs)


async def test_a_crash_mid_batch_resends_at_most_the_messages_in_flight(bridge: None, db: Database) -> None:
    ids = list(range(400_001, 400_201))
    await db.run(_add_users, ids=ids, languages=["en"] * len(ids), now=NOW)
    await db.run(_add_rows, rows=[(i, "x", {"text": f"m{i}"}, f"k{i}", 1, None) for i in ids], now=NOW)
    async with emulated() as (emulator, bot, nursery):
        for i in ids:
            emulator.add_user(i)
        settings = fast_settings(batch=50, max_in_flight=8)
        dying = DyingDatabase(db, healthy=10)
        crashed = sender_for(lambda: dying, bot, Clock(), settings, seed=1)
        with pytest.raises(DatabaseUnavailable):
            await crashed.drain()
        table = await db.run(_rows)
        recorded = {row["chat_id"] for row in table if row["state"] == "sent"}
        delivered = {i for i in ids if emulator.chat_log(i)}
        in_flight = delivered - recorded
        # Unrecorded: the results of the write that failed (those that came in while the one
        # before ran) and the sends still in the air then; no send starts once a write failed.
        assert recorded <= delivered
        assert 0 < len(in_flight) <= dying.first_refused + settings.max_in_flight
        leased = {
            row["chat_id"] for row in table if row["state"] == "pending" and row["lease_owner"] is not None
        }
        assert in_flight <= leased  # still leased: nobody else takes them before the lease runs out

        # A new sender, after the lease has expired.
        later = Clock(anchor=dt.datetime.now(dt.UTC) + dt.timedelta(seconds=settings.lease + 1))
        await sender_for(lambda: db, bot, later, settings, seed=2).drain()
        assert (await db.run(_states)) == {"sent": len(ids)}
        copies = {i: len(emulator.chat_log(i)) for i in ids}
        assert {i for i, n in copies.items() if n == 2} == in_flight  # only those were repeated
        assert set(copies.values()) <= {1, 2}
        nursery.cancel_scope.cancel()


async def test_leases_records_and_progress_units(bridge: None, db: Database) -> None:
    await db.run(_add_users, ids=[1, 2], languages=["ru", "en"], now=NOW)
    broadcast = await db.run(_add_broadcast, now=NOW)
    await db.run(
        _add_rows,
        rows=[
            (1, "k", {"text": "a"}, "a", 1, broadcast),
            (2, "k", {"text": "b"}, "b", 1, broadcast),
            (2, "notice.hello", {"name": "x"}, "c", 0, None),
        ],
        now=NOW,
    )
    owner, other = uuid.uuid4(), uuid.uuid4()
    claimed = await db.run(
        claim_outbox, now=NOW, owner=owner, lease_until=NOW + dt.timedelta(seconds=60), limit=10
    )
    assert [(m.chat_id, m.priority, m.language) for m in claimed] == [
        (2, 0, "en"),
        (1, 1, "ru"),
        (2, 1, "en"),
    ]
    assert (
        await db.run(claim_outbox, now=NOW, owner=other, lease_until=NOW + dt.timedelta(seconds=60), limit=10)
        == []
    )

    first = claimed[1]
    summary = await db.run(
        record_deliveries, now=NOW, owner=other, deliveries=[Delivery(first.id, 1, DeliveryStatus.SENT)]
    )
    assert (summary.recorded, summary.not_owned) == (0, 1)  # not ours: nothing written
    later = NOW + dt.timedelta(seconds=5)
    summary = await db.run(
        record_deliveries,
        now=later,
        owner=owner,
        deliveries=[
            Delivery(first.id, 1, DeliveryStatus.BLOCKED, "Forbidden: bot was blocked by the user"),
            Delivery(claimed[2].id, 2, DeliveryStatus.RETRY, "502", later + dt.timedelta(seconds=10)),
        ],
    )
    assert (summary.recorded, summary.not_owned, summary.users_marked_blocked) == (2, 0, 1)
    progress = await db.run(broadcast_progress, broadcast_id=broadcast)
    assert (progress.pending, progress.blocked, progress.total, progress.done) == (1, 1, 2, False)

    # The unrecorded notice is leased until NOW+60; the retried row is due at later+10.
    assert (
        await db.run(
            claim_outbox, now=later, owner=other, lease_until=later + dt.timedelta(seconds=60), limit=10
        )
        == []
    )
    expired = NOW + dt.timedelta(seconds=61)
    again = await db.run(
        claim_outbox, now=expired, owner=other, lease_until=expired + dt.timedelta(seconds=60), limit=10
    )
    assert [m.id for m in again] == [claimed[0].id, claimed[2].id] and again[1].attempts == 1

    with pytest.raises(ValueError, match="lease_until"):
        await db.run(claim_outbox, now=NOW, owner=owner, lease_until=NOW, limit=1)
    with pytest.raises(ValueError, match="next_attempt_at"):
        Delivery(1, 1, DeliveryStatus.RETRY)


# ---------------------------------------------------------------------------------------------
# Payloads and the error map (no I/O)


def message(payload: dict[str, Any], kind: str = "x", language: str | None = "en") -> ClaimedMessage:
    return ClaimedMessage(1, 1, kind, payload, 1, None, 0, NOW, language)


def test_render_literal_and_template_payloads() -> None:
    text, mode, markup = render(
        message(
            {"text": "<b>hi</b>", "parse_mode": "HTML", "buttons": [[{"text": "Go", "url": "https://x.y/"}]]}
        ),
        TRANSLATOR,
    )
    assert (text, mode) == ("<b>hi</b>", "HTML") and markup is not None
    assert markup.inline_keyboard[0][0].url == "https://x.y/"
    assert render(message({"text": "plain"}), TRANSLATOR) == ("plain", None, None)
    text, mode, _ = render(message({"name": "<Ann>", "amount": 3}, "notice.hello", "ru"), TRANSLATOR)
    assert (text, mode) == ("Привет, &lt;Ann&gt;! Ваш баланс: 3", "HTML")
    assert render(message({"name": "A", "amount": 3}, "notice.hello", None), TRANSLATOR)[0].startswith(
        "Привет"
    )


@pytest.mark.parametrize(
    ("payload", "kind", "fragment"),
    [
        ({"text": ""}, "x", "payload.text"),
        ({"text": "x" * 4097}, "x", "4097 characters"),
        ({"text": "x", "parse_mode": "BBCode"}, "x", "payload.parse_mode"),
        ({"text": "x", "buttons": [[{"text": "a"}]]}, "x", "payload.buttons[0][0]"),
        ({"text": "x", "buttons": [[{"text": "a", "url": "u", "callback_data": "c"}]]}, "x", "exactly one"),
        ({"text": "x", "buttons": "nope"}, "x", "payload.buttons"),
        ({"name": "a"}, "notice.hello", "'amount'"),
        ({}, "no.such.key", "no.such.key"),
        ({"__invalid__": [1]}, "x", "JSON object"),
    ],
)
def test_bad_payloads_fail_with_the_reason(payload: dict[str, Any], kind: str, fragment: str) -> None:
    with pytest.raises(PayloadError) as caught:
        render(message(payload, kind), TRANSLATOR)
    assert fragment in str(caught.value)


def test_classify_maps_aiogram_errors_by_cause() -> None:
    method = SendMessage(chat_id=1, text="x")
    throttled = classify(TelegramRetryAfter(method, "Too Many Requests", 3))
    assert (throttled.answer, throttled.retry_after) == (Answer.THROTTLED, 3.0)
    assert classify(TelegramForbiddenError(method, "Forbidden")).answer is Answer.BLOCKED
    assert classify(TelegramServerError(method, "Bad Gateway")).answer is Answer.SERVER_ERROR
    assert classify(TelegramNetworkError(method, "reset")).answer is Answer.NO_ANSWER
    assert classify(trio.TooSlowError()).answer is Answer.NO_ANSWER
    assert classify(TelegramBadRequest(method, "chat not found")).answer is Answer.REFUSED
    with pytest.raises(SenderUnauthorized):
        classify(TelegramUnauthorizedError(method, "Unauthorized"))
    with pytest.raises(KeyError):
        classify(KeyError("a bug is not a verdict"))


def test_settings_are_validated_by_field() -> None:
    with pytest.raises(ValueError, match="rate"):
        SenderSettings(rate=0)
    with pytest.raises(ValueError, match="batch"):
        SenderSettings(batch=0)
    with pytest.raises(ValueError, match="lease"):
        SenderSettings(lease=10, send_timeout=20)
