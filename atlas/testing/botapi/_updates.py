"""Getting updates to the bot: long polling (getUpdates) or the webhook, never both.

Polling: an update stays queued until the bot calls getUpdates with a higher ``offset`` (that is
the confirmation), so an unconfirmed update comes back on the next call. ``timeout`` parks the call
until an update arrives or the time is up. A newer getUpdates ends a parked older one with 409,
which is how Telegram tells two bot instances apart.

Webhook: while a webhook is set, getUpdates answers 409 and a delivery task POSTs the queued
updates, oldest first and one at a time, with the ``X-Telegram-Bot-Api-Secret-Token`` header. A 2xx
answer confirms the update; anything else (or no answer) is retried after an exponential backoff, so
delivery is at-least-once and in order. The webhook's answer body is ignored (the emulator does not
run a method returned in the webhook response).
"""

from __future__ import annotations

import http
import json
import re
from typing import Any
from urllib.parse import urlsplit

import trio

from atlas.net import OutboundError, OutboundHttp
from atlas.testing.botapi._core import EmulatorCore
from atlas.testing.botapi._params import Params
from atlas.testing.botapi._registry import Described, api_method
from atlas.testing.botapi.errors import ApiError, bad_request
from atlas.testing.botapi.records import WebhookAttempt, WebhookConfig

MAX_POLL_TIMEOUT = 50
"""Telegram's own ceiling for a long poll, in seconds."""
_NOT_BY_DEFAULT = frozenset({"chat_member", "message_reaction", "message_reaction_count"})
_SECRET = re.compile(r"^[A-Za-z0-9_-]{1,256}$")


def _webhook_active() -> ApiError:
    return ApiError(
        409,
        "Conflict: can't use getUpdates method while webhook is active; "
        "use deleteWebhook to delete the webhook first",
    )


def _terminated() -> ApiError:
    return ApiError(
        409,
        "Conflict: terminated by other getUpdates request; make sure that only one bot instance is running",
    )


def _kind(update: dict[str, Any]) -> str:
    return next(key for key in update if key != "update_id")


def _allowed(core: EmulatorCore, update: dict[str, Any]) -> bool:
    kind = _kind(update)
    if not core.allowed_updates:
        return kind not in _NOT_BY_DEFAULT
    return kind in core.allowed_updates


def _remember_allowed_updates(core: EmulatorCore, p: Params) -> None:
    allowed = p.get_json("allowed_updates")
    if allowed is None:
        return
    if not isinstance(allowed, list) or not all(isinstance(kind, str) for kind in allowed):
        raise bad_request("can't parse allowed_updates JSON object")
    core.allowed_updates = tuple(allowed) or None


@api_method("getUpdates")
async def get_updates(core: EmulatorCore, p: Params) -> list[dict[str, Any]]:
    """Confirm updates below ``offset``; return up to ``limit`` of the rest, waiting up to ``timeout``."""
    if core.webhook is not None:
        raise _webhook_active()
    offset = p.get_int("offset")
    limit = min(max(p.get_int("limit") or 100, 1), 100)
    timeout = min(max(p.get_int("timeout") or 0, 0), MAX_POLL_TIMEOUT)
    _remember_allowed_updates(core, p)
    if offset is not None and offset < 0:
        core.updates = core.updates[offset:]
    elif offset is not None:
        core.confirm_updates_before(offset)
    # Telegram discards updates of types the bot said it does not want.
    core.updates = [update for update in core.updates if _allowed(core, update)]
    core.poll_generation += 1
    generation = core.poll_generation
    deadline = core.now() + timeout
    core.changed.fire()  # an older parked poll wakes up and answers 409
    while True:
        if core.updates:
            return core.updates[:limit]
        remaining = deadline - core.now()
        if remaining <= 0:
            return []
        core.waiting_polls += 1
        core.changed.fire()
        try:
            with trio.move_on_after(remaining):
                await core.changed.wait()
        finally:
            core.waiting_polls -= 1
        if core.poll_generation != generation:
            raise _terminated()
        if core.webhook is not None:
            raise _webhook_active()
        core.updates = [update for update in core.updates if _allowed(core, update)]


