"""The user screens end to end: scripted users talk to the real aiogram Bot over HTTP through the Bot
API emulator, the real routers run in the real dispatcher (polling intake), units run on a real
PostgreSQL.

What is shown: /start → trial → "my subscription" gives a share link carrying the stored key and
the subscription URL; a referred user's paid top-up rewards the referrer and buying from the
balance works (not enough money: a clear text and a top-up button, nothing changed); a promo code
applies once; the language switch changes every later screen; forged callback data cannot act on
another user's subscription; hypothesis-drawn text, commands and callback data always get an
answer and never move money.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import pytest
import trio
from aiogram import Bot
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from atlas.clock import Clock
from atlas.domain import PromoKind
from atlas.payments import CryptoPayClient
from atlas.storage import Database
from atlas.supervision import CrashReporter, RingSink
from atlas.telegram import (
    DispatchSettings,
    PollingIntake,
    PollingSettings,
    UpdateDispatcher,
    build_dispatcher,
    make_bot,
)
from atlas.telegram.callbacks import MenuAction, MenuCb, SubAction, SubCb
from atlas.telegram.config import BotConfig
from atlas.telegram.i18n import t
from atlas.telegram.routers import build_user_routers
from atlas.testing.botapi import BotApiEmulator, ChatRecord, EmulatedUser
from atlas.testing.botapi._core import PendingCallback
from atlas.testing.cryptopay_emulator import CryptoPayEmulator
from atlas.vpn import NodeConfig, parse_vless_link
from tests._money_support import NOW, RUB, add_promo, rows, scalar, setup_catalog, snapshot, topup

FAST = PollingSettings(timeout=1, standby_retry=0.05, lock_check_every=5.0)
BOT_USERNAME = "atlas_emulated_bot"
NODES = (
    NodeConfig(
        name="ams",
        agent_url="http://10.0.0.1:8765",
        token="t" * 16,
        public_host="ams.example.com",
        port=443,
        sni="www.example.com",
        pbk="A" * 43,
        sid="ab",
        flow="xtls-rprx-vision",
        label="Amsterdam",
    ),
    NodeConfig(
        name="fra",
        agent_url="http://10.0.0.2:8765",
        token="t" * 16,
        public_host="fra.example.com",
        port=8443,
        security="tls",
        sni="fra.example.com",
    ),
)
CONFIG = BotConfig(
    currency=RUB,
    public_base_url="https://vpn.example.com/",
    bot_username=BOT_USERNAME,
    nodes=NODES,
    trial_days=3,
    support="@atlas_support",
)
VLESS = re.compile(r"vless://\S+")
SUB_URL = re.compile(r"https://vpn\.example\.com/sub/[A-Za-z0-9_-]+")


@dataclass
class Bench:
    """The emulator, the bot, the dispatcher and the database of one test."""

    emulator: BotApiEmulator
    bot: Bot
    dispatch: UpdateDispatcher
    db: Database
    reports: RingSink

    async def settle(self) -> None:
        """Wait until every queued update was fetched and handled."""
        with trio.fail_after(10):
            await self.emulator.wait_until_delivered()
            await self.dispatch.join()

    async def step(self, user: EmulatedUser, action: str, *args: str) -> list[ChatRecord]:
        """Do one thing as ``user`` (``/cmd``, ``text``, ``press``, ``forge``); return what came back."""
        user.skip_received()
        before = len(user.chat_log())
        if action == "command":
            user.send_command(*args)
        elif action == "text":
            user.send_text(args[0])
        elif action == "press":
            user.press(args[0])
        elif action == "forge":
            self.forge(user, args[0])
        else:
            raise AssertionError(action)
        await self.settle()
        return user.chat_log()[before:]

    def forge(self, user: EmulatedUser, data: str) -> str:
        """A button press with arbitrary ``data``, as a modified client could send it."""
        core = self.emulator._core  # the emulator has no public "forge" on purpose; tests reach in
        query_id = core.new_id("CBQ")
        core.callbacks[query_id] = PendingCallback(query_id, user.id, data)
        core.enqueue_update(
            "callback_query",
            {"id": query_id, "from": user.as_json(), "chat_instance": f"ci{user.id}", "data": data},
        )
        return query_id

    def answers_for(self, user: EmulatedUser) -> list[str | None]:
        """The texts of the callback answers ``user`` got, oldest first."""
        return [a.text for a in self.emulator.callback_answers if a.user_id == user.id]


@asynccontextmanager
async def bench(db: Database, **dependencies: Any) -> AsyncIterator[Bench]:
    await setup_catalog(db)
    emulator = BotApiEmulator(bot_username=BOT_USERNAME)
    reports = RingSink()
    async with trio.open_nursery() as nursery:
        base = await nursery.start(emulator.serve)
        bot = make_bot(emulator.token, base)
        clock = Clock(NOW)
        root = build_dispatcher(build_user_routers(), db=db, clock=clock, config=CONFIG, **dependencies)
        dispatch = UpdateDispatcher(
            dispatcher=root,
            bot=bot,
            reporter=CrashReporter([reports], now=lambda: dt.datetime.now(dt.UTC)),
            settings=DispatchSettings(handler_timeout=20),
        )
        await nursery.start(dispatch.run)
        intake = PollingIntake(bot=bot, dispatcher=dispatch, settings=FAST)
        nursery.start_soon(intake.run)
        try:
            yield Bench(emulator, bot, dispatch, db, reports)
            assert dispatch.failed == 0, [r.message for r in reports.latest()]
        finally:
            nursery.cancel_scope.cancel()
            with trio.CancelScope(shield=True):
                await bot.session.close()


def texts(records: list[ChatRecord]) -> str:
    """Everything the user saw, as one string."""
    return "\n".join(r.plain_text or "" for r in records)


def en(key: str, **params: object) -> str:
    """An English text as the user sees it (no tags)."""
    return re.sub(r"<[^>]+>", "", t("en", key, **params))


# ---------------------------------------------------------------------------------------------


async def test_start_trial_subscription_gives_working_links_qr_and_guides(db: Database) -> None:
    async with bench(db) as b:
        alice = b.emulator.add_user(5001, "Alice", language_code="en")
        seen = await b.step(alice, "command", "/start")
        assert "Hi, Alice!" in texts(seen)
        assert en("user.button.trial") in seen[-1].button_texts()

        # The trial press answers with a toast and turns the menu into "my subscription" in place;
        # the confirmation itself is the trial.started notice (sent by the outbox sender, not here).
        seen = await b.step(alice, "press", en("user.button.trial"))
        assert [r.kind for r in seen] == ["edit_text"]
        assert b.answers_for(alice)[-1] == en("user.ux.trial_started", days=3)
        screen = texts(seen)
        assert "Status: active (trial)" in screen and "Days left: 3" in screen
        assert "Valid until: Mar 4, 2026, 12:00" in screen  # NOW + 3 days, in the default zone (UTC)

        key = await scalar(
            db,
            "SELECT k.uuid FROM vpn_keys k JOIN subscriptions s ON s.id = k.subscription_id "
            "WHERE s.user_id = $1 AND k.desired = 'present'",
            alice.id,
        )
        links = [parse_vless_link(link) for link in VLESS.findall(screen)]
        assert [(link.host, link.port) for link in links] == [
            ("ams.example.com", 443),
            ("fra.example.com", 8443),
        ]
        assert {link.uuid for link in links} == {str(key)}
        assert links[0].security == "reality" and links[1].security == "tls"
        token = await scalar(db, "SELECT token FROM subscriptions WHERE user_id = $1", alice.id)
        assert SUB_URL.findall(screen) == [f"https://vpn.example.com/sub/{token}"]

        # A photo screen replaces the text screen (delete + send), and back again.
        seen = await b.step(alice, "press", en("user.button.qr"))
        assert [r.kind for r in seen] == ["delete", "photo"]
        photo = [r for r in seen if r.kind == "photo"]
        assert len(photo) == 1 and photo[0].file is not None and photo[0].file.width > 100
        seen = await b.step(alice, "press", en("user.button.back"))
        assert [r.kind for r in seen] == ["delete", "message"] and "Status: active" in texts(seen)

        await b.step(alice, "press", en("user.button.guides"))
        for platform, app in [
            ("android", "v2rayNG"),
            ("ios", "Streisand"),
            ("windows", "Hiddify"),
            ("macos", "Hiddify"),
        ]:
            seen = await b.step(alice, "press", en(f"user.button.platform_{platform}"))
            assert app in texts(seen), platform

        # One trial per user: the second press is refused with its text, nothing changes.
        before = await snapshot(db)
        seen = await b.step(alice, "forge", MenuCb(action=MenuAction.TRIAL).pack())
        assert en("user.error.trial.already_used") in texts(seen)
        assert await snapshot(db) == before

        # Auto-renew on, then a key reissue behind a confirmation step.
        await b.step(alice, "press", en("user.button.menu"))
        await b.step(alice, "press", en("user.button.subscription"))
        seen = await b.step(alice, "press", en("user.button.auto_on"))
        assert "Auto-renew from balance: on" in texts(seen)
        assert await scalar(db, "SELECT auto_renew FROM subscriptions WHERE user_id = $1", alice.id) is True
        seen = await b.step(alice, "press", en("user.button.reissue"))
        assert "Replace your key?" in texts(seen)
        assert await scalar(db, "SELECT count(*) FROM vpn_keys") == 1  # asking changed nothing
        seen = await b.step(alice, "press", en("user.button.reissue_confirm"))
        assert b.answers_for(alice)[-1] == en("user.sub.reissued")
        keys = await rows(db, "SELECT uuid, desired FROM vpn_keys ORDER BY id")
        assert (keys[0]["uuid"], keys[0]["desired"]) == (key, "absent")
        new_key = keys[1]["uuid"]
        assert keys[1]["desired"] == "present" and new_key != key
        assert {parse_vless_link(link).uuid for link in VLESS.findall(texts(seen))} == {str(new_key)}


async def test_a_screen_and_its_user_lookup_cost_one_unit_of_work(
    db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    units: list[str] = []
    original = Database.run

    async def counting(self: Database, unit: Any, /, **kwargs: Any) -> Any:
        units.append(unit.__name__)
        return await original(self, unit, **kwargs)

    async with bench(db) as b:
        alice = b.emulator.add_user(5101, "Alice", language_code="en")
        await b.step(alice, "command", "/start")
        await b.step(alice, "press", en("user.button.trial"))
        monkeypatch.setattr(Database, "run", counting)
        screens = {
            "qr": en("user.button.qr"),
            "subscription": en("user.button.back"),
            "menu": en("user.button.menu"),
            "plans": en("user.button.plans"),
        }
        for name, button in screens.items():
            units.clear()
            seen = await b.step(alice, "press", button)
            assert seen, name
            assert units == ["get_user_for_screen"], (name, units)  # the screen's read rode along
        units.clear()
        seen = await b.step(alice, "command", "/ref")
        assert units == ["get_user_for_screen"] and "?start=ref_" in texts(seen)

        # A handler that changes something reads afresh after its change: its own units.
        await b.step(alice, "press", en("user.button.menu"))
        await b.step(alice, "press", en("user.button.subscription"))
        units.clear()
        seen = await b.step(alice, "press", en("user.button.auto_on"))
        assert units == ["get_user_for_screen", "set_auto_renew", "run_screen_read"]
        assert "Auto-renew from balance: on" in texts(seen)


async def test_a_referred_users_payment_rewards_the_referrer_and_buying_from_balance(db: Database) -> None:
    async with bench(db) as b:
        ann = b.emulator.add_user(6001, "Ann")
        await b.step(ann, "command", "/start")
        page = texts(await b.step(ann, "press", en("user.button.referral")))
        link = re.search(rf"https://t\.me/{BOT_USERNAME}\?start=(ref_\w+)", page)
        assert link is not None and "Invited: 0" in page

        ben = b.emulator.add_user(6002, "Ben")
        await b.step(ben, "command", "/start", link.group(1))
        assert await scalar(db, "SELECT referrer_id FROM users WHERE id = $1", ben.id) == ann.id

        # Not enough money: a clear text, a top-up button, nothing changed.
        await b.step(ben, "press", en("user.button.plans"))
        await b.step(ben, "press", "p:m1")
        before = await snapshot(db)
        seen = await b.step(ben, "press", "b:m1:bal")
        short = "Not enough money on your balance: it costs RUB\u00a0100.00, you have RUB\u00a00.00"
        assert short in texts(seen)
        assert en("user.button.topup") in seen[-1].button_texts()
        assert await snapshot(db) == before

        await topup(db, ben.id, 15_000)  # paid in through Crypto Pay: the referral reward is due now
        await b.step(ben, "press", en("user.button.back"))  # back to the plans
        await b.step(ben, "press", "p:m1")
        seen = await b.step(ben, "press", "b:m1:bal")
        assert "RUB\u00a0100.00 paid" in texts(seen) and "Balance: RUB\u00a050.00" in texts(seen)
        assert await scalar(db, "SELECT balance_minor FROM users WHERE id = $1", ben.id) == 5_000
        assert await scalar(db, "SELECT kind FROM subscriptions WHERE user_id = $1", ben.id) == "paid"

        reward = await rows(db, "SELECT amount_minor, kind FROM ledger WHERE user_id = $1", ann.id)
        assert reward == [{"amount_minor": 1_500, "kind": "referral_reward"}]
        await b.step(ann, "press", en("user.button.menu"))
        page = texts(await b.step(ann, "press", en("user.button.referral")))
        assert "Invited: 1, of them paid: 1" in page and "Rewards: RUB\u00a015.00 (1)" in page


async def test_a_promo_code_applies_once(db: Database) -> None:
    async with bench(db) as b:
        await add_promo(db, "SPRING", PromoKind.PERCENT, 20)
        cat = b.emulator.add_user(7001, "Cat")
        await b.step(cat, "command", "/start")
        await topup(db, cat.id, 20_000)

        # Through the prompt (text state) ...
        await b.step(cat, "press", en("user.button.promo"))
        seen = await b.step(cat, "text", "spring")
        assert "Promo code SPRING is applied" in texts(seen)
        await b.step(cat, "press", en("user.button.plans"))
        await b.step(cat, "press", "p:m1")
        seen = await b.step(cat, "press", "b:m1:bal")
        assert "RUB\u00a080.00 paid" in texts(seen)
        assert await scalar(db, "SELECT count(*) FROM promo_redemptions WHERE user_id = $1", cat.id) == 1

        # ... and the second time through the command: refused, nothing changed.
        before = await snapshot(db)
        seen = await b.step(cat, "command", "/promo", "SPRING")
        assert en("user.error.promo.per_user_limit", promo="SPRING") in texts(seen)
        seen = await b.step(cat, "command", "/promo", "NOPE")
        assert en("user.error.promo.not_found", promo="NOPE") in texts(seen)
        # A prompt left for another screen is over: the next text is not taken for a code.
        await b.step(cat, "press", en("user.button.menu"))
        await b.step(cat, "press", en("user.button.promo"))
        await b.step(cat, "press", en("user.button.menu"))
        await b.step(cat, "press", en("user.button.help"))
        seen = await b.step(cat, "text", "hello")
        assert en("user.fallback.unknown") in texts(seen)
        assert await snapshot(db) == before


async def test_the_language_switch_changes_every_later_screen(db: Database) -> None:
    async with bench(db) as b:
        dan = b.emulator.add_user(8001, "Dan", language_code="ru")
        seen = await b.step(dan, "command", "/start")
        assert "Привет, Dan!" in texts(seen)
        await b.step(dan, "press", t("ru", "user.button.language"))
        seen = await b.step(dan, "press", t("en", "user.button.lang_en"))
        assert "Balance: RUB\u00a00.00" in texts(seen)
        assert await scalar(db, "SELECT language FROM users WHERE id = $1", dan.id) == "en"

        later: list[ChatRecord] = []
        later += await b.step(dan, "command", "/start")
        later += await b.step(dan, "press", en("user.button.subscription"))
        later += await b.step(dan, "press", en("user.button.menu"))
        later += await b.step(dan, "press", en("user.button.plans"))
        later += await b.step(dan, "press", en("user.button.menu"))
        later += await b.step(dan, "press", en("user.button.referral"))
        later += await b.step(dan, "command", "/help")
        later += await b.step(dan, "text", "what?")
        later += await b.step(dan, "press", en("user.button.trial"))
        shown = texts(later) + "".join("".join(r.button_texts()) for r in later)
        assert (
            "Hi, Dan!" in shown and "Support: @atlas_support" in shown and "Status: active (trial)" in shown
        )
        cyrillic = re.findall(r"[А-Яа-яЁё]+", shown)
        assert cyrillic == [], cyrillic


async def test_a_forged_callback_cannot_act_on_another_users_subscription(db: Database) -> None:
    async with bench(db) as b:
        eve, bob = b.emulator.add_user(9001, "Eve"), b.emulator.add_user(9002, "Bob")
        await b.step(bob, "command", "/start")
        await b.step(bob, "press", en("user.button.trial"))
        await b.step(eve, "command", "/start")
        before = await snapshot(db)

        forged = [
            SubCb(action=SubAction.REISSUE_CONFIRM).pack(),
            SubCb(action=SubAction.AUTO_ON).pack(),
            f"s:reissue_ok:-:{bob.id}",  # an extra field naming Bob: not our format, refused
            f"s:auto_on:{bob.id}",
            f"b:m1:bal:{bob.id}",
            "b:nosuchplan:bal",
            "t:-500",
            "l:de",
            "x:anything",
        ]
        for data in forged:
            seen = await b.step(eve, "forge", data)
            answered = b.answers_for(eve)
            assert seen or answered, data  # an answer every time, never silence
        assert await snapshot(db) == before  # Bob's key, his auto-renew, everyone's money: unchanged
        outdated = t("en", "errors.button_expired")
        assert b.answers_for(eve).count(outdated) >= 5
        assert b.answers_for(bob).count(outdated) == 0


async def test_stars_and_crypto_pay_invoices_are_created_for_a_plan_and_a_top_up(
    db: Database, nursery: trio.Nursery
) -> None:
    crypto = CryptoPayEmulator("4242:TEST")
    await nursery.start(crypto.run)
    async with (
        CryptoPayClient("4242:TEST", base_url=crypto.api_url, timeout=5) as client,
        bench(db, cryptopay=client) as b,
    ):
        gus = b.emulator.add_user(9601, "Gus")
        await b.step(gus, "command", "/start")
        await b.step(gus, "press", en("user.button.plans"))
        seen = await b.step(gus, "press", "p:m1")
        assert seen[-1].button_texts()[:3] == [
            en("user.button.pay_balance", price="RUB\u00a0100.00"),
            en("user.button.pay_stars", stars=50),
            en("user.button.pay_crypto", price="RUB\u00a0100.00"),
        ]

        seen = await b.step(gus, "press", en("user.button.pay_stars", stars=50))
        invoice = [r.invoice for r in seen if r.invoice is not None]
        assert len(invoice) == 1 and invoice[0].currency == "XTR" and invoice[0].total_amount == 50
        stars = await rows(
            db, "SELECT provider, purpose, amount_minor, currency, payload, status FROM payments"
        )
        assert stars == [
                {"provider": "stars", "purpose": "plan", "amount_minor": 50, "currency": "XTR",
                 "payload": invoice[0].payload, "status": "pending"}
            ]  # fmt: skip

        seen = await b.step(gus, "press", "b:m1:cp")
        [link] = [button["url"] for r in seen for button in r.inline_buttons() if "url" in button]
        [made] = crypto.invoices()
        assert (link, made.fiat, made.amount) == (made.bot_invoice_url, RUB, Decimal("100"))
        paid = await rows(db, "SELECT external_id, payload FROM payments WHERE provider = 'cryptopay'")
        assert paid == [{"external_id": str(made.invoice_id), "payload": made.payload}]

        # A top-up: amount buttons, then an invoice for the chosen amount.
        await b.step(gus, "press", en("user.button.menu"))
        await b.step(gus, "press", en("user.button.topup"))
        seen = await b.step(gus, "press", "t:30000")
        assert "RUB\u00a0300.00" in texts(seen) and len(crypto.invoices()) == 2

        # The provider is down: a calm text, no crash, the intent simply expires unpaid.
        crypto.outage()
        await b.step(gus, "press", en("user.button.menu"))
        await b.step(gus, "press", en("user.button.topup"))
        seen = await b.step(gus, "press", "t:10000")
        assert en("user.pay.crypto_unavailable") in texts(seen)


# ---------------------------------------------------------------------------------------------
# Fuzz: hypothesis draws the inputs, the bot (which is asyncio + trio) replays them in order.

PREFIXES = ["m", "s", "p", "b", "t", "l", "x", ""]
WORDS = ["menu", "trial", "sub", "plans", "topup", "promo", "ref", "lang", "help", "qr", "guide",
         "reissue", "reissue_ok", "auto_on", "auto_off", "android", "-", "m1", "d1", "old", "bal", "xtr",
         "cp", "ru", "en", "0", "-1", "99999999999999999999", "9001"]  # fmt: skip
callback_data = st.one_of(
    st.builds(
        lambda prefix, parts: ":".join([prefix, *parts]),
        st.sampled_from(PREFIXES),
        st.lists(st.one_of(st.sampled_from(WORDS), st.text(min_size=0, max_size=8)), max_size=3),
    ),
    st.text(min_size=1, max_size=20),
).filter(lambda data: 0 < len(data.encode()) <= 64)
actions = st.one_of(
    st.tuples(st.just("text"), st.text(min_size=1, max_size=80).filter(lambda s: s.strip() != "")),
    st.tuples(
        st.just("command"),
        st.sampled_from(["/start", "/promo", "/help", "/menu", "/language", "/ref", "/nosuch", "/buy_1"]),
        st.text(alphabet=st.characters(blacklist_categories=["Cs", "Cc"]), max_size=30),
    ),
    st.tuples(st.just("forge"), callback_data),
)


def drawn_actions(count: int) -> list[tuple[str, ...]]:
    """``count`` action sequences drawn by hypothesis (derandomized: the same on every run)."""
    drawn: list[tuple[str, ...]] = []

    @settings(max_examples=count, database=None, derandomize=True, suppress_health_check=list(HealthCheck))
    @given(actions)
    def collect(action: tuple[str, ...]) -> None:
        drawn.append(action)

    collect()
    return drawn


MONEY = (
    "SELECT (SELECT coalesce(jsonb_agg(to_jsonb(l) ORDER BY l.id), '[]') FROM ledger l)::text"
    " || (SELECT coalesce(jsonb_agg(jsonb_build_array(id, balance_minor) ORDER BY id), '[]')"
    " FROM users)::text"
    " || (SELECT count(*) FROM promo_redemptions)::text || (SELECT count(*) FROM referral_rewards)::text"
)


async def test_fuzzed_text_commands_and_callbacks_always_get_an_answer_and_never_move_money(
    db: Database,
) -> None:
    cases = drawn_actions(60)
    async with bench(db) as b:
        fay = b.emulator.add_user(9501, "Fay")
        await b.step(fay, "command", "/start")
        money = await scalar(db, MONEY)
        for case in cases:
            answers = len(b.answers_for(fay))
            kind, *args = case
            if kind == "command":
                seen = await b.step(fay, "command", args[0], args[1].strip() or None)  # type: ignore[arg-type]
            else:
                seen = await b.step(fay, kind, *args)
            assert seen or len(b.answers_for(fay)) > answers, case  # every update is answered
            assert t("en", "errors.apology") not in texts(seen), case  # and none crashed a handler
        assert await scalar(db, MONEY) == money
        assert b.dispatch.failed == 0


# The user-facing notices the units write (kind → payload fields, from atlas.storage.units.outbox
# and the vpn units); the outbox sender renders each kind's locale key with its payload.
NOTICES: dict[str, tuple[str, ...]] = {
    "trial.started": ("expires_at", "days"),
    "purchase.done": ("plan", "days", "charged_minor", "currency", "expires_at"),
    "renewal.done": ("amount_minor", "currency", "expires_at"),
    "renewal.insufficient": ("expires_at", "shortfall_minor", "currency"),
    "subscription.expired.trial": ("expired_at",),
    "subscription.expired.paid": ("expired_at",),
    "reminder.trial.6h": ("expires_at", "remaining_seconds", "threshold"),
    "reminder.trial.1h": ("expires_at", "remaining_seconds", "threshold"),
    "reminder.paid.3d": ("expires_at", "remaining_seconds", "threshold"),
    "reminder.paid.1d": ("expires_at", "remaining_seconds", "threshold"),
    "reminder.paid.6h": ("expires_at", "remaining_seconds", "threshold"),
    "key.reissued": ("expires_at",),
    "key.active": ("subscription_id", "key"),
    "referral.joined": ("referred_id", "first_name"),
    "referral.reward": ("amount_minor", "currency", "referred_id"),
}


def test_every_user_notice_renders_from_its_payload_in_every_language() -> None:
    for kind, fields in NOTICES.items():
        for language in ("ru", "en"):
            text = t(language, kind, **{name: f"<{name}>" for name in fields})
            assert text.strip() and "{" not in text, (kind, language)
