"""``atlas node``: the authenticated HTTP agent that keeps a node's core in step with its users.

The contract (bearer token on every route; JSON in and out)::

    GET    /v1/health                 -> 200 {"ok": true, "core": "up"|"down", "users": int}
    GET    /v1/users?after=&limit=    -> 200 {"users": [{"email", "uuid", "flow"}], "next": email|null}
    PUT    /v1/users/<email>          {"uuid", "flow"="", "level"=0} -> 200 {"changed": bool}
    DELETE /v1/users/<email>          -> 200 {"changed": bool}
    POST   /v1/users:batch            {"ops": [...]} -> 200 {"results": [...]}  (atlas.vpn.user_batch)
    GET    /v1/users/<email>/traffic  -> 200 {"uplink": int, "downlink": int}
    errors: 400 {"error": "<field>: ..."}, 401 {"error": "unauthorized"}, 502 {"error": "core: ..."},
            500 {"error": "config: ..."} when the config file cannot be written.

The source of truth is the core's config file (:class:`CoreConfigFile`); the core is kept equal
to it through the driver. The order of the two writes keeps one invariant across crashes and
core restarts: **every user the core accepts is in the file** (the file over-approximates the
core). So a grant goes to the file first and then to the core, and a revocation goes to the core
first and then to the file:

- crash after the file write of a grant: the core lacks the user until the agent restarts (it
  re-applies every file user) or the bot retries the PUT (which re-applies it);
- crash after the core removal of a revocation: the file still lists the user, so the bot's
  listing shows it and its retry removes it; a restarting agent re-adds it meanwhile, which errs
  towards access the bot has not yet confirmed as revoked, never towards a hidden user;
- a core restart between the two steps of a revocation reloads the old file and re-adds the
  user, so a DELETE removes from the core once more after the file write.

Listing from the file therefore never hides a user the core would accept. Both PUT and DELETE
always end with a core call, even when the file already says the right thing, so a retry heals a
half-done change; hence a DELETE of an email the file does not hold still answers 502 while the
core is down, and a PUT of an unchanged user re-adds it (remove + add when the core holds the email,
because after a half-done replace it may hold older credentials). Writes to one email
are serialised by a per-email lock held across its file write and core calls; different emails
proceed concurrently, and the file lock is held only for the file write itself.

A batch (:meth:`NodeAgent.apply_batch`) keeps the same order for every op, in three phases, and
writes the file ONCE: (1) core removals that must precede the file change (old credentials of a
replaced user, users to delete), op by op; (2) one atomic file write holding every put and dropping
every delete whose phase 1 succeeded; (3) core grants of the puts and the second removal of the
deletes, op by op. An op whose core call fails gets its own 502 result (its file change is left
out when the failure came before the write) and the others go on; a failed file write is a 500
for every op that needed it. The per-email locks of all the batch's emails are taken in sorted
order (so two batches, or a batch and a single call, cannot deadlock) and held for the batch.

Cancellation: a request cancelled mid-way (client gone, shutdown) may stop between the steps
above; the invariant holds at every step, and the bot's retry finishes the job.
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from functools import partial
from typing import Any, Final

import trio
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from atlas.net.json_limits import loads_bounded
from atlas.vpn.agent_settings import NodeAgentSettings
from atlas.vpn.core import CoreDriver
from atlas.vpn.core_config import CoreConfigError, CoreConfigFile
from atlas.vpn.core_errors import CoreError, CoreUserExists, CoreUserNotFound
from atlas.vpn.user_batch import MAX_BATCH_BODY_BYTES, BadBatch, OpResult, UserOp, read_ops
from atlas.vpn.vless_user import InvalidUser, VlessUser, check_email, email_key
from atlas.web.server import serve_asgi

_log = logging.getLogger("atlas.vpn.agent")

MAX_BODY_BYTES: Final = 4096
DEFAULT_PAGE: Final = 500
MAX_PAGE: Final = 1000


class _KeyedLocks:
    """One ``trio.Lock`` per key, created on demand and dropped when nobody holds or waits for it."""

    def __init__(self) -> None:
        self._locks: dict[str, tuple[trio.Lock, int]] = {}

    @asynccontextmanager
    async def hold(self, key: str) -> AsyncIterator[None]:
        lock, users = self._locks.get(key, (trio.Lock(), 0))
        self._locks[key] = (lock, users + 1)
        try:
            async with lock:
                yield
        finally:
            lock, users = self._locks[key]
            if users == 1:
                del self._locks[key]
            else:
                self._locks[key] = (lock, users - 1)


class NodeAgent:
    """Applies user changes to the config file and the core in the order described above."""

    def __init__(self, config: CoreConfigFile, driver: CoreDriver) -> None:
        self.config = config
        self.driver = driver
        self._locks = _KeyedLocks()

    async def _grant(self, user: VlessUser) -> None:
        try:
            await self.driver.add_user(user.email, user.uuid, user.flow, user.level)
        except CoreUserExists:
            # The core holds this email, possibly with older credentials: replace it.
            await self._revoke(user.email)
            await self.driver.add_user(user.email, user.uuid, user.flow, user.level)

    async def _revoke(self, email: str) -> None:
        try:
            await self.driver.remove_user(email)
        except CoreUserNotFound:
            return  # absent is the goal

    async def put_user(self, user: VlessUser) -> bool:
        """Make ``user`` present in the file and the core; return whether the file changed.

        Raises ``CoreError`` (the file may already hold the user: a retry completes it) or
        ``CoreConfigError``.
        """
        async with self._locks.hold(user.key):
            current = self.config.get(user.email)
            if current is not None and current.same_as(user):
                await self._grant(current)  # heals an earlier grant that failed after the file write
                return False
            if current is not None:
                await self._revoke(current.email)  # revoke old credentials before the file forgets them
            await self.config.upsert(user)
            await self._grant(user)
            return True

    async def delete_user(self, email: str) -> bool:
        """Make ``email`` absent from the core and the file; return whether the file changed."""
        async with self._locks.hold(email_key(email)):
            current = self.config.get(email)
            if current is None:
                await self._revoke(email)
                return False
            await self._revoke(current.email)
            await self.config.remove(current.email)
            await self._revoke(current.email)  # a core restarted in between reloaded the old file
            return True

    async def apply_batch(self, ops: Sequence[VlessUser | str]) -> list[OpResult]:
        """Apply puts (a :class:`VlessUser`) and deletes (an email) with ONE config file write.

        Emails must not repeat (case-insensitively; ``ValueError``). Returns one result per op,
        in order; see the module docstring for the phases and what each failure means.
        """
        keys = [op.key if isinstance(op, VlessUser) else email_key(op) for op in ops]
        if len(set(keys)) != len(keys):
            raise ValueError("a batch must not repeat an email")
        results: list[OpResult | None] = [None] * len(ops)
        changes: dict[int, VlessUser | str] = {}  # op index -> what the file write does for it
        async with AsyncExitStack() as held:
            for key in sorted(keys):
                await held.enter_async_context(self._locks.hold(key))
            # Phase 1: removals from the core that must come before the file forgets a user.
            for index, op in enumerate(ops):
                try:
                    if isinstance(op, VlessUser):
                        current = self.config.get(op.email)
                        if current is None or not current.same_as(op):
                            if current is not None:
                                await self._revoke(current.email)
                            changes[index] = op
                    else:
                        await self._revoke(op)
                        current = self.config.get(op)
                        if current is None:
                            results[index] = OpResult.done(False)
                        else:
                            changes[index] = current.email
                except CoreError as exc:
                    results[index] = OpResult.failed(502, f"core: {exc}")
            # Phase 2: one atomic write for the whole batch.
            if changes:
                try:
                    await self.config.apply(
                        [c for c in changes.values() if isinstance(c, VlessUser)],
                        [c for c in changes.values() if isinstance(c, str)],
                    )
                except CoreConfigError as exc:
                    _log.error("config file write failed (batch of %d): %s", len(changes), exc)
                    for index in changes:
                        results[index] = OpResult.failed(500, f"config: {exc}")
            # Phase 3: grants, and the second removal (a core restarted meanwhile reloaded the old file).
            for index, op in enumerate(ops):
                if results[index] is not None:
                    continue
                try:
                    if isinstance(op, VlessUser):
                        current = self.config.get(op.email)
                        await self._grant(current if current is not None else op)
                    else:
                        await self._revoke(op)
                except CoreError as exc:
                    results[index] = OpResult.failed(502, f"core: {exc}")
                else:
                    results[index] = OpResult.done(index in changes)
        return [result if result is not None else OpResult.failed(500, "not applied") for result in results]

    async def traffic(self, email: str) -> tuple[int, int]:
        """``(uplink, downlink)`` bytes of ``email`` (as spelled in the file when present)."""
        current = self.config.get(email)
        return await self.driver.query_traffic(current.email if current is not None else email)

    async def core_up(self) -> bool:
        """True if the core's API answers a ping."""
        try:
            await self.driver.ping()
        except CoreError:
            return False
        return True

    async def reapply_all(self) -> int:
        """Grant every file user to the core again (after an agent restart); return how many.

        Raises ``CoreError`` on the first failure; it is safe to call again.
        """
        applied = 0
        for user in self.config.users():
            async with self._locks.hold(user.key):
                current = self.config.get(user.email)
                if current is not None:
                    await self._grant(current)
                    applied += 1
        return applied

    async def keep_core_in_step(self, *, first_retry: float = 0.5, max_retry: float = 30.0) -> None:
        """Re-apply the file to the core until it succeeds once, backing off while the core is down.

        After that a restarting core loads the file itself, so nothing more is needed.
        """
        delay = first_retry
        while True:
            try:
                applied = await self.reapply_all()
            except CoreError as exc:
                _log.warning("re-applying users to the core failed, retrying in %.1fs: %s", delay, exc)
                await trio.sleep(delay)
                delay = min(delay * 2, max_retry)
                continue
            _log.info("core in step with %s: %d users applied", self.config.path, applied)
            return


