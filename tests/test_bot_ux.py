"""A bot that feels native in Telegram (issue 14, item 1), through the Bot API emulator with the real
aiogram Bot over HTTP, the real routers in the real dispatcher, and a real PostgreSQL.

What is shown:

* a full walk of every user screen and every admin screen, in Russian and in English, where each
  navigation press *edits* the message it was on (the emulator's ``editMessageText`` count grows
  by one per press, ``sendMessage`` not at all); a photo screen replaces a text one (delete + send);
* no text of the walk — nor any outbox notice kind, rendered from the payload its unit writes —
  holds an ISO timestamp or a raw minor amount; the formats are CLDR's per language;
* ``setMyCommands`` per language, the default list, and an extended list for each admin chat;
* an admin's texts (the broadcast report too) follow the admin's Telegram language even without a
  user row;
* an admin's balance change or granted days reach the user as a notice, in the user's language;
* a promo code's terms show before payment (a 7-day code: 37 days), and the plan list shows the
  Stars price beside the balance price;
* an underpaid Stars charge is refunded at once, with a notice, and the record keeps why.
"""

from __future__ import annotations

import datetime as dt
import json
import random
import re
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass

import trio
from aiogram import Bot

from atlas.actors.broadcaster import Broadcaster
from atlas.actors.outbox.payloads import render
from atlas.actors.outbox_sender import OutboxSender
from atlas.clock import Clock
from atlas.domain import PromoKind
from atlas.runtime.telegram_tree import build_routers
from atlas.storage import Database, Tx
from atlas.storage.units._rows import to_json
from atlas.storage.units.broadcasts import BroadcastView, create_broadcast, get_broadcast
from atlas.storage.units.delivery import BroadcastProgress, ClaimedMessage
from atlas.supervision import CrashReporter, RingSink
from atlas.telegram import DispatchSettings, PollingIntake, PollingSettings, UpdateDispatcher, make_bot
from atlas.telegram.callbacks import (
    AdminAction,
    AdminCb,
    AdminStatsCb,
    BuyCb,
    MenuAction,
    MenuCb,
    PayMethod,
    PlanCb,
    Platform,
    StatsPeriod,
    SubAction,
    SubCb,
)
from atlas.telegram.commands import ADMIN_COMMANDS, USER_COMMANDS, publish_commands
from atlas.telegram.formatting import Formats, format_moment, format_money, load_timezone, notice_values
from atlas.telegram.i18n import Translator, bundled, bundled_sources
from atlas.telegram.routers.admin_ops import MaintenanceGate
from atlas.telegram.wiring import build_dispatcher
from atlas.testing.botapi import BotApiEmulator, ChatRecord, EmulatedUser
from tests._money_support import NOW, POLICY, RUB, add_promo, add_user, rows, scalar, setup_catalog, topup
from tests.test_bot_user_flows import BOT_USERNAME, CONFIG
from tests.test_payments_flows import stars_bot, stars_intent

ADMIN = 4242
FAST = PollingSettings(timeout=1, standby_retry=0.05, lock_check_every=5.0)

ISO_TIME = re.compile(r"\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}|\bUTC\b|\+00:00")
"""An ISO 8601 (or ``2026-03-04 12:00 UTC``-style) timestamp: never shown to a user."""
RAW_MONEY = re.compile(r"\d{4,}\s?(?:₽|RUB|XTR)|(?:₽|RUB)\s?\d{4,}|short by \d")
"""Four or more ungrouped digits at a currency: minor units shown as if they were an amount."""


def looks_raw(text: str, minor_amounts: tuple[int, ...] = ()) -> list[str]:
    """Every ISO time, raw amount, or one of ``minor_amounts`` standing alone, found in ``text``."""
    found = ISO_TIME.findall(text) + RAW_MONEY.findall(text)
    for amount in minor_amounts:
        found += re.findall(rf"(?<![\d,.\u00a0]){amount}(?![\d])", text)
    return found