@api_method("setWebhook")
async def set_webhook(core: EmulatorCore, p: Params) -> Described:
    """Set (or, with an empty url, remove) the webhook. Plain ``http://`` is accepted: tests run locally."""
    url = p.get_str("url") or ""
    if not url:
        return await delete_webhook(core, p)
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise bad_request("bad webhook: An HTTPS URL must be provided for webhook")
    secret = p.get_str("secret_token")
    if secret is not None and not _SECRET.match(secret):
        raise bad_request("secret token contains unallowed characters")
    max_connections = p.get_int("max_connections") or 40
    if not 1 <= max_connections <= 100:
        raise bad_request("bad webhook: max_connections must be between 1 and 100")
    _remember_allowed_updates(core, p)
    config = WebhookConfig(
        url=url, secret_token=secret, max_connections=max_connections, allowed_updates=core.allowed_updates,
    )
    if p.get_bool("drop_pending_updates"):
        core.drop_pending_updates()
    if core.webhook == config:
        return Described(True, "Webhook is already set")
    core.webhook = config
    core.webhook_last_error = None
    core.changed.fire()
    return Described(True, "Webhook was set")


@api_method("deleteWebhook")
async def delete_webhook(core: EmulatorCore, p: Params) -> Described:
    """Remove the webhook (getUpdates works again); optionally drop the queued updates."""
    if p.get_bool("drop_pending_updates"):
        core.drop_pending_updates()
    if core.webhook is None:
        return Described(True, "Webhook is already deleted")
    core.webhook = None
    core.changed.fire()
    return Described(True, "Webhook was deleted")


@api_method("getWebhookInfo")
async def get_webhook_info(core: EmulatorCore, p: Params) -> dict[str, Any]:
    """The webhook, the queue length and the last delivery error, as Telegram reports them."""
    config = core.webhook
    info: dict[str, Any] = {
        "url": config.url if config else "",
        "has_custom_certificate": False,
        "pending_update_count": len(core.updates),
    }
    if config is not None:
        info["max_connections"] = config.max_connections
        if config.allowed_updates:
            info["allowed_updates"] = list(config.allowed_updates)
    if core.webhook_last_error is not None:
        info["last_error_date"], info["last_error_message"] = core.webhook_last_error
    return info


def _describe_failure(status: int | None, error: str | None) -> str:
    if status is None:
        return error or "Connection failed"
    try:
        phrase = http.HTTPStatus(status).phrase
    except ValueError:
        phrase = "Unknown"
    return f"Wrong response from the webhook: {status} {phrase}"


async def deliver_webhooks(
    core: EmulatorCore, client: OutboundHttp, *, first_delay: float, max_delay: float, request_timeout: float
) -> None:
    """Run forever: POST queued updates to the webhook in order, retrying failures with backoff.

    Cancellation stops it between or during attempts; an update whose POST was cut short stays
    queued (it was not confirmed), exactly as a Telegram delivery that got no answer.
    """
    delay = first_delay
    while True:
        config = core.webhook
        if config is None or not core.updates:
            delay = first_delay
            await core.changed.wait()
            continue
        update = core.updates[0]
        if not _allowed(core, update):
            core.updates.pop(0)
            continue
        headers = {"Content-Type": "application/json"}
        if config.secret_token is not None:
            headers["X-Telegram-Bot-Api-Secret-Token"] = config.secret_token
        status: int | None = None
        error: str | None = None
        try:
            response = await client.request(
                "POST", config.url, content=json.dumps(update).encode(), headers=headers,
                request_timeout=request_timeout,
            )
            status = response.status_code
        except OutboundError as exc:
            error = f"{type(exc).__name__}: {exc}"
        attempt = WebhookAttempt(
            update_id=update["update_id"], url=config.url, time=core.now(), status=status, error=error,
            secret_token=config.secret_token,
        )
        core.webhook_attempts.append(attempt)
        if attempt.delivered:
            if core.updates and core.updates[0]["update_id"] == attempt.update_id:
                core.updates.pop(0)
            delay = first_delay
            core.changed.fire()
            continue
        core.webhook_last_error = (core.unix_now(), _describe_failure(status, error))
        core.changed.fire()
        # Back off, but start over at once when the bot changes or removes its webhook.
        with trio.move_on_after(delay):
            while core.webhook == config:
                await core.changed.wait()
        delay = first_delay if core.webhook != config else min(delay * 2, max_delay)
