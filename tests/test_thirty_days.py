"""The whole system lives thirty virtual days on trio's MockClock, with 1,000 users.

Everything runs as ``atlas run`` builds it (``build_tree`` through :func:`running_tree`): storage,
web, every worker (renewal, trial notices, expiry, reminders, vpn_controller, outbox sender,
broadcaster, Stars reconciler, Crypto Pay watcher, crash-report pruner) and the bot, against real
PostgreSQL, the Bot API emulator (the real aiogram client over HTTP), a VPN node emulator and the
Crypto Pay emulator.

**Time.** The business clock runs at ``SPEED = 3600`` (one trio second is one business hour) with
``ATLAS_TICK_FLOOR = 1`` trio second, so every periodic worker (all have business periods of an hour
or less) ticks once per business hour (``atlas.clock.tick_period``): 720 ticks per worker in the
month, and "on time" below means within ``ON_TIME``, one tick period. An hour
is also the longest period that can honour the trial's 1-hour warning. Operational time (timeouts,
leases, retries, the outbox's 30/s and 1/s-per-chat pacing) stays in trio seconds: a broadcast of
1,000 messages takes ~34 trio seconds, about a business day and a half, as a real one takes half a
minute. The alternative, speed 1 with a floor of 3,600 trio seconds, was turned down: the floor may
never lengthen a period (production must stay exactly as it was), and every lease, timeout and
pacing gap would then be a business second. The MockClock autojumps with a cushion (``AUTOJUMP``)
and, beyond trio's own autojump, never while a query is out (:class:`StorageAwareAutojump`): with
real sockets and PostgreSQL in flight the clock may only jump once everything is idle (DESIGN.md,
"Tests"); during start-up it does not jump at all and during shutdown only after a full idle second
(their only timers are timeouts). Each distinct wake-up (a tick, a pacing slot) costs one cushion of
wall time; the rest is PostgreSQL round trips and the tree's own work. Measured (docs/architecture.md,
"The thirty-day test"): ~8,000 ticks and ~17,800 jumps for the month. The tests take ``month_clock``
themselves: pytest-trio runs a test on a clock fixture only if the test function asks for it (through
another fixture, the test would silently run on the real clock; the driver refuses to).

**Determinism.** All due moments are derived from the seed (cohorts, start hours, balances), and
every scripted action passes its *scheduled* business time as ``now``, never "whatever the clock
says when the action runs". Workers tick in phase (the seeded first-tick jitter, then exactly one
period apart), so a late wake-up moves when a tick *runs* but not which due items it takes. The
digest covers what the business clock made (balances, ledger kinds and amounts, subscription states
and expiries, outbox rows by dedupe key and state, keys per state, the node's key count, every
chat's delivered texts); it leaves out what cannot be seeded (UUIDs, tokens, invoice payloads,
sent-at timestamps).
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import hashlib
import json
import math
import random
import re
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

from atlas.clock import Clock
from atlas.domain import load_plan_catalog, threshold_label
from atlas.storage import Database, DatabaseSettings, Tx
from atlas.storage.loop import StorageLoop
from atlas.storage.units.admin import admin_adjust_balance
from atlas.storage.units.broadcasts import confirm_broadcast, create_broadcast
from atlas.storage.units.expiry import expiry_notice_key
from atlas.storage.units.payments import attach_external_id, create_payment_intent
from atlas.storage.units.plans import sync_plans
from atlas.storage.units.purchases import buy_plan_from_balance
from atlas.storage.units.subscriptions import set_auto_renew, start_trial
from atlas.storage.units.users import register_user
from atlas.storage.units.vpn import canonical_key_email
from atlas.testing.botapi import BotApiEmulator
from atlas.testing.cryptopay_emulator import CryptoPayEmulator
from atlas.testing.invariants import audit, deliveries_from, node_keys_of
from atlas.testing.node_emulator import NodeEmulator
from tests._running_tree import running_tree
from tests.conftest import TEMPLATE, PgServer, _scratch_database

SPEED = 3600.0
TICK_FLOOR = 1.0
TICK = dt.timedelta(hours=1)  # one tick period of every periodic worker, in business time
# How late "on time" may be: one tick period. The clock does not move while a unit of work is out
# (StorageAwareAutojump), so a worker's tick runs at its due instant and takes everything due by then.
ON_TIME = TICK
AUTOJUMP = 0.001
T0 = dt.datetime(2026, 1, 5, tzinfo=dt.UTC)
DAYS = 30
DETERMINISM_USERS = 40
DETERMINISM_DAYS = 6  # the late-trial cohort needs > 5 days
USERS = 1000
ADMIN = 900_000_001
NODE_TOKEN = "thirty-days-node-token-0123456789"
CRYPTO_TOKEN = "4242:THIRTYDAYS"
PRICE = 10_000  # the weekly plan, in kopecks (100.00 RUB)
PLAN_DAYS = 7
RENEW_WINDOW = dt.timedelta(hours=24)
# Retries 5 hours apart: attempts at -24, -19, -14, -9, -4 and +1 hours around an expiry, so that no
# retry falls in the hour of the expiry itself (the expiry worker would skip the row the renewal
# worker holds locked, and expire it a tick later).
RETRY_AFTER = dt.timedelta(hours=5)
BROADCAST_TEXT = "Atlas news: a new node in Frankfurt"
PLANS = f"""
[[plans]]
code = "w1"
duration_days = {PLAN_DAYS}
prices = {{ RUB = {PRICE} }}
titles = {{ ru = "1 неделя", en = "1 week" }}
"""

# ----------------------------------------------------------------------------- the population


@dataclasses.dataclass(frozen=True)
class Person:
    """One simulated user and what the seed decided for them.

    Cohorts: ``trial`` (a trial, never pays), ``late_trial`` (a trial started during the month),
    ``renews`` (weekly plan, auto-renew, balance for every renewal), ``runs_dry`` (auto-renew,
    balance for one renewal), ``tops_up`` (auto-renew, no balance at the first renewal window, a
    Crypto Pay top-up 9 hours into it), ``lapses`` (weekly plan, no auto-renew).
    """

    user_id: int
    cohort: str
    start: dt.datetime  # when the trial or the first purchase happened (business time)
    renewals_funded: int  # renewals the starting balance pays for (paid cohorts)


COHORTS = (
    ("trial", 0.30),
    ("late_trial", 0.15),
    ("renews", 0.25),
    ("runs_dry", 0.12),
    ("tops_up", 0.08),
    ("lapses", 0.10),
)


def population(seed: int, users: int, days: int = DAYS) -> list[Person]:
    """The users, their cohorts and start times: a pure function of ``seed``."""
    rng = random.Random(f"thirty-days:{seed}")
    end = T0 + dt.timedelta(days=days)
    people: list[Person] = []
    while len(people) < users:
        n = len(people)
        cohort = rng.choices([c for c, _ in COHORTS], weights=[w for _, w in COHORTS])[0]
        if cohort == "trial":  # started before T0, still running at T0
            start = T0 - dt.timedelta(hours=rng.randrange(0, 60))
        elif cohort == "late_trial":  # started during the month, ends before it does
            start = T0 + dt.timedelta(hours=rng.randrange(24, 24 * (days - 4)), minutes=30)
        else:  # bought the weekly plan in the days before T0: every reminder threshold is after T0
            start = T0 - dt.timedelta(hours=rng.randrange(1, 90))
        funded = {"renews": 6, "runs_dry": 1}.get(cohort, 0)
        person = Person(user_id=10_000 + n, cohort=cohort, start=start, renewals_funded=funded)
        if all(abs(moment - end) > MARGIN for moment in due_moments(person, end)):
            people.append(person)  # else draw again: see MARGIN
    return people


MARGIN = dt.timedelta(hours=8)
SETTLE = dt.timedelta(hours=4)  # business time after the end for the last sends (less than MARGIN)
"""No due moment of anyone falls this close to the end of the run: what happens then would depend
on how the last ticks fall (and the run goes on while the outbox settles)."""


def due_moments(person: Person, end: dt.datetime) -> list[dt.datetime]:
    """Every moment at which something is due for ``person`` (expiries, windows, warnings, top-up)."""
    moments = []
    for expiry in expected_expiries(person, end + 4 * MARGIN):
        moments += [expiry, expiry - RENEW_WINDOW, *(expiry - t for t in PAID_WARNINGS + TRIAL_WARNINGS)]
    if person.cohort == "tops_up":
        moments.append(top_up_time(person))
    return moments


def expected_expiries(person: Person, end: dt.datetime) -> list[dt.datetime]:
    """Every expiry the subscription goes through before ``end``: the first, then one per renewal."""
    if person.cohort in ("trial", "late_trial"):
        return [person.start + dt.timedelta(days=3)]
    first = person.start + dt.timedelta(days=PLAN_DAYS)
    if person.cohort == "lapses":
        return [first]
    renewals = {"renews": 99, "runs_dry": 1, "tops_up": 99}[person.cohort]
    expiries = [first]
    while len(expiries) <= renewals and expiries[-1] - RENEW_WINDOW < end:
        expiries.append(expiries[-1] + dt.timedelta(days=PLAN_DAYS))
    return expiries


def top_up_time(person: Person) -> dt.datetime:
    """The ``tops_up`` cohort pays 7 hours into its first renewal window, 2 hours after the second
    attempt: it is charged on the renewal tick after the watcher applies the top-up."""
    return person.start + dt.timedelta(days=PLAN_DAYS) - RENEW_WINDOW + RETRY_AFTER + dt.timedelta(hours=2)


def renewal_due(person: Person, expiry: dt.datetime, first: bool) -> tuple[dt.datetime, dt.timedelta]:
    """When the renewal of the period ending at ``expiry`` is due, and within how long it must come.

    Its window opens, within a tick; for the first renewal of ``tops_up``, the top-up: the watcher
    applies it within a tick, a top-up clears the retry wait, the next renewal tick charges.
    """
    if person.cohort == "tops_up" and first:
        return top_up_time(person), ON_TIME + TICK
    return expiry - RENEW_WINDOW, ON_TIME


# ----------------------------------------------------------------------------- seeding (units of work)


async def seed(db: Database, people: list[Person]) -> None:
    """Register everyone, fund and sell the weekly plan, start the trials that began before T0."""
    catalog = load_plan_catalog(PLANS, required_currencies=("RUB",))
    await db.run(sync_plans, catalog=catalog, now=T0 - dt.timedelta(days=30))  # as the storage child does
    for person in people:
        if person.cohort == "late_trial":
            at = person.start - dt.timedelta(days=1)
            await db.run(
                register_user,
                user_id=person.user_id,
                username=None,
                first_name=f"U{person.user_id}",
                language="en",
                start_payload=None,
                now=min(at, T0),
            )
            continue
        await db.run(
            register_user,
            user_id=person.user_id,
            username=None,
            first_name=f"U{person.user_id}",
            language="en",
            start_payload=None,
            now=person.start - dt.timedelta(minutes=5),
        )
        if person.cohort == "trial":
            await db.run(start_trial, user_id=person.user_id, trial_days=3, now=person.start)
            continue
        await db.run(
            admin_adjust_balance,
            admin_id=ADMIN,
            user_id=person.user_id,
            amount_minor=PRICE * (1 + person.renewals_funded),
            reason="seed",
            idempotency_key=f"seed:{person.user_id}",
            now=person.start - dt.timedelta(minutes=1),
        )
        await db.run(
            buy_plan_from_balance,
            user_id=person.user_id,
            plan_code="w1",
            currency="RUB",
            promo_code=None,
            idempotency_key=f"first:{person.user_id}",
            now=person.start,
        )
        await db.run(
            set_auto_renew, user_id=person.user_id, enabled=person.cohort != "lapses", now=person.start
        )


# ----------------------------------------------------------------------------- the month's script


@dataclasses.dataclass(order=True, frozen=True)
class Action:
    """Something a user or the admin does at a business moment."""

    at: dt.datetime
    order: int
    what: str = dataclasses.field(compare=False)
    person: Person | None = dataclasses.field(compare=False, default=None)


def broadcast_time(days: int) -> dt.datetime:
    """The admin broadcasts to everyone a third into the run."""
    return T0 + dt.timedelta(days=days // 3, hours=3)


def script(people: list[Person], days: int) -> list[Action]:
    """Late trials, Crypto Pay top-ups, the admin's broadcast: in business-time order."""
    actions = [Action(broadcast_time(days), 0, "broadcast")]
    for n, person in enumerate(people):
        if person.cohort == "late_trial":
            actions.append(Action(person.start, n + 1, "trial", person))
        elif person.cohort == "tops_up":
            actions.append(Action(top_up_time(person), n + 1, "top_up", person))
    return sorted(actions)