@dataclass
class Walk:
    """The emulator, the dispatcher, and what a walk has seen."""

    emulator: BotApiEmulator
    bot: Bot
    dispatch: UpdateDispatcher
    db: Database
    reports: RingSink
    clock: Clock

    async def settle(self) -> None:
        """Wait until every queued update was fetched and handled."""
        with trio.fail_after(20):
            await self.emulator.wait_until_delivered()
            await self.dispatch.join()

    async def press(self, user: EmulatedUser, data: str) -> list[ChatRecord]:
        """Press the button with callback ``data`` (on the newest message that has it)."""
        before = len(user.chat_log())
        user.press(data)
        await self.settle()
        return user.chat_log()[before:]

    async def command(self, user: EmulatedUser, command: str, payload: str | None = None) -> list[ChatRecord]:
        """Type ``command`` as ``user``."""
        before = len(user.chat_log())
        user.send_command(command, payload)
        await self.settle()
        return user.chat_log()[before:]


@asynccontextmanager
async def walk_bench(db: Database) -> AsyncIterator[Walk]:
    """Every router of the running bot (payments, maintenance, admin, user screens), admin ``ADMIN``."""
    await setup_catalog(db)
    emulator = BotApiEmulator(bot_username=BOT_USERNAME)
    reports = RingSink()
    clock = Clock(NOW)
    async with trio.open_nursery() as nursery:
        base = await nursery.start(emulator.serve)
        bot = make_bot(emulator.token, base)
        root = build_dispatcher(
            build_routers(),
            db=db,
            clock=clock,
            config=CONFIG,
            admin_ids=frozenset({ADMIN}),
            referral_policy=POLICY,
            maintenance=MaintenanceGate(db),
        )
        dispatch = UpdateDispatcher(
            dispatcher=root,
            bot=bot,
            reporter=CrashReporter([reports], now=lambda: dt.datetime.now(dt.UTC)),
            settings=DispatchSettings(handler_timeout=20),
        )
        await nursery.start(dispatch.run)
        nursery.start_soon(PollingIntake(bot=bot, dispatcher=dispatch, settings=FAST).run)
        try:
            yield Walk(emulator, bot, dispatch, db, reports, clock)
            assert dispatch.failed == 0, [r.message for r in reports.latest()]
        finally:
            nursery.cancel_scope.cancel()
            with trio.CancelScope(shield=True):
                await bot.session.close()


def menu(action: MenuAction) -> str:
    return MenuCb(action=action).pack()


def sub(action: SubAction, platform: Platform = Platform.NONE) -> str:
    return SubCb(action=action, platform=platform).pack()


def admin(action: AdminAction) -> str:
    return AdminCb(action=action).pack()


# Every user screen reached by a button, and the way back from it (callback data, in order).
USER_WALK: tuple[str, ...] = (
    menu(MenuAction.PLANS),
    PlanCb(plan="m1").pack(),
    BuyCb(plan="m1", method=PayMethod.BALANCE).pack(),  # not enough money: its own screen
    menu(MenuAction.PLANS),
    menu(MenuAction.MENU),
    menu(MenuAction.TOPUP),
    menu(MenuAction.MENU),
    menu(MenuAction.PROMO),
    menu(MenuAction.MENU),
    menu(MenuAction.REFERRAL),
    menu(MenuAction.MENU),
    menu(MenuAction.LANGUAGE),
    menu(MenuAction.MENU),
    menu(MenuAction.HELP),
    menu(MenuAction.MENU),
    menu(MenuAction.SUBSCRIPTION),  # none yet: trial or plans
    menu(MenuAction.TRIAL),  # the trial starts: "my subscription" in place
    sub(SubAction.GUIDE),
    sub(SubAction.GUIDE, Platform.ANDROID),
    sub(SubAction.GUIDE, Platform.IOS),
    sub(SubAction.GUIDE, Platform.WINDOWS),
    sub(SubAction.GUIDE, Platform.MACOS),
    menu(MenuAction.SUBSCRIPTION),
    sub(SubAction.AUTO_ON),
    sub(SubAction.REISSUE),
    menu(MenuAction.SUBSCRIPTION),  # cancel
    sub(SubAction.REISSUE),
    sub(SubAction.REISSUE_CONFIRM),
    menu(MenuAction.PLANS),  # "renew"
    menu(MenuAction.MENU),
)

