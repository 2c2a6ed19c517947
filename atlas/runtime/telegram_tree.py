"""Assembling the bot: the routers in order, the dispatcher, the intake, and the telegram subtree.

::

    root/telegram (rest_for_one)
    ├── handled_log  the ids of handled updates, written to PostgreSQL in batches (so that an
    │                update Telegram sends again after a SIGKILL is not handled twice)
    ├── dispatch     per-user ordered handling of updates (aiogram's Dispatcher.feed_update)
    └── intake       getUpdates long polling, under a PostgreSQL advisory lock (one poller per
                     fleet), confirming only handled updates; absent in webhook mode, where the
                     web server's /webhooks/telegram route feeds the dispatcher through a
                     :class:`DispatcherSlot` and answers once the update is handled

``rest_for_one`` because the intake hands updates to the dispatcher: a dispatcher restart must
restart the intake too (it re-polls from the last confirmed offset: the lowest unhandled update).
The outbox sender and the other bot-facing workers live under ``root/workers``. The ``Bot``
object itself is a process resource (its httpx session's connection pool is shared by every
bot-facing task), created in ``run_app``.

The subtree is built when it starts, not when the tree is defined, because it needs the bot's
username (one ``getMe``) and the open database; both are there by then (storage starts first).
"""

from __future__ import annotations

import datetime as dt
import importlib
import logging
import random
from collections.abc import Callable
from typing import Any

import trio
from aiogram import Bot, Router
from aiogram.types import Update

from atlas.clock import Clock
from atlas.domain import ReferralPolicy
from atlas.domain.referral import ReferralTrigger, RewardKind
from atlas.runtime.settings import Settings
from atlas.storage import Database
from atlas.supervision import Backoff, ChildContext, ChildSpec, CrashReporter, Strategy, Supervisor
from atlas.telegram.commands import publish_commands
from atlas.telegram.config import BotConfig
from atlas.telegram.dispatch import DispatchNotRunning, UpdateDispatcher
from atlas.telegram.fsm_storage import PostgresFsmStorage
from atlas.telegram.handled_log import HandledLog
from atlas.telegram.intake import PollingIntake, configure_webhook
from atlas.telegram.routers import build_user_routers
from atlas.telegram.routers.admin_ops import MaintenanceGate
from atlas.telegram.routers.support_chat import build_support_chat_router
from atlas.telegram.wiring import build_dispatcher
from atlas.vpn import NodeConfig

_log = logging.getLogger("atlas.telegram.tree")


def referral_policy(settings: Settings) -> ReferralPolicy:
    """The referral reward the operator configured (a percent of the first payment)."""
    return ReferralPolicy(
        RewardKind.PERCENT,
        max(1, settings.referral_percent),
        ReferralTrigger.FIRST_PAYMENT,
        enabled=settings.referral_percent > 0,
    )


def _optional_routers(module: str, factory: str) -> list[Router]:
    # Admin and payment screens are separate features; a deployment without them still runs.
    try:
        found = importlib.import_module(module)
    except ModuleNotFoundError:
        return []
    built = getattr(found, factory)()
    return list(built) if isinstance(built, list | tuple) else [built]


def build_routers() -> list[Router]:
    """Every router, in the order aiogram tries them."""
    return [
        # Payments first, before every filter: a pre_checkout_query must be answered and a
        # successful_payment is money that has already moved. Maintenance, bans and conversation
        # states must never take them (a Stars charge taken by maintenance's catch-all was never
        # applied); the payments router matches nothing else, so it shadows no other screen.
        *_optional_routers("atlas.telegram.routers.payments", "build_router"),
        # The support chat next: every message there is the agents' (a reply to a ticket, /close, or
        # talk among themselves) and must reach neither maintenance nor the user screens, which
        # would answer a group with a menu. It matches only that chat (config.support_chat_id).
        build_support_chat_router(),
        # Maintenance next: while it is on, every other non-admin update gets the maintenance text
        # and goes no further.
        *_optional_routers("atlas.telegram.routers.admin_ops", "build_maintenance_router"),
        # Admin before the user screens: its filters are narrower (admin ids only), and for anyone
        # else it matches nothing, so the user screens answer as for an unknown command.
        *_optional_routers("atlas.telegram.routers.admin", "build_admin_router"),
        # The user screens last; they end with the fallback that matches everything.
        *build_user_routers(),
    ]


TELEGRAM_WEBHOOK_PATH = "/webhooks/telegram"


