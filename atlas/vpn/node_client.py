"""The bot's client for the ``atlas node`` agent HTTP API, and the :class:`Fleet` of all nodes.

The agent contract (``Authorization: Bearer <token>`` on every call)::

    GET    /v1/health                        -> {"ok": true, "core": "up"|"down", "users": int}
    GET    /v1/users?after=<email>&limit=<n> -> {"users": [{"email", "uuid", "flow"}], "next": email|null}
    PUT    /v1/users/<email>  {"uuid", "flow", "level"}  -> {"changed": bool}
    DELETE /v1/users/<email>                 -> {"changed": bool}
    POST   /v1/users:batch  {"ops": [...]}   -> {"results": [...]}   (see atlas.vpn.user_batch)
    GET    /v1/users/<email>/traffic         -> {"uplink": int, "downlink": int}

Errors, named by who caused them::

    NodeError                    a call to a node agent did not succeed
    ├── NodeUnavailable          the node could not answer: timeout, connection error, 5xx, 408/429
    │   └── NodeCircuitOpen      not attempted: the node's circuit breaker is open
    ├── NodeRejected             the node answered 4xx: OUR request was wrong (bad email, bad body)
    │   └── NodeAuthFailed       401: our token is wrong (a configuration problem, not an outage)
    └── NodeProtocolError        the node answered garbage: not JSON, wrong shape, wrong types,
                                 a body over the size bound, a broken page order

A batch (:meth:`NodeClient.apply_batch`) is one call for the breaker and the limiter, however many
ops it carries. Its answer has one result per op; a result that failed is the op's own business
(returned, not raised), except when EVERY op failed on the node's side (5xx results: its core or
its disk is down), which is :class:`NodeUnavailable` like a 502 of a single call. An agent older
than the batch route answers 404: :class:`NodeRejected` with ``status`` 404, so the caller can fall
back to the single-user routes.

A garbage answer is never taken for success: every field of every answer is checked. Unavailable
and protocol errors count as failures in the node's :class:`CircuitBreaker`; rejections do not
(the node is alive and answering, the fault is ours). :class:`atlas.net.ConnectionHeldAcrossIO` is
not a ``NodeError``: it is a programming error, raised before the breaker or the network is touched.

Concurrency: each client holds a ``trio.CapacityLimiter`` so that a reconcile cannot open more than
``max_concurrency`` requests to one node. Each call has an overall deadline of ``timeout`` seconds
(waiting for the limiter is not included). Cancellation propagates unchanged; a cancelled call
releases its breaker ticket without counting as a failure.
"""

from __future__ import annotations

import json as jsonlib
import math
import re
import ssl
from collections.abc import AsyncGenerator, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, NoReturn, TypeVar
from urllib.parse import quote

import httpx
import trio

from atlas.net import OutboundError, OutboundHttp, ensure_no_connection_held
from atlas.net.http import OutboundTooLarge
from atlas.vpn.breaker import BreakerStatistics, CircuitBreaker, CircuitOpen
from atlas.vpn.nodes import FLOWS, NodeConfig
from atlas.vpn.user_batch import MAX_BATCH_OPS, OpResult, UserOp

T = TypeVar("T")

MAX_PAGE: Final = 1000
DEFAULT_PAGE: Final = 500
MAX_EMAIL_LENGTH: Final = 255
# An answer of 1000 users is ~150 KB of JSON; 1 MiB bounds it with room to spare.
MAX_RESPONSE_BYTES: Final = 1024 * 1024


class NodeError(Exception):
    """A call to a node agent did not succeed. ``node`` names it; ``status`` is the HTTP status."""

    def __init__(self, node: str, message: str, *, status: int | None = None) -> None:
        self.node = node
        self.status = status
        super().__init__(f"node {node}: {message}")


class NodeUnavailable(NodeError):
    """The node could not answer: timeout, connection error, 5xx, 408 or 429."""


class NodeCircuitOpen(NodeUnavailable):
    """The call was not attempted because the node's circuit is open; see ``retry_after``."""

    def __init__(self, node: str, retry_after: float) -> None:
        self.retry_after = retry_after
        super().__init__(node, f"circuit open, next probe in {retry_after:.1f} s")


