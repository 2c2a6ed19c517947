"""The assembled process with a bot: the runtime's tree (storage, web, workers, telegram) against the
Bot API emulator. A scripted user starts the bot and takes a trial through the real wiring; the
outbox sender delivers the "trial started" notice the unit wrote; the admin screens answer the
configured admin and nobody else.
"""

from __future__ import annotations

import datetime as dt
import re

import trio
import trio.lowlevel

from atlas.payments.stars import send_stars_invoice
from atlas.runtime.app import make_services, serve_tree
from atlas.runtime.settings import load_settings
from atlas.storage import Tx
from atlas.storage.units import create_payment_intent
from atlas.telegram.formatting import Formats
from atlas.telegram.i18n import configure_bundled
from atlas.telegram.session import make_bot
from atlas.testing.botapi import BotApiEmulator
from tests._running_tree import running_tree
from tests._vpn_support import free_ports


async def test_the_whole_tree_serves_a_user_through_the_emulated_bot_api(
    bridge: None, fresh_database: str
) -> None:
    emulator = BotApiEmulator(bot_username="atlas_tree_bot")
    async with trio.open_nursery() as nursery:
        api = await nursery.start(emulator.serve)
        settings = load_settings(
            database_url=fresh_database,
            http_port=0,
            seed=3,
            bot_token=emulator.token,
            telegram_api_base=api,
            admin_ids=[900],
            timezone="Europe/Moscow",
        )
        services = make_services(settings)
        services.bot = make_bot(emulator.token, api)
        stop = trio.Event()
        root = await nursery.start(
            lambda task_status: serve_tree(services, fresh_database, stop=stop, task_status=task_status)
        )
        user = emulator.add_user(501, "Ann", language_code="en")
        user.send_command("/start")
        menu = await user.next_message(within=20)
        while not menu.inline_buttons():  # the greeting comes first, then the menu
            menu = await user.next_message(within=20)
        trial_button = next(b for b in menu.button_texts() if "trial" in b.lower())
        user.press(trial_button)
        texts = []
        with trio.fail_after(30):
            while not any("trial" in text.lower() for text in texts):
                record = await user.next_record(within=20)
                texts.append(record.plain_text or "")

        async def outbox_state(tx: Tx) -> list[str]:
            rows = await tx.fetch("SELECT state FROM outbox WHERE chat_id = 501 LIMIT 10")
            return [row["state"] for row in rows]

        with trio.fail_after(30):
            while (states := await services.require_db().run(outbox_state)) != ["sent"]:  # noqa: ASYNC110
                await trio.sleep(0.2)
        admin = emulator.add_user(900, "Op", language_code="en")
        admin.send_command("/stats")
        admin_reply = await admin.next_message(within=20)
        user.skip_received()
        user.send_command("/stats")
        user_reply = await user.next_message(within=20)
        paths = {c.path: c.state.value for c in root.statistics().children}
        notice = next(t for r in emulator.chat_log(501) if "trial is on" in (t := r.plain_text or ""))
        stop.set()
        await trio.lowlevel.checkpoint()
        nursery.cancel_scope.cancel()
    configure_bundled(Formats())  # make_services set the process's zone: back to the default

    # The tree set the "/" menus once at start: per language, and the admin's extended list.
    assert emulator.calls["setMyCommands"] == 6
    assert emulator.commands(language_code="ru")[0]["command"] == "start"
    assert "admin" in [c["command"] for c in emulator.commands({"type": "chat", "chat_id": 900})]
    # The trial notice shows its date in ATLAS_TIMEZONE, the CLDR way: no ISO string.
    assert re.search(r"until \w{3} \d{1,2}, \d{4}, \d{2}:\d{2}\.", notice), notice
    assert not re.search(r"\d{4}-\d{2}-\d{2}T", notice), notice

    assert menu.button_texts(), "the main menu has buttons"
    assert paths["root/telegram"] == "running"
    assert any("trial" in text.lower() for text in texts)
    assert states == ["sent"]  # the unit's "trial started" notice went out through the sender
    # The admin screens are wired in front of the user screens, and only for configured admins.
    assert admin_reply.plain_text != user_reply.plain_text
    assert "1" in (admin_reply.plain_text or "")  # the stats count the registered user