async def play(
    clock: Clock, db: Callable[[], Database], crypto: CryptoPayEmulator, actions: list[Action]
) -> None:
    """Do each action at its business time, passing that scheduled time as ``now``."""
    for action in actions:
        wait = clock.trio_seconds(action.at - clock.now())
        if wait > 0:
            await trio.sleep(wait)
        now = action.at  # the scheduled moment, not the clock's: the run stays reproducible
        if action.what == "broadcast":
            draft = await db().run(
                create_broadcast, admin_id=ADMIN, segment="all", text=BROADCAST_TEXT, now=now
            )
            await db().run(
                confirm_broadcast,
                broadcast_id=draft.id,
                admin_id=ADMIN,
                progress_chat_id=ADMIN,
                progress_message_id=1,
                now=now,
            )
            continue
        assert action.person is not None
        user_id = action.person.user_id
        if action.what == "trial":
            await db().run(start_trial, user_id=user_id, trial_days=3, now=now)
        else:  # a Crypto Pay top-up for six renewals: the invoice is paid, the watcher applies it
            intent = await db().run(
                create_payment_intent,
                user_id=user_id,
                provider="cryptopay",
                purpose="topup",
                currency="RUB",
                balance_currency="RUB",
                ttl=dt.timedelta(hours=6),
                now=now,
                amount_minor=6 * PRICE,
            )
            invoice = crypto.create_invoice(
                currency_type="fiat",
                fiat="RUB",
                amount=str(Decimal(6 * PRICE) / 100),
                accepted_assets="USDT",
                payload=intent.payload,
            )
            await db().run(
                attach_external_id, payment_id=intent.payment_id, external_id=str(invoice.invoice_id)
            )
            crypto.mark_paid(invoice.invoice_id)