ADMIN_WALK: tuple[str, ...] = (
    admin(AdminAction.STATS),
    AdminStatsCb(period=StatsPeriod.MONTH).pack(),
    admin(AdminAction.MENU),
    admin(AdminAction.PROMOS),
    admin(AdminAction.MENU),
    admin(AdminAction.CRASHES),
    admin(AdminAction.MENU),
    admin(AdminAction.MAINTENANCE),
    admin(AdminAction.MENU),
    admin(AdminAction.LOOKUP),
    admin(AdminAction.MENU),
    admin(AdminAction.BROADCAST),
    admin(AdminAction.MENU),
    menu(MenuAction.MENU),  # the admin menu's way out: the user menu
)

BALANCE_MINOR = 1_234  # 12.34 RUB: less than a plan (100 RUB), so the buy screen says "not enough"


async def walk_every_screen(w: Walk, user: EmulatedUser, steps: tuple[str, ...]) -> list[ChatRecord]:
    """Press every step; each must be answered by editing the pressed message, nothing new sent."""
    seen: list[ChatRecord] = []
    sends, edits = w.emulator.calls["sendMessage"], w.emulator.calls["editMessageText"]
    for step in steps:
        records = await w.press(user, step)
        assert [r.kind for r in records] == ["edit_text"], (user.language_code, step, records)
        seen += records
    assert w.emulator.calls["sendMessage"] == sends  # navigation sent no new message ...
    assert w.emulator.calls["editMessageText"] == edits + len(steps)  # ... it edited, once per press
    return seen


async def test_a_full_walk_of_every_screen_in_both_languages_edits_in_place(db: Database) -> None:
    async with walk_bench(db) as w:
        shown: list[str] = []
        for user_id, lang in ((7101, "ru"), (7102, "en")):
            user = w.emulator.add_user(user_id, f"Walker-{lang}", language_code=lang)
            started = await w.command(user, "/start")  # a command: new messages (greeting, menu)
            assert [r.kind for r in started] == ["message", "message"]
            await topup(db, user_id, BALANCE_MINOR)
            records = await walk_every_screen(w, user, USER_WALK)
            # The QR code is a photo: it replaces the text screen (delete + send) and back again.
            await w.press(user, menu(MenuAction.SUBSCRIPTION))
            photo = await w.press(user, sub(SubAction.QR))
            assert [r.kind for r in photo] == ["delete", "photo"]
            back = await w.press(user, menu(MenuAction.SUBSCRIPTION))
            assert [r.kind for r in back] == ["delete", "message"]
            # Pressing what is already shown is "not modified" for Telegram: success, nothing sent.
            await w.press(user, sub(SubAction.GUIDE))
            await w.press(user, sub(SubAction.GUIDE, Platform.ANDROID))
            calls = dict(w.emulator.calls)
            again = await w.press(user, sub(SubAction.GUIDE, Platform.ANDROID))
            assert again == [] and w.emulator.calls["sendMessage"] == calls["sendMessage"]
            assert w.emulator.calls["editMessageText"] == calls["editMessageText"] + 1  # tried, refused
            texts = [r.plain_text or "" for r in started + records + photo + back]
            texts += [t for r in records for t in r.button_texts()]
            screens = "\n".join(texts)
            # Money and dates as the language writes them.
            if lang == "ru":
                assert "12,34\u00a0₽" in screens and "100\u00a0₽ · 50\u00a0⭐" in screens
                assert "Действует до: 4 марта 2026, 12:00" in screens
            else:
                assert "RUB\u00a012.34" in screens and "RUB\u00a0100.00 · 50\u00a0⭐" in screens
                assert "Valid until: Mar 4, 2026, 12:00" in screens
            shown += texts

        boss = w.emulator.add_user(ADMIN, "Boss", language_code="en")
        opened = await w.command(boss, "/admin")
        assert [r.kind for r in opened] == ["message"]
        admin_records = await walk_every_screen(w, boss, ADMIN_WALK)
        shown += [r.plain_text or "" for r in opened + admin_records]
        # Every admin screen offers a way back to the admin menu (the menu offers the user menu).
        for record in admin_records[:-1]:
            data = [b.get("callback_data") for b in record.inline_buttons()]
            assert admin(AdminAction.MENU) in data or menu(MenuAction.MENU) in data, record.plain_text

    everything = "\n".join(shown)
    assert looks_raw(everything, (BALANCE_MINOR, 10_000)) == []