class NodeRejected(NodeError):
    """The node answered 4xx: the request was wrong. Retrying it unchanged will not help."""


class NodeAuthFailed(NodeRejected):
    """The node answered 401: the configured token is wrong."""


class NodeProtocolError(NodeError):
    """The node's answer was not what the contract promises (never treated as success)."""


# -- answers ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class NodeHealth:
    """``GET /v1/health``: whether the Xray core is up and how many users it has."""

    core_up: bool
    users: int


@dataclass(frozen=True, slots=True)
class NodeUser:
    """One user as the node has it: ``email`` is the key's UUID string in our deployment."""

    email: str
    uuid: str
    flow: str


@dataclass(frozen=True, slots=True)
class UserPage:
    """One page of ``GET /v1/users``; ``next`` is the cursor for the following page, or None."""

    users: tuple[NodeUser, ...]
    next: str | None


@dataclass(frozen=True, slots=True)
class NodeTraffic:
    """Traffic counters in bytes since the core started (they survive user removal)."""

    uplink: int
    downlink: int


@dataclass(frozen=True, slots=True)
class NodeClientStatistics:
    """Counters for metrics. ``calls`` counts every call, including those the breaker rejected."""

    node: str
    calls: int
    successes: int
    unavailable: int
    protocol_errors: int
    rejected: int
    circuit_rejected: int
    in_flight: int
    waiting: int
    breaker: BreakerStatistics


# -- validation helpers -------------------------------------------------------------------------


_WHITESPACE = re.compile(r"\s")  # the characters str.isspace() accepts


def _check_email(email: str) -> str:
    if (
        not isinstance(email, str)
        or not 1 <= len(email) <= MAX_EMAIL_LENGTH
        or "/" in email
        or not email.isprintable()  # whole-string checks: this runs for every op of every batch
        or _WHITESPACE.search(email) is not None
    ):
        raise ValueError(
            f"email must be 1..{MAX_EMAIL_LENGTH} printable characters without '/' or spaces, got {email!r}"
        )
    return email


def _is_int(value: object, minimum: int = 0) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= minimum


def _check_put(uuid: str, flow: str, level: int) -> None:
    if flow not in FLOWS:
        raise ValueError(f"flow must be one of {sorted(FLOWS)}, got {flow!r}")
    if not isinstance(uuid, str) or not 1 <= len(uuid) <= 64:
        raise ValueError(f"uuid must be a non-empty string of at most 64 characters, got {uuid!r}")
    if not _is_int(level) or level > 255:
        raise ValueError(f"level must be an integer in 0..255, got {level!r}")


class _Shape:
    """Checks one JSON answer against the contract; every mismatch is a NodeProtocolError."""

    def __init__(self, node: str, what: str, data: Any) -> None:
        self.node = node
        self.what = what
        if not isinstance(data, dict):
            self.fail(f"expected a JSON object, got {type(data).__name__}")
        self.data: dict[str, Any] = data

    def fail(self, reason: str) -> NoReturn:
        raise NodeProtocolError(self.node, f"{self.what}: {reason}")

    def field(self, name: str, source: Mapping[str, Any] | None = None) -> Any:
        source = self.data if source is None else source
        if name not in source:
            self.fail(f"missing field {name!r}")
        return source[name]

    def int_field(self, name: str, source: Mapping[str, Any] | None = None) -> int:
        value = self.field(name, source)
        if not _is_int(value):
            self.fail(f"field {name!r} must be a non-negative integer, got {value!r:.80}")
        return int(value)

    def str_field(self, name: str, source: Mapping[str, Any] | None = None, *, max_len: int = 255) -> str:
        value = self.field(name, source)
        if not isinstance(value, str) or len(value) > max_len:
            self.fail(f"field {name!r} must be a string of at most {max_len} characters, got {value!r:.80}")
        return value

    def bool_field(self, name: str) -> bool:
        value = self.field(name)
        if not isinstance(value, bool):
            self.fail(f"field {name!r} must be a boolean, got {value!r:.80}")
        return value