# ----------------------------------------------------------------------------- what must hold


TRIAL_WARNINGS = (dt.timedelta(hours=6), dt.timedelta(hours=1))
PAID_WARNINGS = (dt.timedelta(days=3), dt.timedelta(days=1), dt.timedelta(hours=6))


def expected_reminders(
    person: Person, expiries: list[dt.datetime], end: dt.datetime
) -> dict[str, dt.datetime]:
    """The reminders the person must get before ``end``: by threshold label, when each is due."""
    return {label: due for label, due in _reminders(person, expiries).items() if due < end}


def _reminders(person: Person, expiries: list[dt.datetime]) -> dict[str, dt.datetime]:
    if person.cohort in ("trial", "late_trial"):
        return {threshold_label(t): expiries[0] - t for t in TRIAL_WARNINGS}
    if person.cohort == "lapses":
        return {threshold_label(t): expiries[0] - t for t in PAID_WARNINGS}
    if person.cohort == "runs_dry":  # covered in its first week, not in its second
        return {threshold_label(t): expiries[1] - t for t in PAID_WARNINGS} if len(expiries) > 1 else {}
    if person.cohort == "tops_up":  # uncovered until the top-up, 15 hours before its first expiry
        return {threshold_label(t): expiries[0] - t for t in PAID_WARNINGS[:2]}
    return {}  # renews: the balance always covers the renewal, so no reminder would be true


