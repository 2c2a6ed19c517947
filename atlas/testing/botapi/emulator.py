"""The Telegram Bot API emulator: one fake bot, its users, and what it did.

Usage (inside ``trio.run``)::

    emulator = BotApiEmulator()
    async with trio.open_nursery() as nursery:
        base = await nursery.start(emulator.serve)      # "http://127.0.0.1:<port>"
        bot = make_bot(emulator.token, base)            # the real aiogram Bot, real HTTP
        alice = emulator.add_user(1001, "Alice")
        alice.send_command("/start", "ref42")
        ...                                             # the bot polls, answers, sends
        reply = await alice.next_message()

It is a trio-native server (Starlette served by Hypercorn on trio) and speaks what aiogram 3
sends: urlencoded or multipart POSTs to ``/bot<token>/<method>``. It is product code: ``atlas demo``
runs the bot against it as well as the tests. The same server has the web chat
(``emulator.webchat_url()``): a page on which a person is one of the users (see ``_webchat``).
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from functools import partial
from typing import Any
from urllib.parse import urlencode

import trio
from starlette.applications import Starlette

from atlas.clock import Clock
from atlas.net import OutboundHttp
from atlas.testing.botapi._app import build_app
from atlas.testing.botapi._core import PRE_CHECKOUT_LIMIT, EmulatorCore
from atlas.testing.botapi._payments import record_charge
from atlas.testing.botapi._updates import deliver_webhooks
from atlas.testing.botapi._webchat import WEBCHAT_USER_ID, WebChatUsers, webchat_routes
from atlas.testing.botapi.faults import InjectedFault
from atlas.testing.botapi.groups import EmulatedGroup
from atlas.testing.botapi.rates import RateLimits
from atlas.testing.botapi.records import (
    CallbackAnswer,
    Charge,
    ChatRecord,
    InvoiceRecord,
    PreCheckoutAnswer,
    Refund,
    SendStamp,
    ServedError,
    WebhookAttempt,
    WebhookConfig,
)
from atlas.testing.botapi.users import EmulatedUser
from atlas.web.server import serve_asgi

DEFAULT_TOKEN = "123456789:EMULATED-bot-token_0123456789abcdef"
_TOKEN = re.compile(r"^[0-9]{1,20}:[A-Za-z0-9_-]{1,100}$")


@dataclass(frozen=True, slots=True)
class EmulatorStatistics:
    """A snapshot of the emulator's queues, in the spirit of trio's ``statistics()``."""

    pending_updates: int
    waiting_polls: int
    """getUpdates calls parked in a long poll right now."""
    webhook_set: bool
    users: int


class BotApiEmulator:
    """An emulated Telegram Bot API server for one bot.

    Options (all keyword-only, all optional):

    - ``token``: the bot token; must look like ``<digits>:<text>`` as aiogram requires. The digits
      are the bot's user id.
    - ``bot_username`` / ``bot_first_name``: what ``getMe`` answers.
    - ``enforce_limits``: answer 429 with ``retry_after`` when a ``send*`` call would exceed
      ``limits`` (per chat every send; globally only bulk sends, not replies: :mod:`.rates`);
      default off, so that tests measure rather than shape; on for ``atlas demo``.
    - ``limits``: :class:`RateLimits` (30/s global, 1/s per chat).
    - ``pre_checkout_timeout``: how long a scripted Stars payment waits for the bot (10 s).
    - ``webhook_first_retry`` / ``webhook_max_retry``: the webhook retry backoff in seconds.
    - ``webhook_timeout``: how long one webhook POST may take.
    - ``clock``: the :class:`Clock` for ``date`` fields (default: one made on first use).
    """

    def __init__(
        self,
        token: str = DEFAULT_TOKEN,
        *,
        bot_username: str = "atlas_emulated_bot",
        bot_first_name: str = "Atlas",
        enforce_limits: bool = False,
        limits: RateLimits | None = None,
        pre_checkout_timeout: float = PRE_CHECKOUT_LIMIT,
        webhook_first_retry: float = 0.1,
        webhook_max_retry: float = 5.0,
        webhook_timeout: float = 10.0,
        clock: Clock | None = None,
    ) -> None:
        if not _TOKEN.match(token):
            # The token itself is not echoed: even a test token should not end up in logs.
            raise ValueError("token must look like <digits>:<letters, digits, _ or ->")
        if not pre_checkout_timeout > 0:
            raise ValueError(f"pre_checkout_timeout must be positive, got {pre_checkout_timeout!r}")
        if not 0 < webhook_first_retry <= webhook_max_retry:
            raise ValueError(
                f"need 0 < webhook_first_retry <= webhook_max_retry, got {webhook_first_retry!r}, "
                f"{webhook_max_retry!r}"
            )
        if not webhook_timeout > 0:
            raise ValueError(f"webhook_timeout must be positive, got {webhook_timeout!r}")
        self._core = EmulatorCore(
            token,
            bot_username=bot_username,
            bot_first_name=bot_first_name,
            limits=limits or RateLimits(),
            enforce_limits=enforce_limits,
            pre_checkout_timeout=pre_checkout_timeout,
            clock=clock,
        )
        self._webhook_retry = (webhook_first_retry, webhook_max_retry)
        self._webhook_timeout = webhook_timeout
        self._users: dict[int, EmulatedUser] = {}
        self._app = build_app(
            self._core, webchat_routes(self._core, WebChatUsers(self._users, self._webchat_default_user))
        )
        self._url: str | None = None

    # -- serving --------------------------------------------------------------------------------

    @property
    def token(self) -> str:
        """The bot token the emulator accepts."""
        return self._core.token

    @property
    def bot_id(self) -> int:
        """The bot's user id (the digits of the token)."""
        return self._core.bot_id

    @property
    def app(self) -> Starlette:
        """The ASGI app, for mounting it elsewhere or driving it without sockets."""
        return self._app

    @property
    def url(self) -> str:
        """The base URL while :meth:`serve` runs (``http://127.0.0.1:<port>``)."""
        if self._url is None:
            raise RuntimeError("the emulator is not serving; start it with nursery.start(emulator.serve)")
        return self._url

    async def serve(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Serve the Bot API and deliver webhooks until cancelled; ``task_status`` gets the base URL.

        Cancellation stops the listener and the webhook deliverer; the state (chats, records)
        stays readable afterwards.
        """
        first, most = self._webhook_retry
        async with (
            OutboundHttp(timeout=self._webhook_timeout, max_response_bytes=64 * 1024) as client,
            trio.open_nursery() as nursery,
        ):
            nursery.start_soon(
                partial(
                    deliver_webhooks, self._core, client,
                    first_delay=first, max_delay=most, request_timeout=self._webhook_timeout,
                ),
                name="botapi-webhook-deliverer",
            )
            url: str = await nursery.start(serve_asgi, self._app, host, port)
            self._url = url
            try:
                task_status.started(url)
                await trio.sleep_forever()
            finally:
                self._url = None

    def webchat_url(self, user_id: int | None = None, *, lang: str | None = None) -> str:
        """The web chat page while :meth:`serve` runs: a person talks to the bot as ``user_id``.

        Without ``user_id`` the page is the default user "You" (id :data:`WEBCHAT_USER_ID`, added on
        the first visit); ``lang`` (``"ru"`` or ``"en"``) sets that user's ``language_code``.
        ``RuntimeError`` when the emulator is not serving.
        """
        query: dict[str, str] = {}
        if user_id is not None:
            query["user"] = str(user_id)
        if lang is not None:
            if lang not in ("ru", "en"):
                raise ValueError(f"lang must be 'ru' or 'en', got {lang!r}")
            query["lang"] = lang
        return f"{self.url}/webchat" + (f"?{urlencode(query)}" if query else "")

    def _webchat_default_user(self) -> EmulatedUser:
        existing = self._users.get(WEBCHAT_USER_ID)
        return existing if existing is not None else self.add_user(WEBCHAT_USER_ID, "You")

    # -- users ----------------------------------------------------------------------------------

    def add_user(
        self,
        user_id: int,
        first_name: str = "User",
        *,
        username: str | None = None,
        language_code: str | None = "en",
        last_name: str | None = None,
        is_premium: bool = False,
    ) -> EmulatedUser:
        """Create a user with a private chat with the bot. ``ValueError`` on a bad or taken id."""
        if not 0 < user_id < 2**52:
            raise ValueError(f"user_id must be a positive integer below 2**52, got {user_id!r}")
        if user_id in self._users or user_id == self.bot_id:
            raise ValueError(f"user_id {user_id} is already taken")
        if not first_name:
            raise ValueError("first_name must be non-empty")
        user: dict[str, Any] = {"id": user_id, "is_bot": False, "first_name": first_name}
        if last_name:
            user["last_name"] = last_name
        if username:
            user["username"] = username.removeprefix("@")
        if language_code:
            user["language_code"] = language_code
        if is_premium:
            user["is_premium"] = True
        emulated = EmulatedUser(self._core, self._core.add_chat(user))
        self._users[user_id] = emulated
        return emulated

    def add_group(
        self, chat_id: int, title: str, *, creator: EmulatedUser, privacy: bool = True
    ) -> EmulatedGroup:
        """Create a supergroup ``chat_id`` (negative) with the bot in it; see :mod:`.groups`.

        ``privacy`` is the bot's privacy mode (on by default, as on Telegram). ``ValueError`` on a
        non-negative or taken id.
        """
        if chat_id >= 0:
            raise ValueError(f"a group's chat id is negative, got {chat_id!r}")
        if chat_id in self._core.chats:
            raise ValueError(f"chat {chat_id} already exists")
        if not title:
            raise ValueError("title must be non-empty")
        group = {"id": chat_id, "type": "supergroup", "title": title}
        return EmulatedGroup(self._core, self._core.add_group(group, creator.as_json()), privacy=privacy)

    def user(self, user_id: int) -> EmulatedUser:
        """The user with this id (``KeyError`` if never added)."""
        return self._users[user_id]

    @property
    def users(self) -> Mapping[int, EmulatedUser]:
        """Every user, by id."""
        return dict(self._users)

    def add_record_listener(self, listener: Callable[[ChatRecord], None]) -> None:
        """Call ``listener(record)`` for every record as it happens (a load generator's reply clock).

        It runs inside the request that made the record, so it must be quick and must not raise.
        """
        self._core.record_listeners.append(listener)

    def chat_log(self, chat_id: int) -> list[ChatRecord]:
        """Everything the bot did to the chat ``chat_id`` (``KeyError`` for an unknown chat)."""
        return list(self._core.chats[chat_id].log)

    # -- raw updates and waiting ----------------------------------------------------------------

    def enqueue_update(self, kind: str, payload: Mapping[str, Any]) -> int:
        """Queue any update by hand (``kind`` is its field, e.g. ``"my_chat_member"``); return its id."""
        return self._core.enqueue_update(kind, dict(payload))

    def pending_updates(self) -> list[dict[str, Any]]:
        """The queued (not yet confirmed) updates, oldest first."""
        return list(self._core.updates)

    async def wait_for_long_poll(self, within: float = 5.0) -> None:
        """Return once a getUpdates call is parked waiting; :class:`NothingInTime` after ``within`` s."""
        core = self._core
        await core.wait_for(lambda: True if core.waiting_polls else None, within, "a parked getUpdates")

    async def wait_until_delivered(self, within: float = 5.0) -> None:
        """Return once no update is queued (polled and confirmed, or delivered to the webhook)."""
        core = self._core
        await core.wait_for(lambda: True if not core.updates else None, within, "all updates delivered")

    def statistics(self) -> EmulatorStatistics:
        """Queue lengths right now."""
        core = self._core
        return EmulatorStatistics(
            pending_updates=len(core.updates), waiting_polls=core.waiting_polls,
            webhook_set=core.webhook is not None, users=len(self._users),
        )

    # -- what the bot did -----------------------------------------------------------------------

    @property
    def calls(self) -> Counter[str]:
        """How many times each method was called (as the bot spelled it), errors included."""
        return Counter(self._core.calls)

    @property
    def callback_answers(self) -> Sequence[CallbackAnswer]:
        """Every ``answerCallbackQuery``, in order."""
        return tuple(self._core.callback_answers)

    @property
    def pre_checkout_answers(self) -> Sequence[PreCheckoutAnswer]:
        """Every ``answerPreCheckoutQuery`` (late ones included), in order."""
        return tuple(self._core.pre_checkout_answers)

    @property
    def invoices(self) -> Sequence[InvoiceRecord]:
        """Every invoice the bot created (messages and links), in order."""
        return tuple(self._core.invoices)

    @property
    def charges(self) -> Mapping[str, Charge]:
        """Every Stars charge issued, by ``telegram_payment_charge_id``."""
        return dict(self._core.charges)

    def add_star_charge(self, user_id: int, amount: int, invoice_payload: str) -> Charge:
        """A Stars charge from ``user_id`` that Atlas has no record of (an old invoice link, another
        bot's payload): it is in ``getStarTransactions``, and no update is sent."""
        if isinstance(amount, bool) or not isinstance(amount, int) or amount <= 0:
            raise ValueError(f"amount must be a positive int, got {amount!r}")
        return record_charge(
            self._core, user_id=user_id, currency="XTR", total_amount=amount, invoice_payload=invoice_payload
        )

    @property
    def star_transactions(self) -> Sequence[Mapping[str, Any]]:
        """The bot's Stars history as ``getStarTransactions`` pages it, oldest first."""
        return tuple(self._core.star_transactions)

    @property
    def refunds(self) -> Sequence[Refund]:
        """Every successful ``refundStarPayment``."""
        return tuple(self._core.refunds)

    @property
    def webhook(self) -> WebhookConfig | None:
        """The webhook currently set, if any."""
        return self._core.webhook

    def route_webhook_to(self, url: str) -> None:
        """Deliver the next updates to ``url`` (same secret): a load balancer picking another process.

        Raises ``RuntimeError`` when no webhook is set.
        """
        current = self._core.webhook
        if current is None:
            raise RuntimeError("no webhook is set: the bot has not called setWebhook")
        self._core.webhook = replace(current, url=url)

    @property
    def webhook_attempts(self) -> Sequence[WebhookAttempt]:
        """Every webhook POST, in order."""
        return tuple(self._core.webhook_attempts)

    def commands(
        self, scope: Mapping[str, Any] | None = None, language_code: str = ""
    ) -> list[dict[str, str]]:
        """The commands set with ``setMyCommands`` for a scope (default scope) and language."""
        key = json.dumps(dict(scope) if scope else {"type": "default"}, sort_keys=True)
        return list(self._core.commands.get((key, language_code), []))

    # -- faults ---------------------------------------------------------------------------------

    def inject(
        self,
        method: str | None,
        chat_id: int | str | None = None,
        error: int = 429,
        *,
        retry_after: int | None = None,
        count: int | None = 1,
        description: str | None = None,
    ) -> InjectedFault:
        """Answer next ``count`` calls of ``method`` (None: any) to ``chat_id`` (None: any) with ``error``.

        ``error`` is 400, 401, 403, 404, 409, 429 or a 5xx; a 429 carries ``retry_after`` (default
        1 s). ``count=None`` keeps answering until :meth:`clear_faults`. Descriptions default to
        Telegram's (``Too Many Requests: retry after N``, ``Forbidden: bot was blocked by the user``,
        ...). The call is refused before it runs, so nothing changes. The returned fault counts its
        ``hits``.
        """
        return self._core.faults.inject(
            method, chat_id, error, retry_after=retry_after, count=count, description=description
        )

    def fail_all_5xx(self, on: bool = True, code: int = 500) -> None:
        """While on, every call of every method answers ``code`` (an outage)."""
        self._core.faults.fail_all_5xx(on, code)

    def set_answer_latency(self, method: str, seconds: float) -> None:
        """Answer every ``method`` call ``seconds`` (trio clock) after it arrived; 0 for at once.

        The call is stamped and takes effect when it arrives; only the answer waits — what a
        distant Bot API server looks like to the bot. ``ValueError`` on a negative or infinite delay.
        """
        if not 0 <= seconds < float("inf"):
            raise ValueError(f"seconds must be a finite number >= 0, got {seconds!r}")
        self._core.answer_latency[method.lower()] = float(seconds)

    def clear_faults(self) -> None:
        """Remove every injected fault and end an outage."""
        self._core.faults.clear()

    # -- rates ----------------------------------------------------------------------------------

    @property
    def send_stamps(self) -> Sequence[SendStamp]:
        """Every ``send*`` call with its trio time, chat and whether it was accepted."""
        return self._core.rates.stamps

    def max_global_rate(
        self, window: float = 1.0, *, accepted_only: bool = False, replies: bool = False
    ) -> int:
        """The most bulk ``send*`` calls in any ``window`` seconds, over all chats: what the global
        limit counts (:mod:`.rates`: replies to a chat talking to the bot are not bulk).
        ``replies=True`` counts every send."""
        return self._core.rates.max_global(window, accepted_only=accepted_only, replies=replies)

    def max_per_chat_rate(self, window: float = 1.0, *, accepted_only: bool = False) -> int:
        """The most ``send*`` calls to a single chat in any ``window`` seconds (worst chat)."""
        return self._core.rates.max_per_chat(window, accepted_only=accepted_only)

    @property
    def served_errors(self) -> Sequence[ServedError]:
        """Every error answer given, in order."""
        return tuple(self._core.served_errors)

    @property
    def served_429(self) -> int:
        """How many 429 answers were given (injected and enforced)."""
        return sum(1 for error in self._core.served_errors if error.code == 429)

