"""The crowd: one seeded random script per simulated user, and the admin's script.

Every user acts only through the Bot API emulator: commands, typed text, presses of the buttons
the bot sent, Stars payments in the emulated Telegram client, and Crypto Pay invoices paid in the
Crypto Pay emulator from the link the bot gave. Nobody writes the database. Waits such as "come
back after the trial" are in business time. Scripts run concurrently; a capacity limiter bounds
how many users are mid-conversation at once (a user waiting for tomorrow holds no slot).
"""

from __future__ import annotations

import datetime as dt
import random
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from enum import Enum

import trio

from atlas.clock import Clock, seeded_random
from atlas.demo.chat import Chat, Inboxes
from atlas.demo.clocks import sleep_business
from atlas.demo.tally import Tally
from atlas.telegram.i18n import t
from atlas.testing.botapi import BotApiEmulator
from atlas.testing.cryptopay_emulator import CryptoPayEmulator

ADMIN_ID = 900_000_001
FIRST_USER_ID = 100_000_001
PROMO_CODE = "DEMO20"
DEMO_PLAN = "d1"  # a one-day plan (atlas/demo/plans.toml), so that renewals and expiry happen in days
BROADCAST_TEXT = "Atlas demo: new servers are coming next week. Thank you for staying with us!"
_REFERRAL_LINK = re.compile(r"\?start=(ref_\w+)")
_CRYPTO_ATTEMPTS = 5
_ADMIN_ATTEMPTS = 4


def _label(key: str) -> str:
    return t("en", key)


class Persona(Enum):
    """What a user came for; drawn per user from :data:`PERSONAS`."""

    TRIALIST = "trialist"  # a trial, maybe a new key, then maybe Stars once the trial ends
    STARS = "stars"  # buys the plan with Telegram Stars
    CRYPTO = "crypto"  # buys the plan through Crypto Pay
    SAVER = "saver"  # tops up, maybe a promo code, buys from the balance, maybe auto-renews


# The rules as a table: persona → weight, then per-persona chances of the optional steps.
PERSONAS: dict[Persona, float] = {
    Persona.TRIALIST: 0.3,
    Persona.STARS: 0.2,
    Persona.CRYPTO: 0.2,
    Persona.SAVER: 0.3,
}
CHANCES = {
    "referred": 0.3,  # arrives through someone's invite link (when there is one)
    "shares_link": 0.4,  # opens "Invite friends" and shares the link
    "trial_first": 0.5,  # a buyer who takes the trial first
    "reissue": 0.35,  # a trialist who asks for a new key
    "buys_after_trial": 0.5,  # a trialist who pays with Stars once the trial is over
    "promo": 0.5,  # a saver who applies the promo code before buying
    "auto_renew": 0.7,  # a saver who turns auto-renew on
}


@dataclass
class Crowd:
    """Everything the scripts share: the emulators, the clock, the counters, the invite links."""

    emulator: BotApiEmulator
    cryptopay: CryptoPayEmulator
    clock: Clock
    horizon: dt.timedelta
    trial: dt.timedelta
    tally: Tally
    seed: int
    concurrency: int
    inboxes: Inboxes = field(init=False)
    limiter: trio.CapacityLimiter = field(init=False)
    invite_links: list[str] = field(default_factory=list)
    cryptopay_paid_at: list[float] = field(default_factory=list)  # trio times
    chats: list[Chat] = field(default_factory=list)
    promo_ready: trio.Event = field(default_factory=trio.Event)

    def __post_init__(self) -> None:
        self.inboxes = Inboxes(self.emulator)
        self.limiter = trio.CapacityLimiter(self.concurrency)
        self.ends_at = trio.current_time() + self.clock.trio_seconds(self.horizon)

    def left(self) -> float:
        """Trio seconds until the horizon: no user waits beyond it."""
        return max(0.0, self.ends_at - trio.current_time())

    async def sleep(self, business: dt.timedelta) -> None:
        """Sleep for ``business`` of business time."""
        await sleep_business(self.clock, business)

    def within(self, business: dt.timedelta, slack: float = 0.0) -> float:
        """Trio seconds that ``business`` lasts plus ``slack``, but never past the horizon."""
        return min(self.clock.trio_seconds(business) + slack, self.left())

    def chat(self, user_id: int, name: str) -> Chat:
        """A new user's chat."""
        user = self.emulator.add_user(user_id, name, language_code="en")
        chat = Chat(user, self.inboxes, self.tally.no_answer, ends_at=self.ends_at)
        self.chats.append(chat)
        return chat


# ----------------------------------------------------------------------------- steps


