"""The protobuf messages of the core's HandlerService and StatsService, and their full names.

Field numbers were checked against the real protos: v2fly/v2ray-core and XTLS/Xray-core
``app/proxyman/command/command.proto``, ``common/protocol/user.proto``,
``common/serial/typed_message.proto``, ``proxy/vless/account.proto``,
``app/stats/command/command.proto``, and against the struct tags inside Debian's V2Ray 4.34 binary
(whose ``vless.Account`` still has ``flow = 2``; later v2fly releases dropped it, Xray kept it).

Each message is a frozen dataclass with ``encode() -> bytes`` and ``decode(bytes)``; decoding
raises :class:`~atlas.vpn.core_errors.CoreProtocolError` on damage (see ``protobuf``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from atlas.vpn.wire.protobuf import (
    as_int64,
    expect_bytes,
    expect_int,
    expect_string,
    field_bool,
    field_bytes,
    field_int64,
    field_message,
    field_string,
    field_uint,
    iter_fields,
)

Flavour = Literal["xray", "v2ray"]

_U32 = 0xFFFFFFFF


@dataclass(frozen=True, slots=True)
class ApiNames:
    """Full protobuf names for one core flavour: gRPC method paths and ``TypedMessage.type`` values.

    Xray names live under ``xray.``, V2Ray 4.x names under ``v2ray.core.``; the wire format is the
    same. Calling the other flavour's path answers UNIMPLEMENTED.
    """

    alter_inbound_path: str
    query_stats_path: str
    add_user_operation: str
    remove_user_operation: str
    vless_account: str

    @classmethod
    def for_flavour(cls, flavour: Flavour) -> ApiNames:
        """Return the names for ``flavour`` (``"xray"`` or ``"v2ray"``)."""
        if flavour == "xray":
            prefix = "xray."
        elif flavour == "v2ray":
            prefix = "v2ray.core."
        else:
            raise ValueError(f"flavour must be 'xray' or 'v2ray', got {flavour!r}")
        return cls(
            alter_inbound_path=f"/{prefix}app.proxyman.command.HandlerService/AlterInbound",
            query_stats_path=f"/{prefix}app.stats.command.StatsService/QueryStats",
            add_user_operation=f"{prefix}app.proxyman.command.AddUserOperation",
            remove_user_operation=f"{prefix}app.proxyman.command.RemoveUserOperation",
            vless_account=f"{prefix}proxy.vless.Account",
        )


@dataclass(frozen=True, slots=True)
class TypedMessage:
    """``common.serial.TypedMessage{1: type string, 2: value bytes}``; ``type`` is the bare full name."""

    type: str
    value: bytes = b""

    def encode(self) -> bytes:
        """Serialize."""
        return field_string(1, self.type) + field_bytes(2, self.value)

    @classmethod
    def decode(cls, data: bytes) -> TypedMessage:
        """Parse; raises ``CoreProtocolError`` on damage."""
        type_, value = "", b""
        for field in iter_fields(data):
            if field[0] == 1:
                type_ = expect_string(field)
            elif field[0] == 2:
                value = expect_bytes(field)
        return cls(type_, value)


@dataclass(frozen=True, slots=True)
class VlessAccount:
    """``proxy.vless.Account{1: id string, 2: flow string, 3: encryption string}``."""

    id: str
    flow: str = ""
    encryption: str = ""

    def encode(self) -> bytes:
        """Serialize."""
        return field_string(1, self.id) + field_string(2, self.flow) + field_string(3, self.encryption)

    @classmethod
    def decode(cls, data: bytes) -> VlessAccount:
        """Parse; raises ``CoreProtocolError`` on damage."""
        id_, flow, encryption = "", "", ""
        for field in iter_fields(data):
            if field[0] == 1:
                id_ = expect_string(field)
            elif field[0] == 2:
                flow = expect_string(field)
            elif field[0] == 3:
                encryption = expect_string(field)
        return cls(id_, flow, encryption)


@dataclass(frozen=True, slots=True)
class User:
    """``common.protocol.User{1: level uint32, 2: email string, 3: account TypedMessage}``."""

    level: int = 0
    email: str = ""
    account: TypedMessage | None = None

    def encode(self) -> bytes:
        """Serialize; raises ``ValueError`` if ``level`` is not a uint32."""
        if not 0 <= self.level <= _U32:
            raise ValueError(f"level must be a uint32, got {self.level}")
        out = field_uint(1, self.level) + field_string(2, self.email)
        if self.account is not None:
            out += field_message(3, self.account.encode())
        return out

    @classmethod
    def decode(cls, data: bytes) -> User:
        """Parse; raises ``CoreProtocolError`` on damage."""
        level, email, account = 0, "", None
        for field in iter_fields(data):
            if field[0] == 1:
                level = expect_int(field) & _U32  # proto3 uint32 truncates a wider varint
            elif field[0] == 2:
                email = expect_string(field)
            elif field[0] == 3:
                account = TypedMessage.decode(expect_bytes(field))
        return cls(level, email, account)


@dataclass(frozen=True, slots=True)
class AddUserOperation:
    """``proxyman.command.AddUserOperation{1: user User}``."""

    user: User | None = None

    def encode(self) -> bytes:
        """Serialize."""
        return field_message(1, self.user.encode()) if self.user is not None else b""

    @classmethod
    def decode(cls, data: bytes) -> AddUserOperation:
        """Parse; raises ``CoreProtocolError`` on damage."""
        user = None
        for field in iter_fields(data):
            if field[0] == 1:
                user = User.decode(expect_bytes(field))
        return cls(user)


@dataclass(frozen=True, slots=True)
class RemoveUserOperation:
    """``proxyman.command.RemoveUserOperation{1: email string}``."""

    email: str = ""

    def encode(self) -> bytes:
        """Serialize."""
        return field_string(1, self.email)

    @classmethod
    def decode(cls, data: bytes) -> RemoveUserOperation:
        """Parse; raises ``CoreProtocolError`` on damage."""
        email = ""
        for field in iter_fields(data):
            if field[0] == 1:
                email = expect_string(field)
        return cls(email)


@dataclass(frozen=True, slots=True)
class AlterInboundRequest:
    """``proxyman.command.AlterInboundRequest{1: tag string, 2: operation TypedMessage}``."""

    tag: str = ""
    operation: TypedMessage | None = None

    def encode(self) -> bytes:
        """Serialize."""
        out = field_string(1, self.tag)
        if self.operation is not None:
            out += field_message(2, self.operation.encode())
        return out

    @classmethod
    def decode(cls, data: bytes) -> AlterInboundRequest:
        """Parse; raises ``CoreProtocolError`` on damage."""
        tag, operation = "", None
        for field in iter_fields(data):
            if field[0] == 1:
                tag = expect_string(field)
            elif field[0] == 2:
                operation = TypedMessage.decode(expect_bytes(field))
        return cls(tag, operation)


@dataclass(frozen=True, slots=True)
class QueryStatsRequest:
    """``stats.command.QueryStatsRequest{1: pattern string, 2: reset bool}``.

    ``pattern`` is a substring match on counter names (V2Ray 4.x and Xray).
    """

    pattern: str = ""
    reset: bool = False

    def encode(self) -> bytes:
        """Serialize."""
        return field_string(1, self.pattern) + field_bool(2, self.reset)

    @classmethod
    def decode(cls, data: bytes) -> QueryStatsRequest:
        """Parse; raises ``CoreProtocolError`` on damage."""
        pattern, reset = "", False
        for field in iter_fields(data):
            if field[0] == 1:
                pattern = expect_string(field)
            elif field[0] == 2:
                reset = expect_int(field) != 0
        return cls(pattern, reset)


@dataclass(frozen=True, slots=True)
class Stat:
    """``stats.command.Stat{1: name string, 2: value int64}``."""

    name: str = ""
    value: int = 0

    def encode(self) -> bytes:
        """Serialize; raises ``ValueError`` if ``value`` is not an int64."""
        return field_string(1, self.name) + field_int64(2, self.value)

    @classmethod
    def decode(cls, data: bytes) -> Stat:
        """Parse; raises ``CoreProtocolError`` on damage."""
        name, value = "", 0
        for field in iter_fields(data):
            if field[0] == 1:
                name = expect_string(field)
            elif field[0] == 2:
                value = as_int64(expect_int(field))
        return cls(name, value)


@dataclass(frozen=True, slots=True)
class QueryStatsResponse:
    """``stats.command.QueryStatsResponse{1: repeated Stat stat}``."""

    stats: tuple[Stat, ...] = ()

    def encode(self) -> bytes:
        """Serialize."""
        return b"".join(field_message(1, stat.encode()) for stat in self.stats)

    @classmethod
    def decode(cls, data: bytes) -> QueryStatsResponse:
        """Parse; raises ``CoreProtocolError`` on damage."""
        return cls(tuple(Stat.decode(expect_bytes(f)) for f in iter_fields(data) if f[0] == 1))
