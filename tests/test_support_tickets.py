"""Support tickets end to end: scripted users and agents talk to the real aiogram Bot over HTTP
through the Bot API emulator (the support chat is an emulated supergroup with the bot's privacy
mode on, as on Telegram), the bot's whole router list runs in the real dispatcher (polling intake),
the outbox sender delivers agents' replies, and everything is stored in a real PostgreSQL.

What is shown: the round trip user → support chat → agent's reply → user, and /close; unknown text
→ "Send this to support?" → a ticket; a forged reply from another chat changes nothing; a
redelivered reply is stored and sent once; the per-user rate limit; the admin list (open tickets
newest first, keyset pages, a ticket's messages, ways back); Help without a support chat promises
nothing; a ticket survives a restart of the bot (a reply after the restart still finds its user).
"""

from __future__ import annotations

import copy
import datetime as dt
import random
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from typing import Any

import pytest
import trio
from aiogram import Bot

from atlas.actors.outbox_sender import OutboxSender, SenderSettings
from atlas.clock import Clock
from atlas.runtime.telegram_tree import build_routers
from atlas.storage import Database, Tx
from atlas.storage.units.support import Refusal, SupportRefused, add_user_message
from atlas.supervision import ChildContext, CrashReporter, RingSink
from atlas.telegram import (
    DispatchSettings,
    PollingIntake,
    PollingSettings,
    UpdateDispatcher,
    build_dispatcher,
    make_bot,
)
from atlas.telegram.config import BotConfig
from atlas.telegram.i18n import t
from atlas.telegram.routers.admin_ops import MaintenanceGate
from atlas.testing.botapi import BotApiEmulator, ChatRecord, EmulatedGroup, EmulatedUser
from atlas.testing.botapi._core import PendingCallback
from tests._running_tree import running_tree
from tests._vpn_support import free_ports

NOW = dt.datetime(2026, 12, 1, 12, 0, tzinfo=dt.UTC)
SUPPORT_CHAT = -1001234567890
OTHER_GROUP = -1009999999999
ADMIN = 7_000_001
BOT_USERNAME = "atlas_emulated_bot"
FAST = PollingSettings(timeout=1, standby_retry=0.05, lock_check_every=5.0)
SENDER = SenderSettings(poll_interval=0.2, elected=False)
WITH_SUPPORT = BotConfig(
    currency="RUB",
    public_base_url="https://vpn.example.com",
    bot_username=BOT_USERNAME,
    support_chat_id=SUPPORT_CHAT,
)


def en(key: str, **params: object) -> str:
    """An English text as the user sees it (no tags)."""
    return re.sub(r"<[^>]+>", "", t("en", key, **params))


def texts(records: list[ChatRecord]) -> str:
    """Everything a chat saw, as one string."""
    return "\n".join(r.plain_text or "" for r in records)


@dataclass
class World:
    """What outlives a restart of the bot: Telegram (the emulator) and the database."""

    emulator: BotApiEmulator
    support: EmulatedGroup
    agent: EmulatedUser
    db: Database


@dataclass
class Process:
    """One running bot: dispatcher, polling intake and outbox sender."""

    world: World
    dispatch: UpdateDispatcher
    reports: RingSink

    async def settle(self) -> None:
        """Wait until every queued update was fetched and handled."""
        with trio.fail_after(20):
            await self.world.emulator.wait_until_delivered(within=20)
            await self.dispatch.join()

    async def step(self, user: EmulatedUser, action: str, arg: str) -> list[ChatRecord]:
        """``user`` types (``text``/``command``) or presses (``press``); return what came back at once."""
        user.skip_received()
        before = len(user.chat_log())
        if action == "text":
            user.send_text(arg)
        elif action == "command":
            user.send_command(arg)
        elif action == "press":
            user.press(arg)
        else:
            raise AssertionError(action)
        await self.settle()
        return user.chat_log()[before:]


@asynccontextmanager
async def world(db: Database) -> AsyncIterator[World]:
    emulator = BotApiEmulator(bot_username=BOT_USERNAME)
    async with trio.open_nursery() as nursery:
        await nursery.start(emulator.serve)
        agent = emulator.add_user(8_000_001, "Ann", last_name="Agent", language_code="en")
        support = emulator.add_group(SUPPORT_CHAT, "Atlas support", creator=agent)
        try:
            yield World(emulator, support, agent, db)
        finally:
            nursery.cancel_scope.cancel()


