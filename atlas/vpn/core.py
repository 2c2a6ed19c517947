"""The driver of a local Xray/V2Ray core: add and remove VLESS users, read their traffic.

It talks to the core's gRPC API (``HandlerService.AlterInbound``, ``StatsService.QueryStats``)
through :class:`~atlas.vpn.wire.GrpcChannel`. Errors are those of :mod:`atlas.vpn.core_errors`;
the core's refusals are recognised by their text, because V2Ray 4.34 and Xray answer them all
with grpc-status UNKNOWN (2)::

    User <email> already exists.   -> CoreUserExists
    User <email> not found.        -> CoreUserNotFound
    handler not found: <tag>       -> CoreInboundNotFound

The driver holds no user state: the node agent keeps the truth in the core's config file.
"""

from __future__ import annotations

import re
from types import TracebackType

from atlas.vpn.core_errors import (
    CoreInboundNotFound,
    CoreRejected,
    CoreUserExists,
    CoreUserNotFound,
)
from atlas.vpn.wire.grpc import GrpcChannel
from atlas.vpn.wire.messages import (
    AddUserOperation,
    AlterInboundRequest,
    ApiNames,
    Flavour,
    QueryStatsRequest,
    QueryStatsResponse,
    RemoveUserOperation,
    TypedMessage,
    User,
    VlessAccount,
)

# Checked in this order: "handler not found" also contains "not found".
_REFUSALS: tuple[tuple[re.Pattern[str], type[CoreRejected]], ...] = (
    (re.compile(r"handler not found", re.IGNORECASE), CoreInboundNotFound),
    (re.compile(r"\bUser\b.*\balready exists", re.IGNORECASE), CoreUserExists),
    (re.compile(r"\bUser\b.*\bnot found", re.IGNORECASE), CoreUserNotFound),
)

# A counter name nobody can have (emails cannot contain ">>>"): ping asks for it.
_PING_PATTERN = "atlas>>>ping>>>none"


def classify_refusal(exc: CoreRejected) -> CoreRejected:
    """Return the most specific :class:`CoreRejected` subclass for the core's message."""
    for pattern, kind in _REFUSALS:
        if pattern.search(exc.detail):
            return kind(exc.status, exc.detail)
    return exc


def traffic_counter_names(email: str) -> tuple[str, str]:
    """The core's per-user counters: ``user>>>EMAIL>>>traffic>>>uplink`` and ``...downlink``."""
    return f"user>>>{email}>>>traffic>>>uplink", f"user>>>{email}>>>traffic>>>downlink"


class CoreDriver:
    """Manage the VLESS users of one inbound of a core through its gRPC API.

    ``address`` is the API's ``host:port``, ``flavour`` picks the protobuf names (``"xray"`` or
    ``"v2ray"``), ``inbound_tag`` the VLESS inbound, ``timeout`` bounds every call (seconds).
    One HTTP/2 connection is reused and re-opened when it breaks. Use as an async context
    manager or call :meth:`aclose`. Cancellation propagates untranslated and leaves the driver
    usable.
    """

    def __init__(self, address: str, flavour: Flavour, inbound_tag: str, timeout: float) -> None:
        if not inbound_tag:
            raise ValueError("inbound_tag must not be empty")
        self.names = ApiNames.for_flavour(flavour)
        self.flavour = flavour
        self.inbound_tag = inbound_tag
        self._channel = GrpcChannel(address, timeout=timeout)

    async def __aenter__(self) -> CoreDriver:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the connection to the core."""
        await self._channel.aclose()

    async def _alter_inbound(self, operation: TypedMessage) -> None:
        request = AlterInboundRequest(tag=self.inbound_tag, operation=operation)
        try:
            await self._channel.unary(self.names.alter_inbound_path, request.encode())
        except CoreRejected as exc:
            raise classify_refusal(exc) from exc

    async def add_user(self, email: str, uuid: str, flow: str = "", level: int = 0) -> None:
        """Add a VLESS user to the inbound.

        Raises :class:`CoreUserExists` if the email is taken (the core compares emails
        case-insensitively), :class:`CoreInboundNotFound`, or another ``CoreError``.
        """
        account = VlessAccount(id=uuid, flow=flow, encryption="none")
        user = User(
            level=level,
            email=email,
            account=TypedMessage(self.names.vless_account, account.encode()),
        )
        operation = TypedMessage(self.names.add_user_operation, AddUserOperation(user).encode())
        await self._alter_inbound(operation)

    async def remove_user(self, email: str) -> None:
        """Remove the user with this email from the inbound.

        Raises :class:`CoreUserNotFound`, :class:`CoreInboundNotFound`, or another ``CoreError``.
        Open connections of the user are not cut: the core checks users at handshake.
        """
        operation = TypedMessage(self.names.remove_user_operation, RemoveUserOperation(email).encode())
        await self._alter_inbound(operation)

    async def query_traffic(self, email: str) -> tuple[int, int]:
        """Return ``(uplink, downlink)`` bytes counted for ``email``; counters not yet created are 0.

        The core creates a user's counters on first traffic and keeps them after removal.
        """
        uplink_name, downlink_name = traffic_counter_names(email)
        request = QueryStatsRequest(pattern=f"user>>>{email}>>>traffic>>>", reset=False)
        response = QueryStatsResponse.decode(
            await self._channel.unary(self.names.query_stats_path, request.encode())
        )
        # The pattern is a substring match: keep only this user's exact counters.
        values = {stat.name: stat.value for stat in response.stats}
        return values.get(uplink_name, 0), values.get(downlink_name, 0)

    async def ping(self) -> None:
        """Return if the core's API answers (a stats query matching nothing); else raise ``CoreError``."""
        request = QueryStatsRequest(pattern=_PING_PATTERN, reset=False)
        QueryStatsResponse.decode(await self._channel.unary(self.names.query_stats_path, request.encode()))
