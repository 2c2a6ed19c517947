"""Crash reports reach the admins: an alert through the outbox, one per actor per interval, with the
count of the ones held back — through the whole tree, the real sender and the Bot API emulator."""

from __future__ import annotations

import datetime as dt

import trio
import trio.lowlevel

from atlas.actors import Actor
from atlas.runtime.crash_alerts import AlertThrottle
from atlas.storage import Tx
from atlas.supervision import RestartType
from atlas.testing.botapi import BotApiEmulator
from tests._running_tree import running_tree

T0 = dt.datetime(2026, 12, 1, 12, 0, tzinfo=dt.UTC)


def test_the_throttle_sends_one_per_actor_per_interval_and_counts_the_rest() -> None:
    throttle = AlertThrottle(600.0)
    first = throttle.decide("root/workers/renewal", T0)
    assert first is not None and first.suppressed == 0
    assert throttle.decide("root/workers/renewal", T0 + dt.timedelta(seconds=30)) is None
    assert throttle.decide("root/workers/renewal", T0 + dt.timedelta(seconds=90)) is None
    other = throttle.decide("root/workers/expiry", T0 + dt.timedelta(seconds=95))
    assert other is not None and other.suppressed == 0  # per actor, not global
    later = throttle.decide("root/workers/renewal", T0 + dt.timedelta(minutes=11))
    assert later is not None and later.suppressed == 2 and later.bucket > first.bucket
    again = throttle.decide("root/workers/renewal", T0 + dt.timedelta(minutes=25))
    assert again is not None and again.suppressed == 0


class Flaky(Actor):
    """Crashes on each of its first ``crashes`` ticks, with a message that looks like markup."""

    def __init__(self, crashes: int) -> None:
        super().__init__("flaky", period=0.05, first_tick=(0.0, 0.0))
        self.left = crashes
        self.go = trio.Event()

    async def tick(self) -> None:
        if self.left > 0 and self.go.is_set():
            self.left -= 1
            raise RuntimeError("node <b>answered</b> garbage")


async def test_a_crashing_actor_alerts_each_admin_once_per_interval(
    bridge: None, fresh_database: str
) -> None:
    emulator = BotApiEmulator(bot_username="atlas_alert_bot")
    flaky = Flaky(crashes=3)
    extra = [flaky.child_spec(restart=RestartType.PERMANENT)]
    async with running_tree(
        fresh_database, emulator=emulator, extra_workers=extra, seed=9, admin_ids=[900, 901],
        crash_alert_interval=3600.0, max_restarts=10,
    ) as tree:  # fmt: skip
        services = tree.services
        english_admin = emulator.add_user(900, "Op", language_code="en")
        russian_admin = emulator.add_user(901, "Ops", language_code="ru")
        english_admin.send_command("/start")  # registers the admin's language; the other has no user row
        while not (await english_admin.next_message(within=20)).inline_buttons():
            pass  # the greeting, then the menu
        flaky.go.set()
        admins = [english_admin, russian_admin]
        alerts = [await admin.next_message(within=30) for admin in admins]
        with trio.fail_after(20):
            while flaky.left > 0 or services.crash_counts.get("crash", 0) < 3:  # noqa: ASYNC110
                await trio.sleep(0.05)

        async def alert_rows(tx: Tx) -> list[tuple[int, str]]:
            rows = await tx.fetch(
                "SELECT chat_id, state FROM outbox WHERE kind LIKE 'admin.crash_alert%' "
                "ORDER BY chat_id LIMIT 10"
            )
            return [(row["chat_id"], row["state"]) for row in rows]

        with trio.fail_after(20):  # the sender records each result just after Telegram answers
            while (rows := await services.require_db().run(alert_rows)) != [(900, "sent"), (901, "sent")]:  # noqa: ASYNC110
                await trio.sleep(0.1)
        await trio.sleep(0.5)  # room for a wrongly sent second alert to arrive
        extra_messages = [admin.chat_log() for admin in admins]

    assert services.crash_counts["crash"] >= 3
    assert rows == [(900, "sent"), (901, "sent")]  # three crashes, one alert per admin
    english, russian = (alert.plain_text or "" for alert in alerts)
    assert "root/workers/flaky" in english and "RuntimeError: node <b>answered</b> garbage" in english
    assert "Decision: restart in" in english
    assert "root/workers/flaky" in russian and "Решение" in russian  # no user row: the default, ru
    alerts_seen = [sum('root/workers/flaky' in (r.plain_text or '') for r in log) for log in extra_messages]
    assert alerts_seen == [1, 1]