def check_month(month: Month, people: list[Person], end: dt.datetime) -> None:
    """Every assertion of the month, person by person; the failures are collected and shown together."""
    problems: list[str] = []
    if not month.audit_ok:
        problems.append(month.audit_text)
    if month.crash_counts:
        problems.append(f"crash reports during the month: {month.crash_counts}: {month.crashes}")
    if month.unsettled:
        problems.append(f"{month.unsettled} outbox rows or key changes still pending after the month")
    subs = {row["user_id"]: row for row in month.subscriptions}
    outbox_by_chat: dict[int, list[dict[str, Any]]] = {}
    for row in month.outbox:
        outbox_by_chat.setdefault(row["chat_id"], []).append(row)
    renewals: dict[int, list[dt.datetime]] = {}
    for row in month.ledger:
        if row["kind"] == "renewal":
            renewals.setdefault(row["user_id"], []).append(row["created_at"])
    on_node = {canonical_key_email(email) for keys in month.node_keys.values() for email in keys}
    for person in people:
        who = f"user {person.user_id} ({person.cohort})"
        sub = subs.get(person.user_id)
        if sub is None:
            problems.append(f"{who}: no subscription")
            continue
        expiries = expected_expiries(person, end)
        final = expiries[-1]
        if sub["expires_at"] != final:
            problems.append(f"{who}: expires {sub['expires_at']}, expected {final}")
        ended = final <= end
        if (sub["status"] == "expired") != ended:
            problems.append(f"{who}: status {sub['status']} although the last expiry is {final}")
        rows = outbox_by_chat.get(person.user_id, [])
        # Trial warnings and reminders: exactly the expected thresholds, each once, on time.
        sent: dict[str, dict[str, Any]] = {}
        for row in rows:
            key = row["dedupe_key"]
            if key.startswith("reminder:"):
                label = key.rsplit(":", 1)[1]
                if label in sent:
                    problems.append(f"{who}: reminder {label} twice")
                sent[label] = row
        expected = expected_reminders(person, expiries, end)
        if set(sent) != set(expected):
            problems.append(f"{who}: reminders {sorted(sent)}, expected {sorted(expected)}")
        for label, due in expected.items():
            reminder = sent.get(label)
            if reminder is not None and not due <= reminder["created_at"] < due + ON_TIME:
                problems.append(f"{who}: reminder {label} due {due} enqueued {reminder['created_at']}")
            if reminder is not None and reminder["state"] != "sent":
                problems.append(f"{who}: reminder {label} ended {reminder['state']}")
        # Expiry on time: the notice is written by the expiry itself, within one tick period.
        if ended:
            notice = [row for row in rows if row["dedupe_key"] == expiry_notice_key(sub["id"], final)]
            if len(notice) != 1:
                problems.append(f"{who}: {len(notice)} expiry notices for {final}")
            elif not final <= notice[0]["created_at"] < final + ON_TIME:
                problems.append(f"{who}: expired at {notice[0]['created_at']}, due {final}")
        # Renewals: once per period, each within a tick of when it is due.
        charged = sorted(renewals.get(person.user_id, []))
        if len(charged) != len(expiries) - 1:
            problems.append(f"{who}: {len(charged)} renewals charged, expected {len(expiries) - 1}")
        for n, (previous, at) in enumerate(zip(expiries, charged, strict=False)):
            due, within = renewal_due(person, previous, first=n == 0)
            if not due <= at < due + within:
                problems.append(f"{who}: renewal for {previous} charged at {at}, due {due}")
        failed = [row for row in rows if row["kind"] == "renewal.insufficient"]
        dry = {"runs_dry": len(expiries) > 1 and expiries[1] - RENEW_WINDOW < end, "tops_up": True}
        dry_periods = int(dry.get(person.cohort, False))
        if len(failed) != dry_periods:
            problems.append(f"{who}: {len(failed)} 'not enough balance' notices, expected {dry_periods}")
        # Every message was delivered once: the chat saw each sent row once, and the broadcast once.
        texts = month.chats.get(person.user_id, [])
        if texts.count(BROADCAST_TEXT) != 1:
            problems.append(f"{who}: the broadcast arrived {texts.count(BROADCAST_TEXT)} times")
        delivered_rows = sum(1 for row in rows if row["state"] == "sent")
        if len(texts) != delivered_rows:
            problems.append(f"{who}: {len(texts)} messages in the chat, {delivered_rows} outbox rows sent")
    # Keys: an expired subscription's key is gone from the node, an active one's is there.
    present = {row["uuid"] for row in month.keys if row["desired"] == "present"}
    if on_node != present:
        problems.append(f"node keys differ: {len(on_node - present)} extra, {len(present - on_node)} missing")
    for row in month.subscriptions:
        if row["status"] == "expired" and any(
            k["uuid"] in on_node for k in month.keys if k["user_id"] == row["user_id"]
        ):
            problems.append(f"user {row['user_id']}: expired, but a key of theirs is on the node")
    assert not problems, f"{len(problems)} problems:\n" + "\n".join(problems[:40])