@asynccontextmanager
async def bot_process(w: World, config: BotConfig = WITH_SUPPORT) -> AsyncIterator[Process]:
    """The bot as ``atlas run`` wires it (every router, in order), against ``w``."""
    reports = RingSink()
    clock = Clock(NOW)
    async with trio.open_nursery() as nursery:
        bot: Bot = make_bot(w.emulator.token, w.emulator.url)
        root = build_dispatcher(
            build_routers(),
            db=w.db,
            clock=clock,
            config=config,
            admin_ids=frozenset({ADMIN}),
            maintenance=MaintenanceGate(w.db, ttl=0.2),
        )
        dispatch = UpdateDispatcher(
            dispatcher=root,
            bot=bot,
            reporter=CrashReporter([reports], now=lambda: dt.datetime.now(dt.UTC)),
            settings=DispatchSettings(handler_timeout=30),
        )
        await nursery.start(dispatch.run)
        await nursery.start(PollingIntake(bot=bot, dispatcher=dispatch, settings=FAST).run)
        sender = OutboxSender(db=lambda: w.db, bot=bot, clock=clock, rng=random.Random(1), settings=SENDER)
        await nursery.start(sender.run, ChildContext("root/workers/outbox_sender"))
        try:
            yield Process(w, dispatch, reports)
            assert dispatch.failed == 0, [r.message for r in reports.latest()]
        finally:
            nursery.cancel_scope.cancel()
            with trio.CancelScope(shield=True):
                await bot.session.close()


async def rows(db: Database, query: str, *args: Any) -> list[dict[str, Any]]:
    async def unit(tx: Tx) -> list[dict[str, Any]]:
        return [dict(r) for r in await tx.fetch(query, *args, bounded_by="a test's few rows")]

    return await db.run(unit)


async def notice_of(w: World) -> ChatRecord:
    """The next notice the bot posted in the support chat."""
    return await w.support.next_message(within=20)


async def write_to_support(p: Process, user: EmulatedUser, text: str) -> list[ChatRecord]:
    """The "Write to support" path from the main menu."""
    await p.step(user, "command", "/menu")
    seen = await p.step(user, "press", en("support.button.write"))
    assert en("support.user.ask") in texts(seen)
    return await p.step(user, "text", text)


# ---------------------------------------------------------------------------------------------