def _parse_health(shape: _Shape) -> NodeHealth:
    if shape.field("ok") is not True:
        shape.fail(f"field 'ok' must be true, got {shape.data['ok']!r:.80}")
    core = shape.field("core")
    if core not in ("up", "down"):
        shape.fail(f"field 'core' must be 'up' or 'down', got {core!r:.80}")
    return NodeHealth(core_up=core == "up", users=shape.int_field("users"))


def _parse_page(shape: _Shape, after: str | None, limit: int) -> UserPage:
    raw_users = shape.field("users")
    if not isinstance(raw_users, list):
        shape.fail(f"field 'users' must be a list, got {type(raw_users).__name__}")
    if len(raw_users) > limit:
        shape.fail(f"asked for at most {limit} users, got {len(raw_users)}")
    users: list[NodeUser] = []
    previous = after
    for index, raw in enumerate(raw_users):
        if not isinstance(raw, dict):
            shape.fail(f"users[{index}] must be an object, got {type(raw).__name__}")
        user = NodeUser(
            email=shape.str_field("email", raw),
            uuid=shape.str_field("uuid", raw, max_len=64),
            flow=shape.str_field("flow", raw, max_len=64),
        )
        if not user.email:
            shape.fail(f"users[{index}].email is empty")
        if previous is not None and user.email <= previous:
            shape.fail(f"users[{index}].email {user.email!r} is not after {previous!r} (broken order)")
        previous = user.email
        users.append(user)
    next_cursor = shape.field("next")
    if next_cursor is not None:
        if not isinstance(next_cursor, str):
            shape.fail(f"field 'next' must be a string or null, got {next_cursor!r:.80}")
        if not users or next_cursor != users[-1].email:
            shape.fail(f"field 'next' must be the last email of a non-empty page, got {next_cursor!r:.80}")
    return UserPage(users=tuple(users), next=next_cursor)


def _parse_changed(shape: _Shape) -> bool:
    return shape.bool_field("changed")


def _parse_batch(shape: _Shape, ops: int) -> list[OpResult]:
    raw_results = shape.field("results")
    if not isinstance(raw_results, list):
        shape.fail(f"field 'results' must be a list, got {type(raw_results).__name__}")
    if len(raw_results) != ops:
        shape.fail(f"sent {ops} ops, got {len(raw_results)} results")
    results: list[OpResult] = []
    for index, raw in enumerate(raw_results):
        if not isinstance(raw, dict):
            shape.fail(f"results[{index}] must be an object, got {type(raw).__name__}")
        ok = shape.field("ok", raw)
        if ok is True:
            changed = shape.field("changed", raw)
            if not isinstance(changed, bool):
                shape.fail(f"results[{index}].changed must be a boolean, got {changed!r:.80}")
            results.append(OpResult.done(changed))
        elif ok is False:
            status = shape.int_field("status", raw)
            if not 400 <= status <= 599:
                shape.fail(f"results[{index}].status must be an HTTP error status, got {status}")
            results.append(OpResult.failed(status, shape.str_field("error", raw, max_len=2000)))
        else:
            shape.fail(f"results[{index}].ok must be a boolean, got {ok!r:.80}")
    if results and all(not r.ok and r.status >= 500 for r in results):
        # The node answered, but could apply nothing: as unhealthy as a 502 to a single call.
        first = results[0]
        raise NodeUnavailable(
            shape.node, f"{shape.what}: every op failed, first: {first.error[:200]}", status=first.status
        )
    return results


def _parse_traffic(shape: _Shape) -> NodeTraffic:
    return NodeTraffic(uplink=shape.int_field("uplink"), downlink=shape.int_field("downlink"))


# -- the client ---------------------------------------------------------------------------------