# The outbox notices the units write: kind → a payload as the unit writes it (datetimes and ints,
# encoded to JSON by the same function the units use), one per kind in the locale files.
WHEN = dt.datetime(2026, 12, 4, 19, 11, 12, 714353, tzinfo=dt.UTC)
NOTICE_PAYLOADS: dict[str, dict[str, object]] = {
    "trial.started": {"expires_at": WHEN, "days": 3},
    "purchase.done": {"plan": "m1", "days": 30, "charged_minor": 19_900, "currency": RUB, "expires_at": WHEN},
    "payment.applied.plan": {"payment_id": 1, "amount_minor": 50, "currency": "XTR", "credit_minor": 0,
                             "plan": "m1", "days": 30, "expires_at": WHEN, "balance_minor": 0},
    "payment.applied.topup": {"payment_id": 2, "amount_minor": 19_900, "currency": RUB,
                              "credit_minor": 19_900, "plan": None, "days": 0, "expires_at": None,
                              "balance_minor": 9_997_910},
    "payment.refunded": {"payment_id": 3, "amount_minor": 19_900, "currency": RUB},
    "payment.returned": {"amount_minor": 20, "currency": "XTR"},
    "referral.joined": {"referred_id": 5, "first_name": "Ann"},
    "referral.reward": {"amount_minor": 1_990, "currency": RUB, "referred_id": 5},
    "renewal.done": {"amount_minor": 19_900, "currency": RUB, "expires_at": WHEN},
    "renewal.insufficient": {"expires_at": WHEN, "shortfall_minor": 9_997_910, "currency": RUB},
    "subscription.expired.trial": {"expired_at": WHEN},
    "subscription.expired.paid": {"expired_at": WHEN},
    "reminder.trial.6h": {"expires_at": WHEN, "remaining_seconds": 21_600, "threshold": "6h"},
    "reminder.trial.1h": {"expires_at": WHEN, "remaining_seconds": 3_600, "threshold": "1h"},
    "reminder.paid.3d": {"expires_at": WHEN, "remaining_seconds": 259_200, "threshold": "3d"},
    "reminder.paid.1d": {"expires_at": WHEN, "remaining_seconds": 86_400, "threshold": "1d"},
    "reminder.paid.6h": {"expires_at": WHEN, "remaining_seconds": 21_600, "threshold": "6h"},
    "key.reissued": {"expires_at": WHEN},
    "key.active": {"subscription_id": 1, "key": "k"},
    "admin.days_granted": {"days": 7, "expires_at": WHEN, "status": "active"},
    "admin.days_removed": {"days": 7, "expires_at": WHEN, "status": "active"},
    "admin.balance_adjusted": {"amount_minor": 15_050, "balance_minor": 9_997_910},
    "admin.crash_alert": {"path": "root/workers/renewal", "report_kind": "crash", "exc_type": "E",
                          "message": "boom", "decision": "restart", "time": WHEN.isoformat(),
                          "suppressed": 0},
    "admin.crash_alert_again": {"path": "root/workers/renewal", "report_kind": "crash", "exc_type": "E",
                                "message": "boom", "decision": "restart", "time": WHEN.isoformat(),
                                "suppressed": 3},
}  # fmt: skip


