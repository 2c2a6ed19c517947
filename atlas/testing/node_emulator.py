"""An emulated VPN node agent: the ``atlas node`` HTTP contract over an in-memory user table.

Tests and ``atlas demo`` run it as a real HTTP server on 127.0.0.1 (Hypercorn via
:func:`atlas.web.server.serve_asgi`), so the bot's :class:`atlas.vpn.NodeClient` is exercised over
real sockets. It speaks exactly the contract in :mod:`atlas.vpn.node_client` (bearer token, health,
keyset-paginated user list, idempotent PUT/DELETE, the batch route of :mod:`atlas.vpn.user_batch`
with its per-op results, traffic counters, 400/401/502 errors) and lets a test break it on purpose:

* ``batch_route=False``: no ``POST /v1/users:batch`` (404), as an agent that predates it.
* ``latency``: seconds every request waits (``trio.sleep``, so ``MockClock`` controls it).
* :meth:`fail_next`: the next ``n`` requests answer ``status`` (503 by default) with an error body.
* :meth:`garbage_next`: the next ``n`` requests answer 200 with garbage (not JSON, the wrong
  shape, or the right keys with the wrong types). Garbage never changes the user table.
* :meth:`outage` / :meth:`recover`: by default the listener is really closed (new connections are
  refused, open ones are dropped, in-flight requests die) and later re-opened on the same port,
  which is what a crashed agent looks like. ``outage(refuse_connections=False)`` keeps listening
  and answers 503 to everything instead (a proxy in front of a dead agent).
* ``core_up = False``: health reports ``"core": "down"`` and user changes answer 502 ``core: ...``
  (in a batch, every op gets a 502 result).
* ``change_gate``: an async callable ``(kind, email)`` awaited before each put or delete is applied
  (single or batched), so a test can hold a change at the exact moment a race needs.

Faults are consumed in the order they were queued, by any request, before the token is checked.

Direct access for assertions: ``users`` (email -> :class:`EmulatedUser`), :meth:`put_orphan`,
:meth:`add_traffic`, ``calls`` (requests per route name, unauthorized ones included),
``ops`` (user changes applied per kind, ``"put"``/``"delete"``, whichever route carried them),
``unauthorized``, ``in_flight`` and ``max_concurrent`` (the most requests seen at once).

Like Xray, emails are case-insensitive: the emulator stores them lower-cased.
"""

from __future__ import annotations

import bisect
import collections
import hmac
import re
import uuid as uuidlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Final, Literal, cast
from urllib.parse import urlsplit

import trio
from hypercorn.typing import ASGIFramework
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from atlas.vpn.nodes import FLOWS
from atlas.vpn.user_batch import MAX_BATCH_BODY_BYTES, BadBatch, OpResult, UserOp, read_ops
from atlas.web.server import serve_asgi

GarbageKind = Literal["not_json", "wrong_shape", "wrong_types"]
ROUTES: Final = ("health", "list_users", "put_user", "delete_user", "batch", "traffic")
MAX_BODY: Final = MAX_BATCH_BODY_BYTES
DEFAULT_LIMIT: Final = 500
MAX_LIMIT: Final = 1000


_WHITESPACE = re.compile(r"\s")


def _plain(email: str) -> bool:
    """Printable and without whitespace (whole-string checks: this runs for every op)."""
    return email.isprintable() and _WHITESPACE.search(email) is None


@dataclass(frozen=True, slots=True)
class EmulatedUser:
    """A user in the emulated core."""

    uuid: str
    flow: str = ""
    level: int = 0


@dataclass(frozen=True, slots=True)
class _Fault:
    status: int | None = None
    garbage: GarbageKind | None = None


class _UserTable(dict[str, "EmulatedUser"]):
    """The user table: a dict that counts its changes, so the sorted listing index knows when to rebuild."""

    version = 0

    def __setitem__(self, key: str, value: EmulatedUser) -> None:
        self.version += 1
        super().__setitem__(key, value)

    def __delitem__(self, key: str) -> None:
        self.version += 1
        super().__delitem__(key)

    def pop(self, key: str, *default: Any) -> Any:
        """``dict.pop``, counted."""
        self.version += 1
        return super().pop(key, *default)

    def clear(self) -> None:
        """``dict.clear``, counted."""
        self.version += 1
        super().clear()

    def update(self, *args: Any, **kwargs: Any) -> None:
        """``dict.update``, counted."""
        self.version += 1
        super().update(*args, **kwargs)


class _BadRequest(Exception):
    """Raised inside a handler to answer 400 with ``{"error": message}``."""


Handler = Callable[[Request], Awaitable[Any]]
ChangeGate = Callable[[str, str], Awaitable[None]]