async def test_round_trip_user_support_chat_agent_reply_user_and_close(db: Database) -> None:
    async with world(db) as w, bot_process(w) as p:
        alice = w.emulator.add_user(5001, "Alice", username="alice", language_code="en")
        seen = await p.step(alice, "command", "/start")
        assert en("support.button.write") in seen[-1].button_texts()  # the main menu offers it

        seen = await write_to_support(p, alice, "My key stopped working <b>today</b>")
        assert en("support.user.sent_new", ticket=1) in texts(seen)

        # The support chat got a notice: who (name, @username, id, language), which ticket, the text.
        notice = await notice_of(w)
        assert notice.chat_id == SUPPORT_CHAT
        body = notice.plain_text or ""
        for part in ("Ticket #1", "Alice", "@alice", "5001", "en", "My key stopped working <b>today</b>"):
            assert part in body, part

        # An agent replies to the notice: the user gets it through the outbox; the agent a confirmation.
        alice.skip_received()
        reply_id = w.support.post(
            w.agent, "Please press “New key” and import again.", reply_to=notice.message_id
        )
        answer = await alice.next_message(within=20)
        assert answer.plain_text == en(
            "support.notice.reply", ticket=1, message="Please press “New key” and import again."
        )
        assert en("support.chat.delivered", ticket=1) in (await notice_of(w)).plain_text  # type: ignore[operator]
        stored = await rows(
            db, "SELECT author, author_id, author_name, text FROM ticket_messages ORDER BY id"
        )
        assert stored == [
            {"author": "user", "author_id": 5001, "author_name": "Alice",
             "text": "My key stopped working <b>today</b>"},
            {"author": "agent", "author_id": w.agent.id, "author_name": "Ann Agent",
             "text": "Please press “New key” and import again."},
        ]  # fmt: skip
        outbox = await rows(db, "SELECT chat_id, kind FROM outbox ORDER BY id")
        assert outbox == [{"chat_id": 5001, "kind": "support.notice.reply"}]

        # Telegram redelivers the agent's update (a restart before the offset was confirmed):
        # nothing is stored or sent twice.
        replayed = copy.deepcopy(w.support.message(reply_id))
        replayed["reply_to_message"] = w.support.message(notice.message_id)
        w.emulator.enqueue_update("message", replayed)
        await p.settle()
        assert len(await rows(db, "SELECT id FROM ticket_messages")) == 2
        assert len(await rows(db, "SELECT id FROM outbox")) == 1

        # A second message joins the open ticket; /close (a reply) closes it and tells the user.
        seen = await write_to_support(p, alice, "Thanks, it works now")
        assert en("support.user.sent", ticket=1) in texts(seen)
        second = await notice_of(w)
        assert "Ticket #1" in (second.plain_text or "") and "Thanks, it works now" in (
            second.plain_text or ""
        )
        alice.skip_received()
        w.support.post(w.agent, "/close", reply_to=second.message_id)
        assert (await alice.next_message(within=20)).plain_text == en("support.notice.closed", ticket=1)
        assert en("support.chat.closed", ticket=1) in ((await notice_of(w)).plain_text or "")
        assert await rows(db, "SELECT status, closed_by FROM tickets") == [
            {"status": "closed", "closed_by": w.agent.id}
        ]

        # A reply to a closed ticket reaches nobody, and the agent is told so.
        w.support.post(w.agent, "One more thing", reply_to=notice.message_id)
        assert en("support.chat.closed_ticket", ticket=1) in ((await notice_of(w)).plain_text or "")
        await p.settle()
        assert [r["kind"] for r in await rows(db, "SELECT kind FROM outbox ORDER BY id")] == [
            "support.notice.reply",
            "support.notice.closed",
        ]

        # The next message opens a new ticket.
        seen = await write_to_support(p, alice, "Hello again")
        assert en("support.user.sent_new", ticket=2) in texts(seen)
        # Agents' own talk in the support chat (privacy mode off here, so the bot sees it) is left alone.
        w.support.privacy = False
        before = len(w.support.chat_log())
        w.support.post(w.agent, "lunch?")
        await p.settle()
        assert len(w.support.chat_log()) == before  # no answer in the group


def showing(user: EmulatedUser) -> list[ChatRecord]:
    """What the chat shows now, message by message: each message's latest version, deleted ones gone."""
    latest: dict[int, ChatRecord] = {}
    for record in user.chat_log():
        if record.kind == "delete":
            latest.pop(record.message_id, None)
        elif record.kind == "edit_markup" and record.message_id in latest:
            latest[record.message_id] = replace(latest[record.message_id], reply_markup=record.reply_markup)
        else:
            latest[record.message_id] = record
    return [latest[message_id] for message_id in sorted(latest)]


async def test_unknown_text_asks_then_opens_a_ticket(db: Database) -> None:
    async with world(db) as w, bot_process(w) as p:
        bob = w.emulator.add_user(5002, "Bob", language_code="en")
        await p.step(bob, "command", "/start")

        seen = await p.step(bob, "text", "hello, I need help")
        assert texts(seen) == en("support.user.confirm")
        assert seen[-1].button_texts() == [en("support.button.send"), en("support.button.discard")]
        assert await rows(db, "SELECT id FROM tickets") == []  # nothing without the user's yes

        seen = await p.step(bob, "press", en("support.button.send"))
        assert en("support.user.sent_new", ticket=1) in texts(seen)
        assert "hello, I need help" in ((await notice_of(w)).plain_text or "")

        # A pressed prompt becomes its answer in place: its buttons are gone.
        assert en("support.user.confirm") not in [r.plain_text for r in showing(bob)]
        # "No" sends nothing; a stale "Yes" (an older prompt, left above a newer one) sends nothing either.
        seen = await p.step(bob, "text", "asdf")
        assert texts(seen) == en("support.user.confirm")
        seen = await p.step(bob, "text", "qwer")
        assert texts(seen) == en("support.user.confirm")
        seen = await p.step(bob, "press", en("support.button.discard"))
        assert en("support.user.cancelled") in texts(seen)
        prompts = [r for r in showing(bob) if r.plain_text == en("support.user.confirm")]
        assert len(prompts) == 1, "the discarded prompt was edited in place, the older one stays"
        first_prompt = prompts[0]
        bob.skip_received()
        bob.press(first_prompt.inline_buttons()[0]["callback_data"])
        await p.settle()
        assert en("support.user.expired") in texts(bob.chat_log()[-1:])
        assert [r["text"] for r in await rows(db, "SELECT text FROM ticket_messages")] == [
            "hello, I need help"
        ]

        # A command is never taken for a message to support.
        seen = await p.step(bob, "command", "/nosuchcommand")
        assert en("user.fallback.unknown") in texts(seen)