class NodeClient:
    """Talks to one node agent; see the module docstring for the contract and the errors.

    ``http``: a shared :class:`OutboundHttp` (not closed by :meth:`aclose`); by default the client
    makes its own, sized to ``max_concurrency`` connections. ``timeout``: overall seconds per call.
    ``breaker``: by default 5 consecutive failures open the circuit for 30 s.
    """

    def __init__(
        self,
        node: NodeConfig,
        *,
        http: OutboundHttp | None = None,
        timeout: float = 10.0,
        max_concurrency: int = 4,
        breaker: CircuitBreaker | None = None,
    ) -> None:
        if not timeout > 0 or math.isinf(timeout):
            raise ValueError(f"timeout must be a positive finite number of seconds, got {timeout!r}")
        if isinstance(max_concurrency, bool) or not isinstance(max_concurrency, int) or max_concurrency < 1:
            raise ValueError(f"max_concurrency must be an integer >= 1, got {max_concurrency!r}")
        self.node = node
        self.timeout = float(timeout)
        self.breaker = breaker if breaker is not None else CircuitBreaker(5, 30.0, name=node.name)
        self.limiter = trio.CapacityLimiter(max_concurrency)
        self._owns_http = http is None
        self._http = (
            http
            if http is not None
            else OutboundHttp(
                timeout=timeout,
                max_response_bytes=MAX_RESPONSE_BYTES,
                max_connections=max_concurrency,
                transport=_trusting_transport(node.agent_ca_file, max_concurrency),
            )
        )
        self._base = node.agent_url.rstrip("/")
        self._auth = {"authorization": f"Bearer {node.token}"}
        self._calls = 0
        self._successes = 0
        self._unavailable = 0
        self._protocol_errors = 0
        self._rejected = 0
        self._circuit_rejected = 0

    def __repr__(self) -> str:
        return f"<NodeClient {self.node.name} {self._base} breaker={self.breaker.state}>"

    @property
    def name(self) -> str:
        """The node's name."""
        return self.node.name

    async def aclose(self) -> None:
        """Close the HTTP client if this client created it."""
        if self._owns_http:
            await self._http.aclose()

    def statistics(self) -> NodeClientStatistics:
        """Return the call counters, the limiter's occupancy and the breaker's statistics."""
        limiter = self.limiter.statistics()
        return NodeClientStatistics(
            node=self.node.name,
            calls=self._calls,
            successes=self._successes,
            unavailable=self._unavailable,
            protocol_errors=self._protocol_errors,
            rejected=self._rejected,
            circuit_rejected=self._circuit_rejected,
            in_flight=limiter.borrowed_tokens,
            waiting=limiter.tasks_waiting,
            breaker=self.breaker.statistics(),
        )

    # -- the API -------------------------------------------------------------------------------

    async def health(self) -> NodeHealth:
        """Ask the agent whether its core is up."""
        return await self._call("GET", "/v1/health", what="health", parse=_parse_health)

    async def list_users(self, after: str | None = None, limit: int = DEFAULT_PAGE) -> UserPage:
        """Return one page of users with email > ``after``, sorted by email, at most ``limit``.

        The page is checked for order as well as types: emails must be strictly increasing and
        after the cursor, and ``next`` must be the last email, so that pagination always advances.
        """
        if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= MAX_PAGE:
            raise ValueError(f"limit must be an integer in 1..{MAX_PAGE}, got {limit!r}")
        params: dict[str, str | int] = {"limit": limit}
        if after is not None:
            params["after"] = _check_email(after)

        def parse(shape: _Shape) -> UserPage:
            return _parse_page(shape, after, limit)

        return await self._call("GET", "/v1/users", params=params, what="list users", parse=parse)

    async def iter_all_users(
        self, page_size: int = DEFAULT_PAGE
    ) -> AsyncGenerator[tuple[NodeUser, ...], None]:
        """Yield every user, one bounded page (at most ``page_size``) at a time.

        Pages are fetched one by one, only as the consumer asks, so memory stays bounded by one
        page. Wrap it in ``contextlib.aclosing`` when the loop may stop early. An empty node yields
        nothing; errors propagate from the page that failed.
        """
        after: str | None = None
        while True:
            page = await self.list_users(after, page_size)
            if page.users:
                yield page.users
            if page.next is None:
                return
            after = page.next

    async def put_user(self, email: str, uuid: str, flow: str = "", level: int = 0) -> bool:
        """Make the node have ``email`` with ``uuid``/``flow``; return whether anything changed."""
        _check_put(uuid, flow, level)
        body = {"uuid": uuid, "flow": flow, "level": level}
        return await self._call(
            "PUT", self._user_path(email), json=body, what="put user", parse=_parse_changed
        )

    async def delete_user(self, email: str) -> bool:
        """Make the node not have ``email``; return whether anything changed."""
        return await self._call("DELETE", self._user_path(email), what="delete user", parse=_parse_changed)

    async def apply_batch(self, ops: Sequence[UserOp]) -> list[OpResult]:
        """Send 1..``MAX_BATCH_OPS`` user changes in ONE request; return one result per op, in order.

        Ops are checked before any I/O (``ValueError``): fields as for :meth:`put_user`, and no
        email twice (case-insensitively). Raises :class:`NodeError` for the call as a whole (see
        the module docstring); a failed op is a result with ``ok`` False.
        """
        if not 1 <= len(ops) <= MAX_BATCH_OPS:
            raise ValueError(f"a batch holds 1..{MAX_BATCH_OPS} ops, got {len(ops)}")
        seen: set[str] = set()
        for op in ops:
            _check_email(op.email)
            if op.email.casefold() in seen:
                raise ValueError(f"email {op.email!r} appears twice in the batch")
            seen.add(op.email.casefold())
            if op.kind == "put":
                _check_put(op.uuid, op.flow, op.level)
            elif op.kind != "delete":
                raise ValueError(f"op kind must be 'put' or 'delete', got {op.kind!r}")
        body = {"ops": [op.to_json() for op in ops]}

        def parse(shape: _Shape) -> list[OpResult]:
            return _parse_batch(shape, len(ops))

        return await self._call("POST", "/v1/users:batch", json=body, what="batch", parse=parse)

    async def traffic(self, email: str) -> NodeTraffic:
        """Return the traffic counters the node keeps for ``email``."""
        path = self._user_path(email) + "/traffic"
        return await self._call("GET", path, what="traffic", parse=_parse_traffic)

    # -- one call ------------------------------------------------------------------------------

    def _user_path(self, email: str) -> str:
        return "/v1/users/" + quote(_check_email(email), safe="")

    async def _call(
        self,
        method: str,
        path: str,
        *,
        what: str,
        parse: Callable[[_Shape], T],
        params: Mapping[str, str | int] | None = None,
        json: Any = None,
    ) -> T:
        """Guard, limit, breaker, request, check the answer, classify the outcome.

        ``parse`` runs inside the breaker's accounting: an answer that fails the contract is a
        failure like an outage, never a success.
        """
        # Before the breaker and the limiter: a programming error must not look like an outage.
        ensure_no_connection_held(f"node {self.node.name}: {what}")
        self._calls += 1
        async with self.limiter:
            try:
                ticket = self.breaker.acquire()
            except CircuitOpen as exc:
                self._circuit_rejected += 1
                raise NodeCircuitOpen(self.node.name, exc.retry_after) from exc
            try:
                shape = await self._exchange(method, path, what=what, params=params, json=json)
                result = parse(shape)
            except NodeUnavailable:
                self._unavailable += 1
                self.breaker.failure(ticket)
                raise
            except NodeProtocolError:
                self._protocol_errors += 1
                self.breaker.failure(ticket)
                raise
            except NodeRejected:
                self._rejected += 1
                self.breaker.release(ticket)
                raise
            except BaseException:
                # Cancelled (or a bug in our own code): says nothing about the node's health.
                self.breaker.release(ticket)
                raise
            self._successes += 1
            self.breaker.success(ticket)
            return result

    async def _exchange(
        self,
        method: str,
        path: str,
        *,
        what: str,
        params: Mapping[str, str | int] | None,
        json: Any,
    ) -> _Shape:
        name = self.node.name
        try:
            with trio.fail_after(self.timeout):
                response = await self._http.request(
                    method,
                    self._base + path,
                    params=params,
                    json=json,
                    headers=self._auth,
                    request_timeout=self.timeout,
                )
        except trio.TooSlowError as exc:
            raise NodeUnavailable(name, f"{what}: no answer within {self.timeout:g} s") from exc
        except OutboundTooLarge as exc:
            raise NodeProtocolError(name, f"{what}: {exc}") from exc
        except OutboundError as exc:  # OutboundTimeout, OutboundUnavailable
            raise NodeUnavailable(name, f"{what}: {exc}") from exc
        status = response.status_code
        if status == 200:
            try:
                data = response.json()
            except (ValueError, RecursionError) as exc:
                raise NodeProtocolError(
                    name, f"{what}: answer is not JSON: {response.text[:80]!r}", status=status
                ) from exc
            return _Shape(name, what, data)
        detail = _error_detail(response.content)
        if status == 401:
            raise NodeAuthFailed(name, f"{what}: unauthorized (check the node token){detail}", status=status)
        if status in (408, 429) or 500 <= status <= 599:
            raise NodeUnavailable(name, f"{what}: HTTP {status}{detail}", status=status)
        if 400 <= status <= 499:
            raise NodeRejected(name, f"{what}: HTTP {status}{detail}", status=status)
        raise NodeProtocolError(name, f"{what}: unexpected HTTP {status}{detail}", status=status)