async def _start(crowd: Crowd, chat: Chat, rng: random.Random) -> None:
    payload = None
    if crowd.invite_links and rng.random() < CHANCES["referred"]:
        payload = rng.choice(crowd.invite_links)
    seen = await chat.command("/start", payload)
    if seen:
        crowd.tally.did("start_referred" if payload else "start")
    if rng.random() < CHANCES["shares_link"]:
        await _open_menu(chat)
        button = chat.button(_label("user.button.referral"))
        if button is not None:
            page = " ".join(r.plain_text or "" for r in await chat.press(button))
            found = _REFERRAL_LINK.search(page)
            if found:
                crowd.invite_links.append(found.group(1))


async def _open_menu(chat: Chat) -> None:
    await chat.command("/start")


async def _press(chat: Chat, label: str) -> str:
    """Press the newest button labelled ``label``; return the reply's text ('' when there is none)."""
    button = chat.button(label)
    if button is None:
        return ""
    return "\n".join(r.plain_text or "" for r in await chat.press(button))


async def _trial(crowd: Crowd, chat: Chat) -> bool:
    await _open_menu(chat)
    before = _count(chat, "trial is on")
    await _press(chat, _label("user.button.trial"))
    # Waited for, not read from the immediate reply: on a busy machine the screen's edit can come
    # after the reply window, and a trial that did start must not be counted as refused.
    if await _wait_more(crowd, chat, "trial is on", before):
        crowd.tally.did("trial")
        return True
    return False


async def _reissue(crowd: Crowd, chat: Chat) -> None:
    await _open_menu(chat)
    await _press(chat, _label("user.button.subscription"))
    await _press(chat, _label("user.button.reissue"))
    before = _count(chat, "key was replaced")
    await _press(chat, _label("user.button.reissue_confirm"))
    if await _wait_more(crowd, chat, "key was replaced", before):
        crowd.tally.did("reissue")


async def _plan_screen(chat: Chat) -> bool:
    await _open_menu(chat)
    await _press(chat, _label("user.button.plans"))
    plan = next(iter(chat.buttons(f"p:{DEMO_PLAN}")), None)
    if plan is None:
        return False
    await chat.press(plan)
    return True


async def _buy_stars(crowd: Crowd, chat: Chat) -> None:
    if not await _plan_screen(chat):
        return
    button = chat.button("Telegram Stars")
    if button is None:
        return
    invoices = [r for r in await chat.press(button) if r.invoice is not None]
    if not invoices:
        return
    outcome = await chat.user.pay_stars(invoices[-1])
    if outcome.ok:  # Telegram charged the user; the summary's database counts show it applied
        crowd.tally.did("buy_stars")


async def _pay_crypto_link(crowd: Crowd, chat: Chat, press: Callable[[], Awaitable[bool]]) -> bool:
    """Open a Crypto Pay invoice (``press`` gets the bot to send its link) and pay it; retry later
    when the bot says the service is down."""
    for _ in range(_CRYPTO_ATTEMPTS):
        if crowd.left() <= 0 or not await press():
            return False
        link = chat.button(_label("user.button.pay_open"))
        if link is not None and link.url is not None:
            paid = [i for i in crowd.cryptopay.invoices() if i.bot_invoice_url == link.url]
            if paid and paid[0].status == "active":
                await crowd.cryptopay.pay(paid[0].invoice_id)
                crowd.cryptopay_paid_at.append(trio.current_time())
                return True
        crowd.tally.crypto_retries += 1
        await crowd.sleep(dt.timedelta(hours=2))
    return False


async def _buy_crypto(crowd: Crowd, chat: Chat) -> None:
    async def press() -> bool:
        if not await _plan_screen(chat):
            return False
        button = chat.button("Crypto")
        return button is not None and bool(await chat.press(button))

    if await _pay_crypto_link(crowd, chat, press):
        crowd.tally.did("buy_cryptopay")


async def _top_up(crowd: Crowd, chat: Chat) -> bool:
    async def press() -> bool:
        await _open_menu(chat)
        await _press(chat, _label("user.button.topup"))
        amounts = chat.buttons("t:")
        return bool(amounts) and bool(await chat.press(amounts[0]))

    before = _count(chat, "balance has been topped up")
    if not await _pay_crypto_link(crowd, chat, press):
        return False
    crowd.tally.did("topup")
    # Buying from the balance needs the money there: wait for the bot to say it arrived.
    return await _wait_more(crowd, chat, "balance has been topped up", before)


async def _promo(crowd: Crowd, chat: Chat) -> None:
    await crowd.promo_ready.wait()
    replies = await chat.command("/promo", PROMO_CODE)
    if any("is applied" in (r.plain_text or "") for r in replies):
        crowd.tally.did("promo")


async def _buy_balance(crowd: Crowd, chat: Chat) -> bool:
    if not await _plan_screen(chat):
        return False
    if "is yours" in await _press(chat, "From balance"):
        crowd.tally.did("buy_balance")
        return True
    return False


async def _auto_renew(crowd: Crowd, chat: Chat) -> None:
    await _open_menu(chat)
    await _press(chat, _label("user.button.subscription"))
    if "Auto-renew from balance: on" in await _press(chat, _label("user.button.auto_on")):
        crowd.tally.did("auto_renew_on")