# --- HTTP -------------------------------------------------------------------------------------


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


class BearerAuth:
    """ASGI middleware: every HTTP request needs ``Authorization: Bearer <token>`` (else 401).

    It wraps the whole app, so unknown paths answer 401 too and reveal nothing to strangers.
    """

    def __init__(self, app: ASGIApp, token: str) -> None:
        if not token:
            raise ValueError("token must not be empty")
        self._app = app
        self._token = token.encode()

    def _authorized(self, scope: Scope) -> bool:
        provided = b""
        for name, value in scope["headers"]:
            if name == b"authorization":
                provided = value
                break
        scheme, _, credentials = provided.partition(b" ")
        # Constant-time, so the token cannot be guessed byte by byte from response times.
        token_ok = hmac.compare_digest(credentials.strip(), self._token)
        return scheme.lower() == b"bearer" and token_ok

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "websocket":  # the agent has none; refuse before any handshake
            await send({"type": "websocket.close", "code": 1008})
            return
        if scope["type"] == "http" and not self._authorized(scope):
            await _error(401, "unauthorized")(scope, receive, send)
            return
        await self._app(scope, receive, send)


async def _read_json_body(request: Request, limit: int = MAX_BODY_BYTES) -> Any:
    declared = request.headers.get("content-length")
    if declared is not None and (not declared.isdigit() or int(declared) > limit):
        raise InvalidUser(f"body: larger than {limit} bytes")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise InvalidUser(f"body: larger than {limit} bytes")
    try:
        return loads_bounded(body)
    except ValueError as exc:
        raise InvalidUser(f"body: not valid JSON ({exc})") from exc