def claimed(kind: str, payload: Mapping[str, object], language: str) -> ClaimedMessage:
    return ClaimedMessage(
        id=1,
        chat_id=1,
        kind=kind,
        payload=json.loads(to_json(dict(payload))),
        priority=0,
        broadcast_id=None,
        attempts=0,
        next_attempt_at=NOW,
        language=language,
    )


def test_every_notice_kind_renders_with_locale_dates_and_money_never_raw_values() -> None:
    moscow = Translator.from_toml(
        bundled_sources(), formats=Formats(timezone=load_timezone("Europe/Moscow"), currency=RUB)
    )
    rendered: dict[tuple[str, str], str] = {}
    for kind, payload in NOTICE_PAYLOADS.items():
        for language in ("ru", "en"):
            text, mode, _ = render(claimed(kind, payload, language), moscow)
            assert mode == "HTML"
            rendered[kind, language] = text
            assert looks_raw(text, (19_900, 9_997_910, 15_050, 1_990)) == [], (kind, language, text)
    # 19:11 UTC is 22:11 in Moscow; the shapes are CLDR's.
    assert "4 декабря 2026, 22:11" in rendered["trial.started", "ru"]
    assert "Dec 4, 2026, 22:11" in rendered["trial.started", "en"]
    assert "99\u00a0979,10\u00a0₽" in rendered["admin.balance_adjusted", "ru"]
    assert "RUB\u00a099,979.10" in rendered["admin.balance_adjusted", "en"]
    assert "20\u00a0⭐" in rendered["payment.returned", "en"]
    assert "150,50\u00a0₽" in rendered["admin.balance_adjusted", "ru"]
    assert "99\u00a0979,10\u00a0₽" in rendered["admin.balance_adjusted", "ru"]
    # Every notice kind of the locale files is in the table above (a new kind must be added).
    catalog = bundled().catalogs["en"]
    notice_roots = ("trial.", "purchase.", "payment.applied.", "payment.re", "referral.", "renewal.",
                    "subscription.expired.", "reminder.", "key.", "admin.days_", "admin.balance_",
                    "admin.crash_")  # fmt: skip
    kinds = {key for key in catalog if key.startswith(notice_roots)}
    assert kinds == set(NOTICE_PAYLOADS)


def test_formatting_is_cldr_per_language() -> None:
    moment = dt.datetime(2026, 12, 4, 19, 11, 12, 714353, tzinfo=dt.UTC)
    assert format_moment(moment, "ru") == "4 декабря 2026, 19:11"
    assert format_moment(moment, "en") == "Dec 4, 2026, 19:11"
    assert format_moment(moment, "en", load_timezone("Asia/Tokyo")) == "Dec 5, 2026, 04:11"
    assert format_money(19_900, RUB, "ru") == "199\u00a0₽"
    assert format_money(19_950, RUB, "ru") == "199,50\u00a0₽"
    assert format_money(9_997_910, RUB, "ru") == "99\u00a0979,10\u00a0₽"
    assert format_money(19_900, RUB, "en") == "RUB\u00a0199.00"
    assert format_money(500, "USD", "en") == "$5.00"
    assert format_money(50, "XTR", "ru") == "50\u00a0⭐"
    assert format_money(-2_000, RUB, "ru") == "-20\u00a0₽"
    assert (
        notice_values({"expires_at": "2026-12-04T19:11:12+00:00", "x_minor": 5, "currency": "USD"}, RUB)[
            "x_minor"
        ]
        == notice_values({"x_minor": 5}, "USD")["x_minor"]
    )
    try:
        load_timezone("Mars/Olympus")
    except ValueError as exc:
        assert "Mars/Olympus" in str(exc)
    else:
        raise AssertionError("an unknown zone must be refused")