async def test_a_forged_reply_from_another_chat_changes_nothing(db: Database) -> None:
    async with world(db) as w, bot_process(w) as p:
        carol = w.emulator.add_user(5003, "Carol", language_code="en")
        mallory = w.emulator.add_user(6666, "Mallory", language_code="en")
        await p.step(carol, "command", "/start")
        await write_to_support(p, carol, "Where is my key?")
        notice = await notice_of(w)
        before_messages = await rows(db, "SELECT id FROM ticket_messages")
        carol_saw = len(carol.chat_log())
        carol.skip_received()

        # Mallory copies the notice into updates of her own chats, as a "reply" to it: from another
        # group, and from her private chat. Telegram sets message.chat; only the support chat counts.
        original = w.support.message(notice.message_id)
        other = w.emulator.add_group(OTHER_GROUP, "Elsewhere", creator=mallory)
        for chat in (other, None):
            forged_chat = (
                {"id": OTHER_GROUP, "type": "supergroup", "title": "Elsewhere"}
                if chat is not None
                else {"id": mallory.id, "type": "private", "first_name": "Mallory"}
            )
            w.emulator.enqueue_update(
                "message",
                {
                    "message_id": 900 if chat is not None else 901,
                    "from": mallory.as_json(),
                    "chat": forged_chat,
                    "date": int(NOW.timestamp()),
                    "text": "Your account is closed, pay me at evil.example",
                    "reply_to_message": original,
                },
            )
            await p.settle()
        w.emulator.enqueue_update(
            "message",
            {
                "message_id": 902,
                "from": mallory.as_json(),
                "chat": {"id": OTHER_GROUP, "type": "supergroup", "title": "Elsewhere"},
                "date": int(NOW.timestamp()),
                "text": "/close",
                "entities": [{"type": "bot_command", "offset": 0, "length": 6}],
                "reply_to_message": original,
            },
        )
        await p.settle()

        assert await rows(db, "SELECT id FROM ticket_messages") == before_messages
        assert await rows(db, "SELECT status FROM tickets") == [{"status": "open"}]
        assert await rows(db, "SELECT id FROM outbox") == []
        with trio.move_on_after(1.0):  # the sender polls every 0.2 s: nothing may arrive
            await carol.next_message(within=5)
            raise AssertionError("Carol got a message from a forged reply")
        assert len(carol.chat_log()) == carol_saw
        assert other.chat_log() == []  # the bot never answers in a group that is not the support chat


async def test_messages_to_support_are_rate_limited_per_user(db: Database) -> None:
    async with world(db) as w, bot_process(w, replace(WITH_SUPPORT, support_per_hour=2)) as p:
        dave = w.emulator.add_user(5004, "Dave", language_code="en")
        erin = w.emulator.add_user(5005, "Erin", language_code="en")
        for user in (dave, erin):
            await p.step(user, "command", "/start")
        for n in range(2):
            seen = await write_to_support(p, dave, f"message {n}")
            assert "ticket" in texts(seen).lower()
        seen = await write_to_support(p, dave, "message 3")
        assert en("support.refused.too_many", limit=2) in texts(seen)
        seen = await write_to_support(p, erin, "I am someone else")  # the limit is per user
        assert en("support.user.sent_new", ticket=2) in texts(seen)
        notices = [r for r in w.support.chat_log() if r.kind == "message"]
        assert ["message 0" in texts([notices[0]]), "message 1" in texts([notices[1]])] == [True, True]
        assert len(notices) == 3 and "I am someone else" in texts([notices[2]])