Handler = Callable[[Request], Awaitable[JSONResponse]]


def _translating(handler: Handler) -> Handler:
    """Map bad input to 400, core failures to 502 and config write failures to 500."""

    async def wrapped(request: Request) -> JSONResponse:
        try:
            return await handler(request)
        except (InvalidUser, BadBatch) as exc:
            return _error(400, str(exc))
        except CoreError as exc:
            return _error(502, f"core: {exc}")
        except CoreConfigError as exc:
            _log.error("config file write failed: %s", exc)
            return _error(500, f"config: {exc}")

    return wrapped


def _checked_ops(parsed: Sequence[UserOp | str]) -> list[VlessUser | str | OpResult]:
    """Each op as the agent applies it (a user to put, an email to delete), or its 400 result."""
    seen: set[str] = set()
    checked: list[VlessUser | str | OpResult] = []
    for index, op in enumerate(parsed):
        if isinstance(op, str):
            checked.append(OpResult.failed(400, op))
            continue
        try:
            item: VlessUser | str = (
                VlessUser.checked(op.email, op.uuid, op.flow, op.level)
                if op.kind == "put"
                else check_email(op.email)
            )
        except InvalidUser as exc:
            checked.append(OpResult.failed(400, f"ops[{index}]: {exc}"))
            continue
        key = item.key if isinstance(item, VlessUser) else email_key(item)
        if key in seen:
            checked.append(OpResult.failed(400, f"ops[{index}].email: repeated in this batch"))
            continue
        seen.add(key)
        checked.append(item)
    return checked