def _count(chat: Chat, fragment: str) -> int:
    return sum(1 for r in chat.user.chat_log() if fragment in (r.plain_text or ""))


async def _wait_more(crowd: Crowd, chat: Chat, fragment: str, before: int) -> bool:
    deadline = trio.current_time() + crowd.within(dt.timedelta(hours=6), 30)
    while _count(chat, fragment) <= before:
        left = deadline - trio.current_time()
        if left <= 0 or not await crowd.inboxes.wait(chat.id, left):
            return _count(chat, fragment) > before
    return True


# ----------------------------------------------------------------------------- scripts


async def user_script(crowd: Crowd, index: int) -> None:
    """One user's life: arrive, do what the persona does, come back later, live to the horizon."""
    rng = seeded_random(crowd.seed, f"demo-user:{index}")
    persona = rng.choices(list(PERSONAS), weights=list(PERSONAS.values()))[0]
    await crowd.sleep(crowd.horizon * rng.uniform(0.0, 0.3))
    chat = crowd.chat(FIRST_USER_ID + index, f"User{index}")
    crowd.tally.users_started += 1
    async with crowd.limiter:
        await _start(crowd, chat, rng)
        on_trial = False
        if persona is Persona.TRIALIST or rng.random() < CHANCES["trial_first"]:
            on_trial = await _trial(crowd, chat)
        if persona is Persona.TRIALIST and on_trial and rng.random() < CHANCES["reissue"]:
            await _reissue(crowd, chat)
    if on_trial and persona is not Persona.TRIALIST:
        await crowd.sleep(crowd.trial * rng.uniform(0.2, 0.6))  # buys before the trial ends
    if persona is Persona.TRIALIST and on_trial:
        await chat.wait_for("Your trial ended", crowd.within(crowd.trial, 60))
        if rng.random() < CHANCES["buys_after_trial"]:
            await crowd.sleep(dt.timedelta(hours=rng.uniform(1, 8)))
            async with crowd.limiter:
                await _buy_stars(crowd, chat)
    elif persona is Persona.STARS:
        async with crowd.limiter:
            await _buy_stars(crowd, chat)
    elif persona is Persona.CRYPTO:
        async with crowd.limiter:
            await _buy_crypto(crowd, chat)
    elif persona is Persona.SAVER:
        async with crowd.limiter:
            if await _top_up(crowd, chat):
                if rng.random() < CHANCES["promo"]:
                    await _promo(crowd, chat)
                if await _buy_balance(crowd, chat) and rng.random() < CHANCES["auto_renew"]:
                    await _auto_renew(crowd, chat)
    # Stay to the horizon: the workers' notices (renewal, expiry) still come to this chat.
    await trio.sleep(crowd.left())
    crowd.tally.users_done += 1


# What the workers told the user, as the user saw it (flow → a fragment of the notice).
NOTICES = {
    "trial_warned": "Your trial ends in about",
    "trial_expired": "Your trial ended",
    "renewed": "Your subscription was renewed",
    "paid_expired": "Your subscription ended",
    "broadcast": BROADCAST_TEXT,
}


def _count_notices(crowd: Crowd) -> None:
    """Count, per flow, the users who got its notice (once the run is over)."""
    for chat in crowd.chats:
        for flow, fragment in NOTICES.items():
            if chat.saw(fragment):
                crowd.tally.did(flow)


async def admin_script(crowd: Crowd) -> None:
    """The shop's admin: creates the promo code at once, sends a broadcast half-way through (each
    user who received it counts as the broadcast flow)."""
    admin = crowd.chat(ADMIN_ID, "Admin")
    for _ in range(_ADMIN_ATTEMPTS):
        replies = await admin.command("/promo_new", f"{PROMO_CODE} percent 20 uses=100000")
        if any(r.plain_text and ("Promo code created" in r.plain_text or "already exists" in r.plain_text)
               for r in replies):  # fmt: skip
            break
    crowd.promo_ready.set()
    await crowd.sleep(crowd.horizon * 0.5)
    # The admin never queues behind the crowd for a slot.
    for _ in range(_ADMIN_ATTEMPTS):
        # An answer lost to a 429 (the admin chat also gets the crash alerts): start over.
        await admin.command("/broadcast")
        await _press(admin, t("en", "admin.broadcast.segment_all"))
        await admin.text(BROADCAST_TEXT)
        if await _press(admin, t("en", "admin.broadcast.confirm")):
            break


async def run_crowd(crowd: Crowd, users: int) -> None:
    """Every user's script and the admin's, concurrently; returns when all are done."""
    async with trio.open_nursery() as nursery:
        nursery.start_soon(admin_script, crowd)
        for index in range(users):
            nursery.start_soon(user_script, crowd, index)
    _count_notices(crowd)