async def test_webhook_mode_receives_updates_through_the_web_server(
    bridge: None, fresh_database: str
) -> None:
    emulator = BotApiEmulator(bot_username="atlas_hook_bot")
    (port,) = free_ports(1)
    async with trio.open_nursery() as nursery:
        api = await nursery.start(emulator.serve)
        settings = load_settings(
            database_url=fresh_database,
            http_port=port,
            seed=4,
            bot_token=emulator.token,
            telegram_api_base=api,
            telegram_webhook_url=f"http://127.0.0.1:{port}/webhooks/telegram",
            telegram_webhook_secret="hook_secret_42",
        )
        services = make_services(settings)
        services.bot = make_bot(emulator.token, api)
        stop = trio.Event()
        root = await nursery.start(
            lambda task_status: serve_tree(services, fresh_database, stop=stop, task_status=task_status)
        )
        user = emulator.add_user(601, "Bo", language_code="en")
        user.send_command("/start")
        greeting = await user.next_message(within=20)
        # Answered once handled (issue 13): the 200 follows the handler's last reply.
        with trio.fail_after(20):
            while not any(attempt.status == 200 for attempt in emulator.webhook_attempts):  # noqa: ASYNC110
                await trio.sleep(0.05)
        children = {c.path for c in root.statistics().children}
        stop.set()
        await trio.lowlevel.checkpoint()
        nursery.cancel_scope.cancel()

    assert emulator.webhook is not None and emulator.webhook.url.endswith("/webhooks/telegram")
    assert greeting.plain_text, "the bot answered an update that arrived by webhook"
    assert any(attempt.status == 200 for attempt in emulator.webhook_attempts)
    assert "root/telegram" in children


async def test_a_stars_payment_made_during_maintenance_is_applied(bridge: None, fresh_database: str) -> None:
    """Maintenance answers every non-admin update, but a charge is money that has moved: the
    pre-checkout and the ``successful_payment`` message must still reach the payments router."""
    emulator = BotApiEmulator(bot_username="atlas_maint_bot")
    async with running_tree(fresh_database, emulator=emulator, seed=5, admin_ids=[900]) as tree:
        services, settings = tree.services, tree.services.settings
        user = emulator.add_user(701, "Pay", language_code="en")
        user.send_command("/start")
        await user.next_message(within=20)
        admin = emulator.add_user(900, "Op", language_code="en")
        admin.send_command("/maintenance", "on Back soon")
        await admin.next_message(within=20)
        user.skip_received()
        user.send_command("/start")
        refused = await user.next_message(within=20)

        db = services.require_db()
        intent = await db.run(
            create_payment_intent,
            user_id=701,
            provider="stars",
            purpose="plan",
            plan_code="m1",
            currency="XTR",
            balance_currency=settings.currency,
            ttl=dt.timedelta(minutes=30),
            now=services.clock.now(),
        )
        await send_stars_invoice(
            services.bot, chat_id=701, intent=intent, title="Atlas", description="30 days", label="m1"
        )
        invoice = await user.next_message(within=20)
        outcome = await user.pay_stars(invoice)

        async def payment_status(tx: Tx) -> str:
            return str(await tx.fetchval("SELECT status FROM payments WHERE id = $1", intent.payment_id))

        with trio.fail_after(20):
            while (status := await db.run(payment_status)) != "applied":  # noqa: ASYNC110
                await trio.sleep(0.1)

    assert "maintenance" in (refused.plain_text or "").lower()
    assert outcome.ok, outcome
    assert status == "applied"


async def test_a_conversation_started_on_one_process_continues_on_another(
    bridge: None, fresh_database: str
) -> None:
    """Behind a webhook load balancer the admin's next message reaches another process, which
    must know that the admin is typing a broadcast text (issue 13: conversation state in PostgreSQL)."""
    emulator = BotApiEmulator(bot_username="atlas_scale_bot")
    secret = "scale_out_hook_secret"
    one_port, two_port = free_ports(2)
    urls = [f"http://127.0.0.1:{port}/webhooks/telegram" for port in (one_port, two_port)]
    async with trio.open_nursery() as nursery:
        api = await nursery.start(emulator.serve)
        common = {"emulator": emulator, "emulator_url": api, "admin_ids": [900],
                  "telegram_webhook_secret": secret}  # fmt: skip
        async with (
            running_tree(fresh_database, http_port=one_port, telegram_webhook_url=urls[0], seed=6, **common),
            running_tree(fresh_database, http_port=two_port, telegram_webhook_url=urls[1], seed=7, **common),
        ):
            admin = emulator.add_user(900, "Op", language_code="en")
            emulator.route_webhook_to(urls[0])
            admin.send_command("/broadcast")
            asked = await admin.next_message(within=20)
            admin.press("Everyone")
            prompt = await admin.next_record(within=20)  # the segment screen, edited in place
            emulator.route_webhook_to(urls[1])  # the text lands on the other process
            admin.send_text("Maintenance tonight at 23:00")
            preview = await admin.next_message(within=20)
            await emulator.wait_until_delivered(within=20)  # answered once handled: after the reply
            delivered_to = {attempt.url for attempt in emulator.webhook_attempts if attempt.status == 200}
        nursery.cancel_scope.cancel()

    assert asked.plain_text == "Who gets the broadcast?"
    assert "Send the text" in (prompt.plain_text or "")
    assert "Preview" in (preview.plain_text or ""), preview.plain_text
    assert delivered_to == set(urls)  # both processes took part