async def test_admin_lists_open_tickets_newest_first_page_by_page(db: Database) -> None:
    async with world(db) as w, bot_process(w) as p:
        admin = w.emulator.add_user(ADMIN, "Boss", language_code="en")
        users = [w.emulator.add_user(5100 + i, f"User{i}", language_code="en") for i in range(12)]
        for user in users:
            await p.step(user, "command", "/start")
            await write_to_support(p, user, f"question from {user.first_name}")
        assert len([r for r in w.support.chat_log() if r.kind == "message"]) == 12
        # Ticket #3 gets an answer; ticket #4 is closed and leaves the list.
        notices = [r for r in w.support.chat_log() if r.kind == "message"]
        w.support.post(w.agent, "Fixed for you", reply_to=notices[2].message_id)
        await p.settle()
        w.support.post(w.agent, "/close", reply_to=notices[3].message_id)
        await p.settle()

        seen = await p.step(admin, "command", "/tickets")
        page = seen[-1]
        assert en("support.admin.title") in (page.plain_text or "")
        labels = page.button_texts()
        assert [label.split(" · ")[0] for label in labels[:10]] == [
            f"#{n}" for n in (12, 11, 10, 9, 8, 7, 6, 5, 3, 2)
        ]
        assert labels[10:] == [en("support.admin.next"), en("support.admin.back_menu")]

        seen = await p.step(admin, "press", en("support.admin.next"))
        assert [label.split(" · ")[0] for label in seen[-1].button_texts()] == [
            "#1",
            en("support.admin.back_menu"),
        ]

        seen = await p.step(admin, "press", next(b for b in seen[-1].button_texts() if b.startswith("#1 ")))
        screen = texts(seen)
        assert "Ticket #1" in screen and "question from User0" in screen and "5100" in screen
        seen = await p.step(admin, "press", en("support.admin.back_list"))
        assert en("support.admin.title") in texts(seen)

        # From the admin menu too; a ticket shows the agent's reply, by name.
        await p.step(admin, "command", "/admin")
        seen = await p.step(admin, "press", en("support.admin.menu"))
        assert en("support.admin.title") in texts(seen)
        seen = await p.step(admin, "press", "adk:3")
        answered = texts(seen)
        assert "Ticket #3 · open" in answered and "question from User2" in answered
        assert "Ann Agent" in answered and "Fixed for you" in answered
        assert answered.index("question from User2") < answered.index("Fixed for you")  # oldest first
        seen = await p.step(admin, "press", en("support.admin.back_list"))
        seen = await p.step(admin, "press", en("support.admin.back_menu"))
        assert en("admin.menu.title") in texts(seen)

        # Nobody else sees any of it: /tickets from a user is an unknown text.
        seen = await p.step(users[0], "command", "/tickets")
        assert "Ticket" not in texts(seen) and en("user.fallback.unknown") in texts(seen)


async def test_help_without_a_support_chat_promises_nothing(db: Database) -> None:
    bare = replace(WITH_SUPPORT, support_chat_id=None, support=None)
    async with world(db) as w, bot_process(w, bare) as p:
        frank = w.emulator.add_user(5006, "Frank", language_code="en")
        seen = await p.step(frank, "command", "/start")
        assert en("support.button.write") not in seen[-1].button_texts()
        seen = await p.step(frank, "command", "/help")
        screen = texts(seen)
        assert "support" not in screen.lower() and "reply here" not in screen.lower()
        assert seen[-1].button_texts() == [en("user.button.menu")]
        seen = await p.step(frank, "text", "hello, I need help")
        assert texts(seen) == en("user.fallback.unknown")  # the existing hint, no offer
        assert en("support.button.write") not in seen[-1].button_texts()
        assert await rows(db, "SELECT id FROM tickets") == []
        assert w.support.chat_log() == []

    with_url = replace(bare, support="https://t.me/atlas_help")
    async with world(db) as w, bot_process(w, with_url) as p:
        grace = w.emulator.add_user(5007, "Grace", language_code="en")
        seen = await p.step(grace, "command", "/help")
        assert en("support.help.url", url="https://t.me/atlas_help") in texts(seen)
        assert en("support.button.write") not in seen[-1].button_texts()

    async with world(db) as w, bot_process(w) as p:
        heidi = w.emulator.add_user(5008, "Heidi", language_code="ru")
        seen = await p.step(heidi, "command", "/help")
        assert re.sub(r"<[^>]+>", "", t("ru", "support.help.chat")) in texts(seen)
        assert seen[-1].button_texts()[0] == t("ru", "support.button.write")


