"""Helpers of the real-fault tests: a PostgreSQL of the test's own, due work, users under load.

The session's embedded server (``tests/conftest.py``) is shared by every test, so a test that stops
or restarts PostgreSQL starts a second embedded server in a directory of its own
(:func:`own_postgres`) and breaks only that one.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import sys
import tempfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import trio
import trio_asyncio

from atlas.storage import EmbeddedPostgres, Tx
from atlas.telegram.i18n import bundled
from atlas.testing.botapi import BotApiEmulator, NothingInTime
from atlas.testing.botapi.records import ChatRecord
from atlas.testing.botapi.users import EmulatedUser

APOLOGY = bundled().t("en", "errors.apology")
DUE_BASE = 7_000_000  # ids of the seeded users: far from the emulated ones


@dataclass
class OwnPostgres:
    """A second embedded server and the DSN of its one Atlas database."""

    server: EmbeddedPostgres
    dsn: str


@asynccontextmanager
async def own_postgres(database: str = "atlas_fault") -> AsyncIterator[OwnPostgres]:
    """Start an embedded PostgreSQL in a fresh directory with an empty ``database``; remove it after.

    The directory is a ``mkdtemp`` of its own (not pytest's 0700 ``tmp_path``): as root the server
    runs as ``atlas-pg``, which must reach it (see ``tests/conftest.py``). The server is durable
    (fsync on). Must run in the bridge.
    """
    data_dir = Path(tempfile.mkdtemp(prefix="atlas-fault-pg-"))
    # Durable: an immediate stop of a server without fsync and synchronous commit loses commits it
    # had acknowledged (the outage test saw deliveries recorded, lost, and sent again). A real
    # server keeps them, so the test's one must too.
    server = EmbeddedPostgres(data_dir, durable=True, max_connections=100)
    try:
        base = await server.start()
        await admin_execute(base, f"CREATE DATABASE {database}")
        yield OwnPostgres(server, server.dsn(database))
    finally:
        with trio.CancelScope(shield=True):
            await server.stop("immediate")
            shutil.rmtree(data_dir, ignore_errors=True)


async def admin_execute(dsn: str, *statements: str) -> None:
    """Run ``statements`` on a connection of their own (outside Atlas's pool)."""

    async def _go() -> None:
        conn = await asyncpg.connect(dsn)
        try:
            for statement in statements:
                await conn.execute(statement)
        finally:
            await conn.close()

    await trio_asyncio.aio_as_trio(_go)()


# ----------------------------------------------------------------------------- due work


async def seed_due_work(tx: Tx, *, now: dt.datetime, rows: int, with_keys: bool = False) -> None:
    """``rows`` trials ending now, ``rows`` paid subscriptions due for renewal, ``rows`` messages due;
    ``with_keys``: a key wanted present for every subscription too (work for the VPN controller)."""
    await tx.execute(
        """
        INSERT INTO users (id, first_name, language, referral_code, balance_minor, created_at)
        SELECT $1 + g, 'Load', 'en', 'fault_' || g, CASE WHEN g % 2 = 0 THEN 100000 ELSE 0 END, $2
        FROM generate_series(1, $3 * 2) g
        """,
        DUE_BASE,
        now,
        rows,
    )
    await tx.execute(
        """
        INSERT INTO ledger (user_id, amount_minor, kind, reference, idempotency_key, created_at)
        SELECT $1 + g, 100000, 'topup', 'seed', 'fault-seed:' || g, $2
        FROM generate_series(2, $3 * 2, 2) g
        """,
        DUE_BASE,
        now,
        rows,
    )
    await tx.execute(
        """
        INSERT INTO subscriptions (user_id, kind, status, plan_code, starts_at, expires_at, auto_renew,
                                   token, created_at, updated_at)
        SELECT $1 + g,
               CASE WHEN g % 2 = 0 THEN 'paid' ELSE 'trial' END, 'active',
               CASE WHEN g % 2 = 0 THEN 'm1' END,
               $2::timestamptz - interval '30 days',
               $2::timestamptz + CASE WHEN g % 2 = 0 THEN interval '1 hour' ELSE interval '-1 minute' END,
               g % 2 = 0,
               'fault-token-' || lpad(g::text, 12, '0'), $2, $2
        FROM generate_series(1, $3 * 2) g
        """,
        DUE_BASE,
        now,
        rows,
    )
    if with_keys:
        await tx.execute(
            """
            INSERT INTO vpn_keys (subscription_id, uuid, desired, created_at, changed_at)
            SELECT s.id, gen_random_uuid(), 'present', $1, $1 FROM subscriptions s WHERE s.user_id > $2
            """,
            now,
            DUE_BASE,
        )
    await tx.execute(
        """
        INSERT INTO outbox (chat_id, kind, payload, dedupe_key, priority, next_attempt_at, created_at)
        SELECT $1 + g, 'admin.balance_adjusted', '{}'::jsonb, 'fault:' || g, 1, $2, $2
        FROM generate_series(1, $3) g
        """,
        DUE_BASE,
        now,
        rows,
    )


@dataclass(frozen=True)
class DueWork:
    """How much of the seeded work is still to do, and the money check."""

    trials_active: int
    not_renewed: int
    outbox_pending: int
    balances_off: int  # users whose balance is not the sum of their ledger

    @property
    def done(self) -> bool:
        """True when every seeded row was worked on."""
        return self.trials_active == 0 and self.not_renewed == 0 and self.outbox_pending == 0


async def due_work(tx: Tx) -> DueWork:
    """What is left of :func:`seed_due_work`, and how many balances disagree with their ledger."""
    row = await tx.fetchrow(
        """
        SELECT
          (SELECT count(*) FROM subscriptions WHERE user_id > $1 AND kind = 'trial' AND status = 'active')
            AS trials_active,
          (SELECT count(*) FROM subscriptions
            WHERE user_id > $1 AND kind = 'paid' AND last_auto_renewal_at IS NULL) AS not_renewed,
          (SELECT count(*) FROM outbox WHERE chat_id > $1 AND state = 'pending') AS outbox_pending,
          (SELECT count(*) FROM users u
            WHERE u.balance_minor <> coalesce((SELECT sum(l.amount_minor) FROM ledger l
                                               WHERE l.user_id = u.id), 0)) AS balances_off
        """,
        DUE_BASE,
    )
    assert row is not None
    return DueWork(
        int(row["trials_active"]),
        int(row["not_renewed"]),
        int(row["outbox_pending"]),
        int(row["balances_off"]),
    )


# ----------------------------------------------------------------------------- users under load


@dataclass
class Conversations:
    """What the emulated users met: every update they sent, and what came back for it."""

    sent: int = 0
    answered: int = 0
    apologies: int = 0
    unanswered: list[str] = field(default_factory=list)
    answered_at: list[float] = field(default_factory=list)  # trio times of every non-apology answer
    latencies: list[float] = field(default_factory=list)  # seconds from each update to its answer


def add_users(emulator: BotApiEmulator, user_ids: range) -> list[EmulatedUser]:
    """Emulated users (English) with these ids."""
    return [emulator.add_user(user_id, f"U{user_id}", language_code="en") for user_id in user_ids]


async def keep_users_talking(
    users: list[EmulatedUser],
    until: trio.Event,
    seen: Conversations,
    *,
    within: float = 60.0,
    pause: float = 0.2,
) -> None:
    """Each user sends ``/start`` and presses the menu's first button, over and over, until ``until``.

    Every update must get an answer (a message or an edit) within ``within`` seconds; an apology
    counts as an answer of its own kind. Updates that got nothing are listed in ``seen.unanswered``.
    Each user waits ``pause`` seconds between rounds.
    """

    async def converse(user: EmulatedUser) -> None:
        round_ = 0
        while not until.is_set():
            round_ += 1
            user.skip_received()
            user.send_command("/start")
            answer = await _answer(user, within, f"user {user.id} /start #{round_}", seen)
            if answer is not None and answer.inline_buttons() and not until.is_set():
                user.skip_received()
                user.press(answer.button_texts()[0])
                await _answer(user, within, f"user {user.id} button #{round_}", seen)
            await trio.sleep(pause)

    async with trio.open_nursery() as nursery:
        for user in users:
            nursery.start_soon(converse, user)
            await trio.sleep(0.05)


async def _answer(user: EmulatedUser, within: float, what: str, seen: Conversations) -> ChatRecord | None:
    seen.sent += 1
    sent_at = trio.current_time()
    try:
        record = await user.next_record(within)
    except NothingInTime:
        seen.unanswered.append(what)
        return None
    seen.latencies.append(trio.current_time() - sent_at)
    if record.plain_text == APOLOGY or record.text == APOLOGY:
        seen.apologies += 1
    else:
        seen.answered += 1
        seen.answered_at.append(trio.current_time())
    return record


# ----------------------------------------------------------------------------- the operator's CLI


async def atlas_crashes_json(dsn: str, *args: str) -> list[dict[str, Any]]:
    """Run the real ``atlas crashes --json`` against ``dsn``; its reports, newest first."""
    done = await trio.run_process(
        [sys.executable, "-m", "atlas", "crashes", "--json", *args],
        env={**os.environ, "ATLAS_DATABASE_URL": dsn, "ATLAS_LOG_LEVEL": "WARNING"},
        capture_stdout=True,
        capture_stderr=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr.decode()
    return [json.loads(line) for line in done.stdout.decode().splitlines() if line.strip()]