# ----------------------------------------------------------------------------- reading the outcome


async def _subscriptions(tx: Tx) -> list[dict[str, Any]]:
    rows = await tx.fetch(
        "SELECT s.id, s.user_id, s.kind, s.status, s.plan_code, s.expires_at, s.auto_renew, u.balance_minor "
        "FROM subscriptions s JOIN users u ON u.id = s.user_id ORDER BY s.user_id LIMIT 5000"
    )
    return [dict(row) for row in rows]


async def _outbox(tx: Tx) -> list[dict[str, Any]]:
    rows = await tx.fetch(
        "SELECT chat_id, kind, dedupe_key, state, created_at FROM outbox "
        "ORDER BY chat_id, dedupe_key LIMIT 50000"
    )
    return [dict(row) for row in rows]


async def _ledger(tx: Tx) -> list[dict[str, Any]]:
    rows = await tx.fetch(
        "SELECT user_id, kind, amount_minor, created_at FROM ledger "
        "ORDER BY user_id, created_at, kind LIMIT 50000"
    )
    return [dict(row) for row in rows]


async def _keys(tx: Tx) -> list[dict[str, Any]]:
    rows = await tx.fetch(
        "SELECT s.user_id, k.uuid, k.desired FROM vpn_keys k "
        "JOIN subscriptions s ON s.id = k.subscription_id "
        "ORDER BY s.user_id, k.id LIMIT 10000"
    )
    return [dict(row) for row in rows]