async def test_a_ticket_survives_a_restart_of_the_bot(db: Database) -> None:
    async with world(db) as w:
        ivan = w.emulator.add_user(5009, "Ivan", language_code="en")
        async with bot_process(w) as p:
            await p.step(ivan, "command", "/start")
            await write_to_support(p, ivan, "Before the restart")
            notice = await notice_of(w)
        # The process is gone; an agent answers meanwhile (Telegram keeps the update).
        ivan.skip_received()
        w.support.post(w.agent, "Answered after a restart", reply_to=notice.message_id)
        async with bot_process(w) as p:
            got = await ivan.next_message(within=20)
            assert got.plain_text == en("support.notice.reply", ticket=1, message="Answered after a restart")
            assert en("support.chat.delivered", ticket=1) in ((await notice_of(w)).plain_text or "")
            await write_to_support(p, ivan, "And after it")
            assert "Ticket #1" in ((await notice_of(w)).plain_text or "")
        assert await rows(db, "SELECT author, text FROM ticket_messages ORDER BY id") == [
            {"author": "user", "text": "Before the restart"},
            {"author": "agent", "text": "Answered after a restart"},
            {"author": "user", "text": "And after it"},
        ]


@pytest.mark.parametrize(
    ("text", "reason"),
    [("", Refusal.EMPTY), ("   ", Refusal.EMPTY), ("a\x00b", Refusal.UNSTORABLE),
     ("\ud800", Refusal.UNSTORABLE), ("x" * 3501, Refusal.TOO_LONG)],
)  # fmt: skip
async def test_a_message_that_cannot_be_stored_is_refused_and_nothing_is_stored(
    db: Database, text: str, reason: Refusal
) -> None:
    async def register(tx: Tx) -> None:
        await tx.execute(
            "INSERT INTO users (id, first_name, language, referral_code, created_at) "
            "VALUES (5010, 'Judy', 'en', 'ref5010', $1)",
            NOW,
        )

    await db.run(register)
    with pytest.raises(SupportRefused) as refused:
        await db.run(add_user_message, user_id=5010, text=text, now=NOW, per_hour=None)
    assert refused.value.reason is reason
    assert await rows(db, "SELECT id FROM tickets") == []


async def test_the_close_button_works_in_the_support_chat_only(db: Database) -> None:
    async with world(db) as w, bot_process(w) as p:
        kate = w.emulator.add_user(5011, "Kate", language_code="en")
        mallory = w.emulator.add_user(6667, "Mallory", language_code="en")
        for user in (kate, mallory):
            await p.step(user, "command", "/start")
        await write_to_support(p, kate, "Please close me")
        notice = await notice_of(w)
        assert notice.button_texts() == [en("support.chat.close_button")]
        data = notice.inline_buttons()[0]["callback_data"]

        # The same callback data pressed on a message of Mallory's own chat: an outdated button.
        menu = next(r for r in reversed(mallory.chat_log()) if r.kind == "message")
        forged = w.emulator._core.new_id("CBQ")
        w.emulator._core.callbacks[forged] = PendingCallback(forged, mallory.id, data)
        w.emulator.enqueue_update(
            "callback_query",
            {
                "id": forged,
                "from": mallory.as_json(),
                "message": w.emulator._core.chats[mallory.id].messages[menu.message_id],
                "chat_instance": f"ci{mallory.id}",
                "data": data,
            },
        )
        await p.settle()
        assert (await mallory.callback_answer(forged)).text == en("errors.button_expired")
        assert await rows(db, "SELECT status FROM tickets") == [{"status": "open"}]

        # An agent presses it: closed, the user told, the group told; a second press changes nothing.
        kate.skip_received()
        w.support.skip_received()
        first = w.support.press(w.agent, en("support.chat.close_button"))
        assert (await kate.next_message(within=20)).plain_text == en("support.notice.closed", ticket=1)
        assert (await notice_of(w)).plain_text == en("support.chat.closed", ticket=1)
        assert (await w.agent.callback_answer(first)).text is None
        again = w.support.press(w.agent, en("support.chat.close_button"))
        assert (await w.agent.callback_answer(again)).text == en("support.chat.already_closed", ticket=1)
        assert await rows(db, "SELECT status, closed_by FROM tickets") == [
            {"status": "closed", "closed_by": w.agent.id}
        ]
        await p.settle()
        assert [r["kind"] for r in await rows(db, "SELECT kind FROM outbox")] == ["support.notice.closed"]