async def test_set_my_commands_per_language_and_an_extended_list_for_admins(db: Database) -> None:
    emulator = BotApiEmulator(bot_username=BOT_USERNAME)
    async with trio.open_nursery() as nursery:
        base = await nursery.start(emulator.serve)
        bot = make_bot(emulator.token, base)
        try:
            accepted = await publish_commands(bot, [ADMIN, ADMIN])
        finally:
            await bot.session.close()
            nursery.cancel_scope.cancel()
    assert accepted == 6  # (ru, en, default) for everyone and for the one admin
    ru, en, default = (emulator.commands(language_code=lang) for lang in ("ru", "en", ""))
    assert [c["command"] for c in ru] == list(USER_COMMANDS) == [c["command"] for c in en]
    assert (
        ru[0]["description"] == "Начать и открыть меню" and en[0]["description"] == "Start and open the menu"
    )
    assert default == en
    scope = {"type": "chat", "chat_id": ADMIN}
    for lang in ("ru", "en", ""):
        admin_list = [c["command"] for c in emulator.commands(scope, language_code=lang)]
        assert admin_list == [*USER_COMMANDS, *ADMIN_COMMANDS] and "admin" in admin_list


async def test_a_refused_command_list_is_logged_not_fatal(db: Database) -> None:
    emulator = BotApiEmulator(bot_username=BOT_USERNAME)
    async with trio.open_nursery() as nursery:
        base = await nursery.start(emulator.serve)
        bot = make_bot(emulator.token, base)
        try:
            emulator.inject("setMyCommands", error=400, count=None, description="Bad Request: chat not found")
            assert await publish_commands(bot, [ADMIN]) == 0
        finally:
            await bot.session.close()
            nursery.cancel_scope.cancel()


async def test_admin_changes_reach_the_user_and_admin_texts_follow_the_admins_language(db: Database) -> None:
    async with walk_bench(db) as w:
        await add_user(db, 800)  # a Russian-speaking user
        target = w.emulator.add_user(800, "Target", language_code="ru")
        boss = w.emulator.add_user(ADMIN, "Boss", language_code="en")  # no user row: never /start-ed
        # English for the admin although the default language is Russian and they have no row.
        reply = await w.command(boss, "/adjust", "800 +150.50 goodwill")
        assert reply[-1].plain_text == "Done: user 800 balance is now RUB\u00a0150.50."
        reply = await w.command(boss, "/adjust", "800 -1000 too much")
        assert reply[-1].plain_text is not None and "RUB\u00a0849.50" in reply[-1].plain_text
        await w.command(boss, "/grant", "800 7 outage")
        # The units wrote a notice for each change; the outbox sender delivers them in Russian.
        sender = OutboxSender(db=lambda: db, bot=w.bot, clock=w.clock, rng=random.Random(1))
        with trio.fail_after(20):
            while len([r for r in target.chat_log() if r.kind == "message"]) < 2:
                await sender.drain()
                await trio.sleep(0.2)  # the per-chat pace: one message a second to one chat
        got = [r.plain_text or "" for r in target.chat_log() if r.kind == "message"]
        assert len(got) == 2, got
        assert (
            "изменила ваш баланс на 150,50\u00a0₽" in got[0] and "Теперь на балансе 150,50\u00a0₽" in got[0]
        )
        assert "добавила 7 дн." in got[1] and "8 марта 2026, 12:00" in got[1]
        assert looks_raw("\n".join(got), (15_050,)) == []

        # A broadcast report is in the admin's language even without a user row.
        view: BroadcastView = await db.run(
            create_broadcast, admin_id=ADMIN, admin_language="en", segment="all", text="hi", now=NOW
        )
        again = await db.run(get_broadcast, broadcast_id=view.id)
        assert again.admin_language == "en"
        caster = Broadcaster(db=lambda: db, bot=w.bot, clock=w.clock, rng=random.Random(2))
        report = caster.progress_text(again, BroadcastProgress(1, 1, 0, 0, 0), final=True)
        assert report.startswith("<b>Broadcast #")
        legacy = await db.run(create_broadcast, admin_id=ADMIN, segment="all", text="hi", now=NOW)
        assert legacy.admin_language is None  # written before: no language, the default applies