async def _payments(tx: Tx) -> list[dict[str, Any]]:
    rows = await tx.fetch(
        "SELECT user_id, provider, purpose, amount_minor, status FROM payments "
        "ORDER BY user_id, id LIMIT 5000"
    )
    return [dict(row) for row in rows]


_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
"""Keys are random UUIDs (uuid4): a dedupe key that names one is digested without it."""


@dataclasses.dataclass
class Month:
    """What the month left behind, read once the tree has stopped."""

    subscriptions: list[dict[str, Any]]
    outbox: list[dict[str, Any]]
    ledger: list[dict[str, Any]]
    keys: list[dict[str, Any]]
    payments: list[dict[str, Any]]
    chats: dict[int, list[str]]
    node_keys: dict[str, set[str]]
    audit_text: str
    audit_ok: bool
    wall_seconds: float
    cpu_seconds: float  # of this process (the tree, the emulators, the storage thread)
    crash_counts: dict[str, int]
    ticks: dict[str, int]
    unsettled: int
    crashes: list[str]

    def differences(self, other: Month) -> list[str]:
        """What differs between two months' digested documents (for a failing determinism test)."""
        mine, theirs = self.document(), other.document()
        found = []
        for part in sorted(mine):
            if mine[part] != theirs[part]:
                a, b = mine[part], theirs[part]
                if isinstance(a, list) and isinstance(b, list):
                    only_a = [x for x in a if x not in b][:5]
                    only_b = [x for x in b if x not in a][:5]
                    found.append(f"{part}: only in the first {only_a}; only in the second {only_b}")
                else:
                    found.append(f"{part} differs")
        return found

    def digest(self) -> str:
        """sha256 over what the business clock made; UUIDs, tokens and sent-at times left out."""
        blob = json.dumps(self.document(), sort_keys=True, default=str).encode()
        return hashlib.sha256(blob).hexdigest()

    def document(self) -> dict[str, Any]:
        """The normalised outcome the digest is taken of."""
        on_node = {name: len(keys) for name, keys in self.node_keys.items()}
        keys_by_state = Counter((row["user_id"], row["desired"]) for row in self.keys)
        document = {
            "subscriptions": [{k: v for k, v in row.items() if k != "id"} for row in self.subscriptions],
            "outbox": sorted(
                (row["chat_id"], row["kind"], _UUID.sub("<uuid>", row["dedupe_key"]), row["state"])
                for row in self.outbox
            ),
            "ledger": [(row["user_id"], row["kind"], row["amount_minor"]) for row in self.ledger],
            "keys": sorted(f"{user}:{state}:{n}" for (user, state), n in keys_by_state.items()),
            "payments": self.payments,
            "chats": [[chat, sorted(texts)] for chat, texts in sorted(self.chats.items())],
            "node": on_node,
        }
        return json.loads(json.dumps(document, sort_keys=True, default=str))  # type: ignore[no-any-return]