def _trusting_transport(ca_file: str, max_connections: int) -> httpx.AsyncHTTPTransport | None:
    """A transport that trusts ``ca_file`` (a self-signed agent), or None for the system store.

    Raises ``ValueError`` naming the file when it cannot be read as PEM certificates.
    """
    if not ca_file:
        return None
    try:
        context = ssl.create_default_context(cafile=ca_file)
    except (OSError, ssl.SSLError) as exc:
        raise ValueError(f"agent_ca_file {ca_file!r}: {exc}") from exc
    limits = httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections)
    return httpx.AsyncHTTPTransport(verify=context, limits=limits)


def _error_detail(content: bytes) -> str:
    """The agent's ``{"error": ...}`` text, shortened, for the exception message."""
    try:
        data = jsonlib.loads(content)
    except (ValueError, RecursionError):
        return ""
    if isinstance(data, dict) and isinstance(data.get("error"), str):
        return f": {data['error'][:200]}"
    return ""


# -- the fleet ----------------------------------------------------------------------------------


class UnknownNode(KeyError):
    """No enabled node has that name."""


class Fleet:
    """One :class:`NodeClient` per enabled node, each with its own breaker and limiter.

    Disabled nodes get no client (the controller does not provision them). Use it as an async
    context manager, or call :meth:`aclose`.
    """

    def __init__(
        self,
        nodes: Iterable[NodeConfig],
        *,
        timeout: float = 10.0,
        max_concurrency: int = 4,
        failure_threshold: int = 5,
        reset_timeout: float = 30.0,
    ) -> None:
        all_nodes = tuple(nodes)
        names = [node.name for node in all_nodes]
        duplicates = sorted({name for name in names if names.count(name) > 1})
        if duplicates:
            raise ValueError(f"duplicate node names: {duplicates}")
        self.nodes = all_nodes
        self._clients: dict[str, NodeClient] = {
            node.name: NodeClient(
                node,
                timeout=timeout,
                max_concurrency=max_concurrency,
                breaker=CircuitBreaker(failure_threshold, reset_timeout, name=node.name),
            )
            for node in all_nodes
            if node.enabled
        }

    async def __aenter__(self) -> Fleet:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    def for_node(self, name: str) -> NodeClient:
        """The client of enabled node ``name``; raises :class:`UnknownNode` otherwise."""
        try:
            return self._clients[name]
        except KeyError:
            raise UnknownNode(f"no enabled node named {name!r}") from None

    def enabled(self) -> tuple[NodeClient, ...]:
        """The clients of every enabled node, in configuration order."""
        return tuple(self._clients.values())

    def statistics(self) -> tuple[NodeClientStatistics, ...]:
        """Statistics of every client, for the metrics exporter."""
        return tuple(client.statistics() for client in self._clients.values())

    async def aclose(self) -> None:
        """Close every client's HTTP connections (shielded so cancellation cannot leak sockets)."""
        with trio.CancelScope(shield=True):
            for client in self._clients.values():
                await client.aclose()