class NodeEmulator:
    """An in-memory node agent served over HTTP; see the module docstring for the faults."""

    def __init__(self, token: str, *, latency: float = 0.0, batch_route: bool = True) -> None:
        if not token:
            raise ValueError("the emulator needs a non-empty token")
        self._token = token.encode()
        self.latency = latency
        self.core_up = True
        self.users: dict[str, EmulatedUser] = _UserTable()
        self._index: list[str] | None = None
        self._index_version: tuple[int, int] = (0, -1)
        self.traffic_counters: dict[str, tuple[int, int]] = {}
        self.calls: collections.Counter[str] = collections.Counter()
        self.ops: collections.Counter[str] = collections.Counter()
        self.change_gate: ChangeGate | None = None
        self.unauthorized = 0
        self.in_flight = 0
        self.max_concurrent = 0
        self.url: str | None = None
        self._faults: collections.deque[_Fault] = collections.deque()
        self._answer_503 = False
        # outage machinery (see run)
        self._state: Literal["stopped", "up", "down"] = "stopped"
        self._serve_scope = trio.CancelScope()
        self._serving_stopped = trio.Event()
        self._recover_requested = trio.Event()
        self._up = trio.Event()
        self.app = Starlette(
            routes=[
                Route("/v1/health", self._endpoint("health", self._health), methods=["GET"]),
                Route("/v1/users", self._endpoint("list_users", self._list_users), methods=["GET"]),
                Route("/v1/users/{email}", self._endpoint("put_user", self._put_user), methods=["PUT"]),
                Route(
                    "/v1/users/{email}", self._endpoint("delete_user", self._delete_user), methods=["DELETE"]
                ),
                Route("/v1/users/{email}/traffic", self._endpoint("traffic", self._traffic), methods=["GET"]),
            ],
            max_body_size=MAX_BODY,
        )
        if batch_route:  # without it: an agent older than the batch route (404 to it)
            self.app.router.routes.insert(
                2, Route("/v1/users:batch", self._endpoint("batch", self._batch), methods=["POST"])
            )

    def __repr__(self) -> str:
        return f"<NodeEmulator {self.url or 'not started'} users={len(self.users)} state={self._state}>"

    # -- direct access for tests ---------------------------------------------------------------

    def put_orphan(self, email: str, uuid: str, flow: str = "") -> None:
        """Add a user behind the bot's back (as an operator or a lost update would)."""
        self.users[email.lower()] = EmulatedUser(uuid=uuid, flow=flow)

    def add_traffic(self, email: str, uplink: int, downlink: int) -> None:
        """Add to ``email``'s counters (they exist even for removed users, as in Xray)."""
        up, down = self.traffic_counters.get(email.lower(), (0, 0))
        self.traffic_counters[email.lower()] = (up + uplink, down + downlink)

    @property
    def requests(self) -> int:
        """Requests received on known routes, whatever their outcome."""
        return sum(self.calls.values())

    def reset_counters(self) -> None:
        """Zero ``calls``, ``ops``, ``unauthorized`` and ``max_concurrent`` (the user table is kept)."""
        self.calls.clear()
        self.ops.clear()
        self.unauthorized = 0
        self.max_concurrent = self.in_flight

    # -- faults --------------------------------------------------------------------------------

    def fail_next(self, n: int = 1, status: int = 503) -> None:
        """The next ``n`` requests answer ``status`` with ``{"error": "injected failure"}``."""
        if not 400 <= status <= 599:
            raise ValueError(f"status must be an HTTP error status (400..599), got {status}")
        self._faults.extend(_Fault(status=status) for _ in range(n))

    def garbage_next(self, n: int = 1, kind: GarbageKind = "not_json") -> None:
        """The next ``n`` requests answer 200 with garbage of ``kind`` (the table is untouched)."""
        if kind not in ("not_json", "wrong_shape", "wrong_types"):
            raise ValueError(f"unknown garbage kind {kind!r}")
        self._faults.extend(_Fault(garbage=kind) for _ in range(n))

    def clear_faults(self) -> None:
        """Drop every queued fault."""
        self._faults.clear()

    async def outage(self, *, refuse_connections: bool = True) -> None:
        """Take the agent down; returns once it is down.

        With ``refuse_connections`` (the default) the listener is closed and every open
        connection dropped, so clients see connection refused/reset. Otherwise it keeps serving
        and answers 503 to every request until :meth:`recover`.
        """
        if self._state != "up":
            raise RuntimeError(f"outage() needs a running emulator, state is {self._state}")
        self._state = "down"
        if not refuse_connections:
            self._answer_503 = True
            return
        self._recover_requested = trio.Event()
        self._serve_scope.cancel()
        await self._serving_stopped.wait()

    async def recover(self) -> None:
        """End an outage; returns once the agent answers again (same URL)."""
        if self._state != "down":
            raise RuntimeError(f"recover() needs an outage, state is {self._state}")
        if self._answer_503:
            self._answer_503 = False
            self._state = "up"
            return
        self._up = trio.Event()
        self._recover_requested.set()
        await self._up.wait()

    # -- serving -------------------------------------------------------------------------------

    async def run(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Serve until cancelled; ``task_status.started`` gets the base URL (``http://host:port``).

        Port 0 picks a free port; after an outage the same port is bound again.
        """
        if self._state != "stopped":
            raise RuntimeError("this emulator is already running")
        try:
            async with trio.open_nursery() as nursery:
                first = True
                while True:
                    self._serve_scope = trio.CancelScope()
                    self._serving_stopped = trio.Event()
                    url: str = await nursery.start(self._serve_once, host, port)
                    self._state = "up"
                    self._up.set()
                    if first:
                        first = False
                        port = urlsplit(url).port or port
                        self.url = url
                        task_status.started(url)
                    await self._serving_stopped.wait()
                    await self._recover_requested.wait()
        finally:
            self._state = "stopped"

    async def _serve_once(self, host: str, port: int, *, task_status: trio.TaskStatus[str]) -> None:
        try:
            with self._serve_scope:
                await serve_asgi(cast(ASGIFramework, self.app), host, port, task_status=task_status)
        finally:
            self._serving_stopped.set()

    # -- request handling ----------------------------------------------------------------------

    def _endpoint(self, route: str, handler: Handler) -> Callable[[Request], Awaitable[Response]]:
        async def endpoint(request: Request) -> Response:
            self.calls[route] += 1
            self.in_flight += 1
            self.max_concurrent = max(self.max_concurrent, self.in_flight)
            try:
                return await self._handle(route, handler, request)
            finally:
                self.in_flight -= 1

        return endpoint

    async def _handle(self, route: str, handler: Handler, request: Request) -> Response:
        if self.latency > 0:
            await trio.sleep(self.latency)
        if self._answer_503:
            return JSONResponse({"error": "node in outage"}, status_code=503)
        if self._faults:
            fault = self._faults.popleft()
            if fault.status is not None:
                return JSONResponse({"error": "injected failure"}, status_code=fault.status)
            if fault.garbage is not None:
                return self._garbage(route, fault.garbage, request)
        if not self._authorized(request):
            self.unauthorized += 1
            return JSONResponse({"error": "unauthorized"}, status_code=401)
        try:
            result = await handler(request)
        except _BadRequest as exc:
            return JSONResponse({"error": str(exc)}, status_code=400)
        if isinstance(result, Response):
            return result
        return JSONResponse(result)

    def _authorized(self, request: Request) -> bool:
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(token.encode(), self._token)

    @staticmethod
    def _email(request: Request) -> str:
        email = str(request.path_params["email"])
        if not 1 <= len(email) <= 255 or not _plain(email):
            raise _BadRequest(f"bad email {email[:80]!r}")
        return email.lower()

    def _core_down(self) -> Response | None:
        if self.core_up:
            return None
        return JSONResponse({"error": "core: connection refused (core is down)"}, status_code=502)

    async def _health(self, request: Request) -> dict[str, Any]:
        return {"ok": True, "core": "up" if self.core_up else "down", "users": len(self.users)}

    async def _list_users(self, request: Request) -> dict[str, Any]:
        after = request.query_params.get("after")
        raw_limit = request.query_params.get("limit", str(DEFAULT_LIMIT))
        if not raw_limit.isdigit() or not 1 <= int(raw_limit) <= MAX_LIMIT:
            raise _BadRequest(f"limit must be an integer in 1..{MAX_LIMIT}, got {raw_limit[:20]!r}")
        limit = int(raw_limit)
        # A sorted index, rebuilt only when the user set changed (as the real agent's bisect over its
        # sorted keys): sorting on every page made a full listing quadratic, so the emulator, not
        # the bot, set the pace of a million-key reconcile.
        emails = self._sorted_emails()
        start = 0 if after is None else bisect.bisect_right(emails, after.lower())
        page = emails[start : start + limit]
        more = start + limit < len(emails)
        return {
            "users": [
                {"email": email, "uuid": self.users[email].uuid, "flow": self.users[email].flow}
                for email in page
            ],
            "next": page[-1] if more else None,
        }

    def _sorted_emails(self) -> list[str]:
        users = self.users
        if not isinstance(users, _UserTable):  # a test replaced the table with a plain dict
            return sorted(users)
        if self._index is None or self._index_version != (id(users), users.version):
            self._index = sorted(users)
            self._index_version = (id(users), users.version)
        return self._index

    @staticmethod
    def _checked_user(raw_uuid: object, flow: object, level: object) -> EmulatedUser:
        try:
            user_uuid = str(uuidlib.UUID(raw_uuid)) if isinstance(raw_uuid, str) else None
        except ValueError:
            user_uuid = None
        if user_uuid is None:
            raise _BadRequest(f"uuid must be a UUID string, got {raw_uuid!r:.80}")
        if not isinstance(flow, str) or flow not in FLOWS:
            raise _BadRequest(f"flow must be one of {sorted(FLOWS)}, got {flow!r:.80}")
        if not isinstance(level, int) or isinstance(level, bool) or not 0 <= level <= 255:
            raise _BadRequest(f"level must be an integer in 0..255, got {level!r:.80}")
        return EmulatedUser(uuid=user_uuid, flow=flow, level=level)

    async def _apply_put(self, email: str, wanted: EmulatedUser) -> bool:
        """Make ``email`` present as ``wanted`` (both routes end here); return whether it changed."""
        if self.change_gate is not None:
            await self.change_gate("put", email)
        self.ops["put"] += 1
        changed = self.users.get(email) != wanted
        self.users[email] = wanted
        return changed

    async def _apply_delete(self, email: str) -> bool:
        """Make ``email`` absent (both routes end here); return whether it changed."""
        if self.change_gate is not None:
            await self.change_gate("delete", email)
        self.ops["delete"] += 1
        return self.users.pop(email, None) is not None

    async def _put_user(self, request: Request) -> Any:
        email = self._email(request)
        try:
            body = await request.json()
        except ValueError as exc:
            raise _BadRequest("body must be JSON") from exc
        if not isinstance(body, dict):
            raise _BadRequest("body must be a JSON object")
        wanted = self._checked_user(body.get("uuid"), body.get("flow", ""), body.get("level", 0))
        down = self._core_down()
        if down is not None:
            return down
        return {"changed": await self._apply_put(email, wanted)}

    async def _delete_user(self, request: Request) -> Any:
        email = self._email(request)
        down = self._core_down()
        if down is not None:
            return down
        return {"changed": await self._apply_delete(email)}

    async def _batch(self, request: Request) -> Any:
        try:
            body = await request.json()
        except ValueError as exc:
            raise _BadRequest("body must be JSON") from exc
        try:
            parsed = read_ops(body)
        except BadBatch as exc:
            raise _BadRequest(str(exc)) from exc
        results: list[OpResult] = []
        seen: set[str] = set()
        for index, op in enumerate(parsed):
            results.append(await self._batch_op(index, op, seen))
        return {"results": [result.to_json() for result in results]}

    async def _batch_op(self, index: int, op: UserOp | str, seen: set[str]) -> OpResult:
        if isinstance(op, str):
            return OpResult.failed(400, op)
        email = op.email.lower()
        try:
            if not 1 <= len(email) <= 255 or not _plain(email):
                raise _BadRequest(f"bad email {email[:80]!r}")
            wanted = self._checked_user(op.uuid, op.flow, op.level) if op.kind == "put" else None
        except _BadRequest as exc:
            return OpResult.failed(400, f"ops[{index}]: {exc}")
        if email in seen:
            return OpResult.failed(400, f"ops[{index}].email: repeated in this batch")
        seen.add(email)
        if not self.core_up:
            return OpResult.failed(502, "core: connection refused (core is down)")
        if wanted is not None:
            return OpResult.done(await self._apply_put(email, wanted))
        return OpResult.done(await self._apply_delete(email))

    async def _traffic(self, request: Request) -> dict[str, Any]:
        uplink, downlink = self.traffic_counters.get(self._email(request), (0, 0))
        return {"uplink": uplink, "downlink": downlink}

    # -- garbage -------------------------------------------------------------------------------

    def _garbage(self, route: str, kind: GarbageKind, request: Request) -> Response:
        if kind == "not_json":
            return Response("<html><body>It works!</body></html>", media_type="text/html")
        plausible: Any
        if route == "health":
            plausible = {"ok": True, "core": "up", "users": len(self.users)}
        elif route == "list_users":
            plausible = {
                "users": [{"email": "a@example", "uuid": str(uuidlib.UUID(int=1)), "flow": ""}],
                "next": None,
            }
        elif route == "traffic":
            plausible = {"uplink": 1, "downlink": 2}
        elif route == "batch":
            plausible = {"results": [{"ok": True, "changed": True}]}
        else:
            plausible = {"changed": True}
        if kind == "wrong_shape":
            # What talking to some other API looks like: an envelope around the real answer.
            return JSONResponse({"ok": True, "result": plausible})
        return JSONResponse(_mistype(plausible))


def _mistype(value: Any) -> Any:
    """The same structure with every scalar swapped for a value of another JSON type."""
    if isinstance(value, dict):
        return {key: _mistype(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_mistype(item) for item in value]
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        return len(value)
    return 0  # None