class StorageAwareAutojump:
    """Jumps the MockClock as its autojump does, but never while a storage-loop call is in flight.

    trio's autojump jumps once every task has been blocked for the cushion; but a task waiting for
    PostgreSQL (on the storage loop's thread) *is* blocked, and on a loaded machine a query takes
    longer than any cushion that keeps a month short: the clock would then run on (a jump to each
    next deadline, ten worker ticks per business hour) while a unit is in flight, ticks would be
    skipped and timeouts could fire. So this driver also waits until no ``StorageLoop.call`` (and no
    trio worker thread) is in flight: the outcome should not depend on how fast the machine answers. Off while
    ``enabled`` is False (start-up: its only timers are timeouts).
    """

    def __init__(self, clock: trio.testing.MockClock, cushion: float) -> None:
        self.clock = clock
        self.cushion = cushion
        self.enabled = False
        self.in_flight = 0
        self.jumps = 0

    def watch(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """Count the storage-loop calls in flight (every unit of work and lock step is one)."""
        original = StorageLoop.call
        gate = self

        async def call(loop: StorageLoop, fn: Callable[..., Any], /, *args: Any) -> Any:
            gate.in_flight += 1
            try:
                return await original(loop, fn, *args)
            finally:
                gate.in_flight -= 1

        monkeypatch.setattr(StorageLoop, "call", call)

    async def run(self) -> None:
        """Jump to the next deadline whenever everything is idle and no query is out."""
        if trio.lowlevel.current_clock() is not self.clock:
            # pytest-trio runs a test on a Clock fixture only if the test function itself takes it;
            # reached through another fixture, the test silently runs on the real clock.
            raise RuntimeError("the test is not running on this MockClock: take `month_clock` in the test")
        while True:
            await trio.testing.wait_all_tasks_blocked(self.cushion)
            threads = trio.to_thread.current_default_thread_limiter().statistics().borrowed_tokens
            if not self.enabled or self.in_flight or threads:
                await trio.lowlevel.checkpoint()  # look again after another cushion
                continue
            jump = trio.lowlevel.current_statistics().seconds_to_next_deadline
            if 0 < jump < math.inf:
                self.jumps += 1
                self.clock.jump(jump)


async def live_a_month(
    fresh_database: str,
    jumper: StorageAwareAutojump,
    tmp_path: Path,
    *,
    seed_value: int,
    users: int,
    days: int,
) -> Month:
    """Seed, run the whole tree for ``days`` business days, let the outbox settle, read everything."""
    people = population(seed_value, users, days)
    jumper.enabled = False  # seeding: no tree yet, and no timeout may be jumped to
    month_cushion = jumper.cushion
    db = await Database.open(DatabaseSettings(dsn=fresh_database, pool_size=2))
    try:
        await seed(db, people)
    finally:
        await db.close()
    end = T0 + dt.timedelta(days=days)
    business = Clock(T0, speed=SPEED)  # the MockClock has not moved: T0 is now
    emulator = BotApiEmulator(bot_username="atlas_month_bot", clock=business)
    for person in people:
        emulator.add_user(person.user_id, f"U{person.user_id}")
    emulator.add_user(ADMIN, "Admin")
    node = NodeEmulator(NODE_TOKEN)
    crypto = CryptoPayEmulator(CRYPTO_TOKEN, clock=business, seed=seed_value)
    nodes_file = tmp_path / f"nodes-{seed_value}.toml"
    plans_file = tmp_path / "plans.toml"
    plans_file.write_text(PLANS)
    wall_started = time.perf_counter()  # reported, never asserted on (the machine is shared)
    cpu_started = time.process_time()
    async with trio.open_nursery() as outside:
        await outside.start(crypto.run)
        node_url = await outside.start(node.run)
        nodes_file.write_text(
            f'[[nodes]]\nname = "month-1"\nagent_url = "{node_url}"\ntoken = "{NODE_TOKEN}"\n'
            'public_host = "127.0.0.1"\nport = 443\nsecurity = "none"\n'
        )
        # Start-up has no timer of its own to jump to, only timeouts: no jumps until the tree is up.
        outside.start_soon(jumper.run)
        async with running_tree(
            fresh_database,
            emulator=emulator,
            clock=business,
            nodes_file=nodes_file,
            plans_file=plans_file,
            cryptopay_token=CRYPTO_TOKEN,
            cryptopay_base_url=crypto.api_url,
            admin_ids=[ADMIN],
            seed=seed_value,
            clock_speed=SPEED,
            tick_floor=TICK_FLOOR,
            currency="RUB",
            renew_window_hours=RENEW_WINDOW / dt.timedelta(hours=1),
            renew_retry_hours=RETRY_AFTER / dt.timedelta(hours=1),
        ) as tree:
            services = tree.services
            fleet = services.fleet
            assert fleet is not None
            jumper.enabled = True  # now every worker has a tick at most a period away
            await play(business, services.require_db, crypto, script(people, days))
            await trio.sleep(max(0.0, business.trio_seconds(end - business.now())))
            # The month is over: a few business hours for the last sends and key changes to land.
            # Nothing is due within MARGIN of the end, so this changes nothing else; the audit then
            # requires every outbox row settled.
            await trio.sleep(business.trio_seconds(SETTLE))
            month_db = services.require_db()
            node_keys = await node_keys_of(fleet)
            report = await audit(
                month_db,
                now=business.now(),
                node_keys=node_keys,
                deliveries=deliveries_from(_all_records(emulator)),
                require_outbox_settled=True,
                renew_window=RENEW_WINDOW,
            )
            month = Month(
                subscriptions=await month_db.run(_subscriptions),
                outbox=await month_db.run(_outbox),
                ledger=await month_db.run(_ledger),
                keys=await month_db.run(_keys),
                payments=await month_db.run(_payments),
                chats={
                    chat: [r.plain_text or "" for r in emulator.chat_log(chat) if r.kind == "message"]
                    for chat in emulator.users
                    if chat != ADMIN
                },
                node_keys=node_keys,
                audit_text=report.describe(),
                audit_ok=report.ok,
                wall_seconds=time.perf_counter() - wall_started,
                cpu_seconds=time.process_time() - cpu_started,
                crash_counts=dict(services.crash_counts),
                ticks={name: actor.statistics().ticks for name, actor in services.actors.items()},
                unsettled=await month_db.run(_unsettled),
                crashes=[
                    f"{r.kind} {r.path}: {r.exc_type}: {r.message}"[:300] for r in services.ring.latest(10)
                ],
            )
            # Stopping: jump only when truly idle, so that no shutdown timeout fires on a busy machine.
            jumper.cushion = 1.0
        jumper.enabled = False  # the fixtures' own clean-up has no timer to jump to
        jumper.cushion = month_cushion  # for the next run (the determinism test runs three)
        outside.cancel_scope.cancel()
    return month


async def _unsettled(tx: Tx) -> int:
    """Outbox rows still to send, plus key changes still to make on a node."""
    pending = await tx.fetchval("SELECT count(*) FROM outbox WHERE state = 'pending'")
    keys = await tx.fetchval("SELECT count(*) FROM vpn_key_nodes WHERE pending")
    return int(pending) + int(keys)


def _all_records(emulator: BotApiEmulator) -> list[Any]:
    return [record for chat in emulator.users for record in emulator.chat_log(chat)]


@pytest.fixture
def month_clock() -> trio.testing.MockClock:
    """trio's MockClock for the whole test (pytest-trio runs a test on the clock fixture it gets).

    It never autojumps by itself: :class:`StorageAwareAutojump` drives it during the month.
    """
    return trio.testing.MockClock(autojump_threshold=math.inf)


@pytest.fixture
def jumper(month_clock: trio.testing.MockClock, monkeypatch: pytest.MonkeyPatch) -> StorageAwareAutojump:
    """The month's clock driver, watching the storage loop."""
    driver = StorageAwareAutojump(month_clock, AUTOJUMP)
    driver.watch(monkeypatch)
    return driver


@pytest.mark.slow
async def test_the_whole_system_lives_thirty_days(
    month_clock: trio.testing.MockClock,
    jumper: StorageAwareAutojump,
    bridge: None,
    fresh_database: str,
    tmp_path: Path,
) -> None:
    month = await live_a_month(fresh_database, jumper, tmp_path, seed_value=1, users=USERS, days=DAYS)
    jumps = jumper.jumps
    print(
        f"thirty days, {USERS} users: {month.wall_seconds:.1f} s wall, {month.cpu_seconds:.1f} s CPU, "
        f"{jumps} jumps; ticks {month.ticks}"
    )
    check_month(month, population(1, USERS, DAYS), T0 + dt.timedelta(days=DAYS))


@asynccontextmanager
async def another_database(pg_server: PgServer) -> AsyncIterator[str]:
    """A fresh migrated database besides the fixture's (a run of its own needs one)."""
    async with contextlib.aclosing(_scratch_database(pg_server, TEMPLATE)) as databases:  # type: ignore[type-var]
        async for dsn in databases:
            yield dsn
            return


@pytest.mark.slow
async def test_the_same_seed_gives_the_same_month_and_another_seed_another(
    month_clock: trio.testing.MockClock,
    jumper: StorageAwareAutojump,
    bridge: None,
    fresh_database: str,
    pg_server: PgServer,
    tmp_path: Path,
) -> None:
    """Three runs of a shorter, smaller month: seed 7, seed 7 again, seed 8.

    Shorter than the thirty-day test to keep three runs inside the suite's time (the determinism
    argument is the same: phase-locked ticks and scheduled ``now``s, whatever the length).
    """
    runs = []
    for index, seed_value in enumerate((7, 7, 8)):
        if index == 0:
            runs.append(
                await live_a_month(
                    fresh_database,
                    jumper,
                    tmp_path,
                    seed_value=seed_value,
                    users=DETERMINISM_USERS,
                    days=DETERMINISM_DAYS,
                )
            )
            continue
        async with another_database(pg_server) as dsn:
            runs.append(
                await live_a_month(
                    dsn,
                    jumper,
                    tmp_path,
                    seed_value=seed_value,
                    users=DETERMINISM_USERS,
                    days=DETERMINISM_DAYS,
                )
            )
    first, again, other = (run.digest() for run in runs)
    for run in runs:
        assert run.audit_ok, run.audit_text
    if first != again:
        pytest.fail("the same seed gave two outcomes:\n" + "\n".join(runs[0].differences(runs[1])))
    assert first != other