class DispatcherSlot:
    """The webhook route's handle on whatever dispatcher the telegram subtree runs right now.

    The web server starts before the telegram subtree and outlives its restarts, so the route cannot
    hold the dispatcher itself. While no dispatcher runs, updates are refused with
    :class:`DispatchNotRunning`, which the route answers with 503 so Telegram retries later.
    ``log`` is the subtree's handled-update log: an update Telegram sends again after another
    process (or an earlier run of this one) handled it is answered without handling it twice.
    """

    def __init__(self) -> None:
        self.current: UpdateDispatcher | None = None
        self.log: HandledLog | None = None

    async def take(self, update: Update, within: float) -> bool:
        """Have the running dispatcher handle ``update`` unless it is recorded as handled already
        (see :meth:`UpdateDispatcher.take`); a failed lookup raises ``StorageError`` (503)."""
        current, log = self.current, self.log
        if current is None:
            raise DispatchNotRunning("the telegram subtree is not running")
        if current.is_done(update.update_id):
            return True
        if log is not None and await log.recorded_among([update.update_id]):
            return True
        return await current.take(update, within)


# How long a person has to finish what they started (buy after typing a promo code, pay an
# invoice). People do not speed up with the clock: at a clock speed above 1 (the demo) these are
# scaled like the other people-facing intervals, capped at a day of business time so that an
# invoice's lifetime stays within what the payment providers accept.
PROMO_TTL = dt.timedelta(minutes=30)
PAYMENT_TTL = dt.timedelta(hours=1)
_PEOPLE_TTL_CAP = dt.timedelta(days=1)


def people_ttl(base: dt.timedelta, speed: float) -> dt.timedelta:
    """``base`` of a person's real time in business time at ``speed`` (``base`` itself at speed 1)."""
    return base if speed == 1 else min(base * speed, max(base, _PEOPLE_TTL_CAP))


def telegram_child(
    *,
    settings: Settings,
    bot: Bot,
    db: Callable[[], Database],
    clock: Clock,
    reporter: CrashReporter,
    nodes: tuple[NodeConfig, ...],
    dependencies: dict[str, Any],
    rng: random.Random,
    slot: DispatcherSlot,
) -> ChildSpec:
    """The ``telegram`` subtree as a child of the root supervisor."""

    async def start(
        ctx: ChildContext, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        me = await bot.get_me()
        config = BotConfig(
            currency=settings.currency,
            public_base_url=settings.public_base_url,
            bot_username=me.username or "atlas_bot",
            nodes=nodes,
            trial_days=settings.trial_days,
            support=settings.support_url,
            min_topup_minor=settings.min_topup_minor,
            invoices_per_hour=settings.invoices_per_hour,
            support_chat_id=settings.support_chat_id,
            support_per_hour=settings.support_messages_per_hour,
            support_language=settings.support_language,
            promo_ttl=people_ttl(PROMO_TTL, clock.speed),
            payment_ttl=people_ttl(PAYMENT_TTL, clock.speed),
        )
        # The "/" menus, once per start of the subtree; a refusal is logged, never fatal.
        await publish_commands(bot, settings.admin_ids)
        database = db()
        webhook_mode = settings.telegram_webhook_url is not None
        dispatcher = build_dispatcher(
            build_routers(),
            # Behind a webhook load balancer the next message of a conversation may reach another
            # process: its state lives in PostgreSQL. Polling has one receiving process: memory.
            storage=PostgresFsmStorage(db, clock) if webhook_mode else None,
            db=database,
            maintenance=MaintenanceGate(database),
            clock=clock,
            config=config,
            admin_ids=frozenset(settings.admin_ids),
            referral_policy=referral_policy(settings),
            **dependencies,
        )
        parent, _, _ = ctx.path.rpartition("/")
        # Every completion is recorded (batched), so that whichever process Telegram sends an
        # update to again after a SIGKILL recognises it as handled. Started first, stopped last:
        # its final flush records what the dispatcher finished while stopping.
        handled = HandledLog(db=db, bot_id=bot.id, clock=clock)
        updates = UpdateDispatcher(
            dispatcher=dispatcher, bot=bot, reporter=reporter, path=f"{ctx.path}/dispatch",
            on_finished=[handled.note],
        )  # fmt: skip
        children = [handled.child_spec("handled_log"), updates.child_spec("dispatch")]
        webhook = settings.telegram_webhook_url
        if webhook is not None and settings.telegram_webhook_secret is not None:
            await configure_webhook(bot, webhook, settings.telegram_webhook_secret.get_secret_value())
            mode = f"webhook {webhook}"
        else:
            # A webhook left over from an earlier configuration would make getUpdates answer 409.
            await bot.delete_webhook()
            intake = PollingIntake(bot=bot, dispatcher=updates, db=db, log=handled, rng=rng)
            children.append(intake.child_spec("intake"))
            mode = "long polling"
        slot.current, slot.log = updates, handled
        subtree = Supervisor(
            "telegram",
            Strategy.REST_FOR_ONE,
            children,
            max_restarts=settings.max_restarts,
            period=settings.restart_period,
            backoff=Backoff(initial=0.5, maximum=30.0),
            reporter=reporter,
            rng=rng,
        )
        _log.info("bot @%s: receiving updates by %s", config.bot_username, mode)
        try:
            await subtree.run(parent, task_status=task_status)
        finally:
            slot.current, slot.log = None, None

    return ChildSpec(name="telegram", start=start, shutdown_timeout=20.0)