async def test_promo_terms_and_stars_prices_show_before_payment(db: Database) -> None:
    async with walk_bench(db) as w:
        await add_promo(db, "WEEK", PromoKind.FREE_DAYS, 7)
        await add_promo(db, "SALE", PromoKind.PERCENT, 20)
        ann = w.emulator.add_user(7301, "Ann", language_code="en")
        await w.command(ann, "/start")
        plans = await w.press(ann, menu(MenuAction.PLANS))
        assert "plan · 30 d · RUB\u00a0100.00 · 50\u00a0⭐" in plans[-1].button_texts()

        await w.command(ann, "/promo", "WEEK")  # accepted: the menu comes with it
        plans = await w.press(ann, menu(MenuAction.PLANS))
        assert "plan · 37 d · RUB\u00a0100.00 · 50\u00a0⭐" in plans[-1].button_texts()
        screen = await w.press(ann, PlanCb(plan="m1").pack())
        text = screen[-1].plain_text or ""
        assert "plan, 37 days" in text and "With promo code WEEK: 37 days" in text
        assert "(without it: 30 days for RUB\u00a0100.00)" in text

        bob = w.emulator.add_user(7302, "Bob", language_code="ru")
        await w.command(bob, "/start")
        await w.command(bob, "/promo", "SALE")
        await w.press(bob, menu(MenuAction.PLANS))
        screen = await w.press(bob, PlanCb(plan="m1").pack())
        buttons = screen[-1].button_texts()
        assert "С баланса · 80\u00a0₽" in buttons and "Telegram Stars · 40 ⭐" in buttons, buttons
        assert "80\u00a0₽ · 40\u00a0⭐" in (screen[-1].plain_text or "")


async def test_an_underpaid_stars_charge_is_refunded_at_once_with_a_notice(db: Database) -> None:
    await setup_catalog(db)
    await db.run(_seed_payer)
    async with stars_bot(db) as s:
        payer = s.emulator.add_user(901, "Payer", language_code="en")
        intent = await stars_intent(s, 901)
        charge = s.emulator.add_star_charge(901, 20, invoice_payload=intent.payload)  # 50 were due
        s.emulator.enqueue_update(
            "message",
            {
                "message_id": 77,
                "date": int(NOW.timestamp()),
                "chat": {"id": 901, "type": "private", "first_name": "Payer"},
                "from": payer.as_json(),
                "successful_payment": {
                    "currency": "XTR",
                    "total_amount": 20,
                    "invoice_payload": intent.payload,
                    "telegram_payment_charge_id": charge.telegram_payment_charge_id,
                    "provider_payment_charge_id": charge.provider_payment_charge_id,
                },
            },
        )
        with trio.fail_after(20):
            while not s.emulator.refunds:  # noqa: ASYNC110 - the emulator's record is the event
                await trio.sleep(0.05)
        assert [r.telegram_payment_charge_id for r in s.emulator.refunds] == [
            charge.telegram_payment_charge_id
        ]
        await s.dispatch.join()
        payment = await rows(
            db, "SELECT status, status_reason FROM payments WHERE id = $1", intent.payment_id
        )
        assert payment[0]["status"] == "refunded" and "amount" in (payment[0]["status_reason"] or "")
        refund = await rows(db, "SELECT state, reason FROM provider_refunds LIMIT 5")
        assert refund[0]["state"] == "done" and refund[0]["reason"].startswith("at payment: flagged")
        notice = await rows(
            db, "SELECT chat_id, kind, payload FROM outbox WHERE kind = 'payment.returned' LIMIT 5"
        )
        assert [(n["chat_id"], n["kind"]) for n in notice] == [(901, "payment.returned")]
        # No "manual check" message: the refund notice (via the outbox) is what the user gets.
        assert [r for r in payer.chat_log() if r.kind == "message"] == []
        assert await scalar(db, "SELECT count(*) FROM ledger WHERE user_id = 901") == 0


async def _seed_payer(tx: Tx) -> None:
    await tx.execute(
        "INSERT INTO users (id, first_name, language, referral_code, created_at) "
        "VALUES (901, 'Payer', 'en', 'ref901', $1)",
        NOW,
    )
