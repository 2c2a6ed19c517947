"""Admin screens through the Bot API emulator with the real aiogram Bot and real PostgreSQL.

A non-admin reaches no admin handler (every command, every callback, forged); admin actions need a
reason and are audited; promo codes, stats, crash reports, CSV export and maintenance mode work.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
from typing import Any

from atlas.storage import Database, Tx
from atlas.storage.crash_reports import record_crash_report
from atlas.storage.units.admin_views import USER_EXPORT_HEADER, export_users_page
from atlas.storage.units.broadcasts import create_broadcast
from atlas.telegram.callbacks import (
    AdminAction,
    AdminBroadcastCb,
    AdminCb,
    AdminPromoPageCb,
    AdminSegmentCb,
    AdminStatsCb,
    AdminUserCb,
    BroadcastAction,
    Segment,
    StatsPeriod,
    UserAction,
)
from atlas.telegram.i18n import bundled
from atlas.telegram.routers.admin import ADMIN_COMMANDS
from atlas.telegram.routers.admin_ops import build_csv
from atlas.testing.botapi import BotApiEmulator, EmulatedUser
from atlas.testing.botapi._core import PendingCallback
from tests._admin_support import (
    ADMIN,
    NOW,
    OUTDATED,
    UNKNOWN,
    add_subscriptions,
    add_users,
    admin_bot,
    settle,
)

TARGET = 500
STRANGER = 600
DAY = dt.timedelta(days=1)
TABLES = (
    "users", "subscriptions", "vpn_keys", "ledger", "payments", "promo_codes", "outbox", "admin_audit",
    "broadcasts", "maintenance",
)  # fmt: skip


async def _snapshot(tx: Tx) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for table in TABLES:
        rows = await tx.fetch(f"SELECT * FROM {table} ORDER BY 1 LIMIT 10000")
        out[table] = [dict(r) for r in rows]
    return out


async def _seed(tx: Tx) -> None:
    await add_users(tx, ids=[ADMIN], now=NOW)
    await add_users(tx, ids=[TARGET], now=NOW, usernames=["Target_User"], balance_minor=10_000)
    await add_users(tx, ids=[STRANGER], now=NOW)
    await add_subscriptions(
        tx, ids=[TARGET], kind="paid", status="active", expires_at=NOW + 10 * DAY, now=NOW
    )


async def _audit(tx: Tx) -> list[dict[str, Any]]:
    rows = await tx.fetch(
        "SELECT admin_id, action, target_user_id, reason FROM admin_audit ORDER BY id LIMIT 100"
    )
    return [dict(r) for r in rows]


async def _user(tx: Tx, *, user_id: int) -> dict[str, Any]:
    row = await tx.fetchrow("SELECT balance_minor, banned_at FROM users WHERE id = $1", user_id)
    sub = await tx.fetchrow("SELECT expires_at, status FROM subscriptions WHERE user_id = $1", user_id)
    assert row is not None
    return {**dict(row), **(dict(sub) if sub else {})}


async def _notices(tx: Tx) -> list[tuple[str, dict[str, Any]]]:
    rows = await tx.fetch("SELECT kind, payload FROM outbox ORDER BY id LIMIT 100")
    return [(r["kind"], json.loads(r["payload"])) for r in rows]


def forge_press(emulator: BotApiEmulator, user: EmulatedUser, data: str) -> str:
    """Press a button that was never shown to ``user``: a forged callback on their newest bot message."""
    core = emulator._core
    chat = core.chats[user.id]
    message_id = max(m for m, msg in chat.messages.items() if msg["from"]["id"] == core.bot_id)
    query_id = core.new_id("CBQ")
    core.callbacks[query_id] = PendingCallback(query_id, user.id, data)
    core.enqueue_update(
        "callback_query",
        {
            "id": query_id,
            "from": chat.user,
            "message": chat.messages[message_id],
            "chat_instance": f"ci{user.id}",
            "data": data,
        },
    )
    return query_id


def every_admin_callback(broadcast_id: int) -> list[str]:
    data: list[str] = [AdminCb(action=a).pack() for a in AdminAction]
    data += [AdminStatsCb(period=p).pack() for p in StatsPeriod]
    data += [AdminSegmentCb(segment=s).pack() for s in Segment]
    data += [AdminBroadcastCb(action=a, broadcast_id=broadcast_id).pack() for a in BroadcastAction]
    data += [AdminUserCb(action=a, user_id=TARGET).pack() for a in UserAction]
    data += [AdminPromoPageCb(after="").pack(), AdminPromoPageCb(after="A").pack()]
    return data


COMMAND_ARGS: dict[str, str] = {
    "find": str(TARGET),
    "grant": f"{TARGET} 30 because",
    "adjust": f"{TARGET} +100 because",
    "ban": f"{TARGET} because",
    "unban": f"{TARGET} because",
    "promo_new": "FREE percent 50",
    "maintenance": "on closed",
}


async def test_a_non_admin_reaches_no_admin_handler(db: Database) -> None:
    await db.run(_seed)
    draft = await db.run(create_broadcast, admin_id=ADMIN, segment="all", text="secret plan", now=NOW)
    before = await db.run(_snapshot)
    async with admin_bot(db) as h:
        stranger = h.emulator.add_user(STRANGER, "Mallory")
        for command in ADMIN_COMMANDS:
            stranger.send_command(f"/{command}", COMMAND_ARGS.get(command))
            await settle(h)
        # After every command, only the answer anyone gets to an unknown command.
        assert [r.plain_text for r in stranger.chat_log()] == [UNKNOWN] * len(ADMIN_COMMANDS)

        queries = []
        for data in every_admin_callback(draft.id):
            queries.append(forge_press(h.emulator, stranger, data))
            await settle(h)
            # An input state must not have been entered: text typed now is just unknown text.
            stranger.send_text(f"{TARGET} 30 forged reason")
            await settle(h)
        answers = {a.query_id: a for a in h.emulator.callback_answers}
        assert [answers[q].text for q in queries] == [OUTDATED] * len(queries)
        log = stranger.chat_log()
        assert all(r.kind == "message" and r.plain_text == UNKNOWN for r in log), [r.plain_text for r in log]
        assert len(log) == len(ADMIN_COMMANDS) + len(queries)
        assert h.dispatch.statistics().failed == 0 and len(h.reports) == 0

        # The same command from the admin does reach the handler (the test above can fail).
        admin = h.emulator.add_user(ADMIN, "Boss")
        admin.send_command("/stats")
        assert "Stats" in ((await admin.next_message(within=10)).plain_text or "")
    assert await db.run(_snapshot) == before


async def test_grant_adjust_and_ban_need_a_reason_and_are_audited(db: Database) -> None:
    await db.run(_seed)
    before = await db.run(_user, user_id=TARGET)
    async with admin_bot(db) as h:
        admin = h.emulator.add_user(ADMIN, "Boss")

        admin.send_command("/grant", f"{TARGET} 30")
        refused = await admin.next_message(within=10)
        assert refused.plain_text == "Refused: reason is required. Nothing was changed."
        assert await db.run(_user, user_id=TARGET) == before and await db.run(_audit) == []

        admin.send_command("/grant", f"{TARGET} 30 outage compensation")
        done = await admin.next_message(within=10)
        assert done.plain_text is not None and done.plain_text.startswith(
            f"Done: user {TARGET} now has access until"
        )
        after = await db.run(_user, user_id=TARGET)
        assert after["expires_at"] == before["expires_at"] + 30 * DAY

        # The card, by @username, then the balance button: no reason is refused, then applied once.
        admin.send_command("/find", "@target_user")
        card = await admin.next_message(within=10)
        assert card.plain_text is not None and f"User {TARGET} @Target_User" in card.plain_text
        assert "Balance: RUB\u00a0100.00" in card.plain_text and "paid, active" in card.plain_text
        admin.press("💰 Balance")
        prompt = await admin.next_record(within=10)  # the card turns into the prompt, in place
        assert prompt.kind == "edit_text" and "send the amount" in (prompt.plain_text or "")
        admin.send_text("+150")
        assert (
            await admin.next_message(within=10)
        ).plain_text == "Refused: reason is required. Nothing was changed."
        assert (await db.run(_user, user_id=TARGET))["balance_minor"] == 10_000
        admin.send_text("+150.50 manual refund")
        assert (
            await admin.next_message(within=10)
        ).plain_text == f"Done: user {TARGET} balance is now RUB\u00a0250.50."
        refreshed = await admin.next_message(within=10)  # the card again
        assert "Balance: RUB\u00a0250.50" in (refreshed.plain_text or "")
        admin.send_text("-1000 too much")  # the state ended: this is not an adjustment any more
        assert (await admin.next_message(within=10)).plain_text == UNKNOWN
        assert (await db.run(_user, user_id=TARGET))["balance_minor"] == 25_050

        admin.press("⛔ Block")
        assert (await admin.next_record(within=10)).kind == "edit_text"
        admin.send_text("fraud")
        assert (await admin.next_message(within=10)).plain_text == f"User {TARGET} is blocked."
        card = await admin.next_message(within=10)
        assert "Flags: banned" in (card.plain_text or "") and "✅ Unblock" in card.button_texts()
        assert (await db.run(_user, user_id=TARGET))["banned_at"] is not None

        # A debit below zero is refused by the ledger rule and explained.
        admin.send_command("/adjust", f"{TARGET} -1000 oops")
        text = (await admin.next_message(within=10)).plain_text or ""
        assert text.startswith("Refused: the balance cannot go below zero"), text

    # The notices the actions wrote render in the user's language (the sender's templates exist).
    notices = await db.run(_notices)
    assert sorted(kind for kind, _ in notices) == ["admin.balance_adjusted", "admin.days_granted"]
    for kind, payload in notices:
        assert bundled().t("en", kind, **payload) and bundled().t("ru", kind, **payload)
    assert await db.run(_audit) == [
        {
            "admin_id": ADMIN,
            "action": "grant_days",
            "target_user_id": TARGET,
            "reason": "outage compensation",
        },
        {"admin_id": ADMIN, "action": "adjust_balance", "target_user_id": TARGET, "reason": "manual refund"},
        {"admin_id": ADMIN, "action": "ban", "target_user_id": TARGET, "reason": "fraud"},
    ]


async def test_promo_codes_are_created_with_clear_errors_and_listed_by_page(db: Database) -> None:
    await db.run(_seed)
    async with admin_bot(db) as h:
        admin = h.emulator.add_user(ADMIN, "Boss")
        admin.send_command("/promo_new", "SPRING percent 150")
        text = (await admin.next_message(within=10)).plain_text or ""
        assert text.startswith("Refused: value=150") and "between 1 and 100" in text, text
        admin.send_command("/promo_new", "SPRING percent 15 uses=100 days=30 color=red")
        assert "option='color=red'" in ((await admin.next_message(within=10)).plain_text or "")
        for i in range(12):
            admin.send_command("/promo_new", f"CODE{i:02d} free_days 7 uses=5")
            assert (await admin.next_message(within=10)).plain_text == (
                f"Promo code created: CODE{i:02d}: free_days 7, 0/5, any, —"
            )
        admin.send_command("/promo_new", "CODE00 percent 5")
        assert "already exists" in ((await admin.next_message(within=10)).plain_text or "")
        admin.send_command("/promos")
        first = (await admin.next_message(within=10)).plain_text or ""
        assert first.count("free_days") == 10 and "CODE09" in first and "CODE10" not in first
        admin.press("Next ▶")
        page = await admin.next_record(within=10)
        assert page.kind == "edit_text"
        second = page.plain_text or ""
        assert "CODE10" in second and "CODE11" in second and "CODE09" not in second


async def test_stats_crashes_export_and_maintenance(db: Database) -> None:
    await db.run(_seed)
    async with admin_bot(db) as h:
        admin = h.emulator.add_user(ADMIN, "Boss")
        stranger = h.emulator.add_user(STRANGER, "Eve")

        admin.send_command("/admin")
        menu = await admin.next_message(within=10)
        assert menu.plain_text == "Admin" and "📣 Broadcast" in menu.button_texts()
        admin.press("🔎 Find user")
        assert (await admin.next_record(within=10)).plain_text == "Send a user id or @username."
        admin.send_text(str(TARGET))
        assert f"User {TARGET} @Target_User" in ((await admin.next_message(within=10)).plain_text or "")
        admin.send_text("nobody_here")  # the lookup state ended with the card
        assert (await admin.next_message(within=10)).plain_text == UNKNOWN

        admin.send_command("/stats")
        stats = (await admin.next_message(within=10)).plain_text or ""
        assert "Users: 3 (new: 3, blocked: 0)" in stats and "Active: 1 (trial: 0, paid: 1)" in stats
        admin.press("month")
        month = await admin.next_record(within=10)
        assert month.kind == "edit_text" and "Stats (month)" in (month.plain_text or "")
        assert "⬅️ Admin menu" in month.button_texts()  # every admin screen has a way back

        admin.send_command("/crashes")
        assert (await admin.next_message(within=10)).plain_text == "No crash reports."
        report = {
            "kind": "crash",
            "time": NOW.isoformat(),
            "host": "h",
            "pid": 1,
            "path": "root/workers/renewal",
            "exc_type": "ValueError",
            "message": "boom",
        }
        await db.run(record_crash_report, report=report)
        admin.send_command("/crashes")
        crashes = (await admin.next_message(within=10)).plain_text or ""
        assert "root/workers/renewal" in crashes and "ValueError: boom" in crashes

        admin.send_command("/export_users")
        assert (await admin.next_message(within=10)).plain_text == "Preparing the file…"
        document = await admin.next_message(within=10)
        assert document.kind == "document" and document.file is not None
        assert document.file.filename is not None and document.file.filename.startswith("users-")
        assert document.plain_text == "3 rows."

        # Maintenance: non-admins get the message, the admin keeps working, then it is lifted.
        admin.send_command("/maintenance", "on Back at 15:00 UTC")
        assert (await admin.next_message(within=10)).plain_text == (
            "Maintenance mode is ON: users get the maintenance message."
        )
        stranger.send_command("/start")
        assert (
            await stranger.next_message(within=10)
        ).plain_text == "The bot is under maintenance. Back at 15:00 UTC"
        admin.send_command("/stats")
        assert "Stats" in ((await admin.next_message(within=10)).plain_text or "")
        admin.send_command("/maintenance", "off")
        assert (await admin.next_message(within=10)).plain_text == "Maintenance mode is OFF."
        stranger.send_command("/start")
        assert (await stranger.next_message(within=10)).plain_text == UNKNOWN


async def test_csv_export_pages_through_every_row(db: Database) -> None:
    ids = list(range(1, 2502))
    await db.run(add_users, ids=ids, now=NOW, usernames=[f"u,{i}" for i in ids])  # commas get quoted
    data, rows, cut = await build_csv(db, export_users_page, USER_EXPORT_HEADER)
    parsed = list(csv.reader(io.StringIO(data.decode())))
    assert (rows, cut) == (2501, False)
    assert parsed[0] == list(USER_EXPORT_HEADER)
    assert [int(r[0]) for r in parsed[1:]] == ids and parsed[1][1] == "u,1"
    data, rows, cut = await build_csv(db, export_users_page, USER_EXPORT_HEADER, max_rows=1200)
    assert (rows, cut) == (1200, True) and len(list(csv.reader(io.StringIO(data.decode())))) == 1201


async def test_an_unstorable_broadcast_text_is_refused_and_the_prompt_stays_usable(db: Database) -> None:
    # Issue 11, item 10: a broadcast text the database cannot store (a NUL byte) crashed the handler
    # and left the admin in the "type the broadcast text" state, where every next message failed
    # too. Now it is refused with the reason before anything is written, and the prompt still works.
    # (That a handler error ends the conversation is tested in test_telegram_intake.py.)
    await db.run(_seed)
    async with admin_bot(db) as h:
        admin = h.emulator.add_user(ADMIN, "Boss")
        admin.send_command("/broadcast")
        assert (await admin.next_message(within=10)).plain_text == "Who gets the broadcast?"
        admin.press("Everyone")
        assert "Send the text" in ((await admin.next_record(within=10)).plain_text or "")
        admin.send_text("before\x00after")
        refusal = (await admin.next_message(within=10)).plain_text or ""
        assert "cannot be stored" in refusal and "nothing was saved" in refusal
        assert await db.run(_count_broadcasts) == 0
        admin.send_text("A clean text")
        preview_header = (await admin.next_message(within=10)).plain_text or ""
        assert "Preview" in preview_header
        await settle(h)
        assert h.reports.latest() == []  # refused, not crashed
    assert await db.run(_count_broadcasts) == 1  # the clean text's draft


async def _count_broadcasts(tx: Tx) -> int:
    return int(await tx.fetchval("SELECT count(*) FROM broadcasts"))