async def test_a_notice_the_support_chat_refuses_leaves_the_message_stored_and_listed(db: Database) -> None:
    async with world(db) as w, bot_process(w) as p:
        admin = w.emulator.add_user(ADMIN, "Boss", language_code="en")
        leo = w.emulator.add_user(5012, "Leo", language_code="en")
        await p.step(leo, "command", "/start")
        w.emulator.inject("sendMessage", chat_id=SUPPORT_CHAT, error=403, description="Forbidden: kicked")
        seen = await write_to_support(p, leo, "Is anybody there?")
        assert en("support.user.saved", ticket=1) in texts(seen)  # not "sent": nobody has seen it yet
        assert en("support.user.sent_new", ticket=1) not in texts(seen)
        assert await rows(db, "SELECT text, support_message_id FROM ticket_messages") == [
            {"text": "Is anybody there?", "support_message_id": None}
        ]
        seen = await p.step(admin, "command", "/tickets")
        assert seen[-1].button_texts()[0].startswith("#1 · Leo")


async def test_atlas_run_with_the_setting_behind_a_webhook_with_two_processes(
    bridge: None, fresh_database: str
) -> None:
    """The whole ``atlas run`` tree configured by ``ATLAS_SUPPORT_CHAT_ID``, two processes behind a
    webhook: the "Send this to support?" prompt is answered on the other process (the kept text is
    in PostgreSQL), and the agent's reply reaches the user through the tree's own outbox sender."""
    emulator = BotApiEmulator(bot_username="atlas_support_bot")
    secret = "support_hook_secret"
    one_port, two_port = free_ports(2)
    urls = [f"http://127.0.0.1:{port}/webhooks/telegram" for port in (one_port, two_port)]
    async with trio.open_nursery() as nursery:
        api = await nursery.start(emulator.serve)
        agent = emulator.add_user(8_000_002, "Sam", language_code="en")
        support = emulator.add_group(SUPPORT_CHAT, "Support", creator=agent)
        common = {"emulator": emulator, "emulator_url": api, "support_chat_id": SUPPORT_CHAT,
                  "telegram_webhook_secret": secret}  # fmt: skip
        async with (
            running_tree(fresh_database, http_port=one_port, telegram_webhook_url=urls[0], seed=8, **common),
            running_tree(fresh_database, http_port=two_port, telegram_webhook_url=urls[1], seed=9, **common),
        ):
            uma = emulator.add_user(5020, "Uma", language_code="en")
            emulator.route_webhook_to(urls[0])
            uma.send_text("hello, I need help")
            prompt = await uma.next_message(within=30)
            emulator.route_webhook_to(urls[1])  # the "yes" lands on the other process
            uma.press(en("support.button.send"))
            sent = await uma.next_record(within=30)  # the prompt, edited in place into the answer
            notice = await support.next_message(within=30)
            support.post(agent, "We are on it", reply_to=notice.message_id)
            reply = await uma.next_message(within=30)
            delivered_to = {attempt.url for attempt in emulator.webhook_attempts if attempt.status == 200}
        nursery.cancel_scope.cancel()

    assert prompt.plain_text == en("support.user.confirm")
    assert (sent.kind, sent.message_id) == ("edit_text", prompt.message_id)
    assert sent.plain_text == en("support.user.sent_new", ticket=1)
    assert "hello, I need help" in (notice.plain_text or "") and "5020" in (notice.plain_text or "")
    assert reply.plain_text == en("support.notice.reply", ticket=1, message="We are on it")
    assert delivered_to == set(urls)