def build_agent_app(agent: NodeAgent, *, token: str) -> ASGIApp:
    """The agent's ASGI app: the routes of the contract above, behind :class:`BearerAuth`."""

    async def health(request: Request) -> JSONResponse:
        up = await agent.core_up()
        return JSONResponse({"ok": True, "core": "up" if up else "down", "users": agent.config.count()})

    async def list_users(request: Request) -> JSONResponse:
        after = request.query_params.get("after")
        if after is not None:
            try:
                check_email(after)
            except InvalidUser as exc:
                raise InvalidUser(f"after: {exc}") from exc
        raw_limit = request.query_params.get("limit", str(DEFAULT_PAGE))
        if not raw_limit.isdigit() or not 1 <= int(raw_limit) <= MAX_PAGE:
            raise InvalidUser(f"limit: must be an integer in 1..{MAX_PAGE}, got {raw_limit!r}")
        users, more = agent.config.page(after, int(raw_limit))
        return JSONResponse(
            {
                "users": [{"email": u.email, "uuid": u.uuid, "flow": u.flow} for u in users],
                "next": users[-1].email if more and users else None,
            }
        )

    async def put_user(request: Request) -> JSONResponse:
        email = check_email(request.path_params["email"])
        body = await _read_json_body(request)
        if not isinstance(body, dict):
            raise InvalidUser("body: must be a JSON object")
        if "uuid" not in body:
            raise InvalidUser("uuid: missing")
        user = VlessUser.checked(email, body["uuid"], body.get("flow", ""), body.get("level", 0))
        return JSONResponse({"changed": await agent.put_user(user)})

    async def delete_user(request: Request) -> JSONResponse:
        email = check_email(request.path_params["email"])
        return JSONResponse({"changed": await agent.delete_user(email)})

    async def batch(request: Request) -> JSONResponse:
        parsed = read_ops(await _read_json_body(request, MAX_BATCH_BODY_BYTES))
        checked = _checked_ops(parsed)
        valid = [op for op in checked if not isinstance(op, OpResult)]
        applied = iter(await agent.apply_batch(valid) if valid else [])
        results = [op if isinstance(op, OpResult) else next(applied) for op in checked]
        return JSONResponse({"results": [result.to_json() for result in results]})

    async def traffic(request: Request) -> JSONResponse:
        email = check_email(request.path_params["email"])
        uplink, downlink = await agent.traffic(email)
        return JSONResponse({"uplink": uplink, "downlink": downlink})

    routes = [
        Route("/v1/health", _translating(health), methods=["GET"]),
        Route("/v1/users", _translating(list_users), methods=["GET"]),
        Route("/v1/users:batch", _translating(batch), methods=["POST"]),
        Route("/v1/users/{email}", _translating(put_user), methods=["PUT"]),
        Route("/v1/users/{email}", _translating(delete_user), methods=["DELETE"]),
        Route("/v1/users/{email}/traffic", _translating(traffic), methods=["GET"]),
    ]
    return BearerAuth(Starlette(routes=routes), token)


async def run_agent(
    settings: NodeAgentSettings, *, task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED
) -> None:
    """Run the node agent until cancelled; ``task_status.started`` gets its base URL.

    Loads the config file (a bad file fails here with :class:`CoreConfigError`, before serving),
    serves the HTTP API (HTTPS with the settings' TLS files), and re-applies every file user to
    the core in the background until that succeeds once (the core may still be starting).
    Cancellation stops the server gracefully and closes the connection to the core.
    """
    config = CoreConfigFile(settings.config_path, settings.inbound_tag)
    await config.load()
    async with CoreDriver(
        settings.core_api, settings.flavour, settings.inbound_tag, settings.core_timeout
    ) as driver:
        agent = NodeAgent(config, driver)
        app = build_agent_app(agent, token=settings.token.get_secret_value())
        async with trio.open_nursery() as nursery:
            tls = settings.tls_cert_file, settings.tls_key_file
            url: str = await nursery.start(
                partial(
                    serve_asgi,
                    certfile=None if tls[0] is None else str(tls[0]),
                    keyfile=None if tls[1] is None else str(tls[1]),
                ),
                app,
                settings.listen_host,
                settings.listen_port,
            )
            nursery.start_soon(agent.keep_core_in_step)
            _log.info("node agent listening on %s, core API %s", url, settings.core_api)
            task_status.started(url)
