"""A tiny protobuf (proto3) wire-format encoder and decoder: just what the core's API needs.

Why hand-written: the few messages of the Xray/V2Ray HandlerService and StatsService use only
varints and length-delimited fields, and generated stubs would pull in ``protobuf`` and ``grpcio``
(which does not run on trio) for four messages.

Encoding follows proto3: a field holding its default value (0, "", b"", False) is omitted.
Decoding is strict about structure and lenient about content, like the real parsers: unknown
fields are skipped, the last occurrence of a scalar wins, and any structural damage (a truncated
varint, a length past the end, a group or reserved wire type, field number 0) raises
:class:`~atlas.vpn.core_errors.CoreProtocolError` — never ``IndexError`` or ``UnicodeDecodeError``.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Final

from atlas.vpn.core_errors import CoreProtocolError

# Wire types (https://protobuf.dev/programming-guides/encoding/#structure).
VARINT: Final = 0
I64: Final = 1
LEN: Final = 2
I32: Final = 5

_MAX_VARINT_BYTES: Final = 10
_U64: Final = (1 << 64) - 1

# A decoded field: (field number, wire type, value); the value is an int for VARINT/I64/I32 and
# bytes for LEN.
Field = tuple[int, int, int | bytes]


def encode_varint(value: int) -> bytes:
    """Encode a non-negative integer below 2**64 as a base-128 varint."""
    if value < 0 or value > _U64:
        raise ValueError(f"varint out of range: {value}")
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def decode_varint(data: bytes, pos: int) -> tuple[int, int]:
    """Decode a varint at ``pos``; return ``(value, next position)``.

    Raises :class:`CoreProtocolError` if it is truncated or longer than 10 bytes.
    """
    result = 0
    shift = 0
    for i in range(_MAX_VARINT_BYTES):
        if pos + i >= len(data):
            raise CoreProtocolError(f"protobuf: truncated varint at offset {pos}")
        byte = data[pos + i]
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result & _U64, pos + i + 1
        shift += 7
    raise CoreProtocolError(f"protobuf: varint longer than {_MAX_VARINT_BYTES} bytes at offset {pos}")


def _key(number: int, wire_type: int) -> bytes:
    return encode_varint((number << 3) | wire_type)


def field_uint(number: int, value: int) -> bytes:
    """Encode an unsigned varint field (uint32/uint64/bool); omitted when 0."""
    return _key(number, VARINT) + encode_varint(value) if value else b""


def field_int64(number: int, value: int) -> bytes:
    """Encode an int64 field (negative values as 10-byte two's complement); omitted when 0."""
    if not -(1 << 63) <= value < (1 << 63):
        raise ValueError(f"int64 out of range: {value}")
    return _key(number, VARINT) + encode_varint(value & _U64) if value else b""


def field_bool(number: int, value: bool) -> bytes:
    """Encode a bool field; omitted when False."""
    return field_uint(number, 1 if value else 0)


def field_bytes(number: int, value: bytes) -> bytes:
    """Encode a bytes or embedded-message field; omitted when empty."""
    return _key(number, LEN) + encode_varint(len(value)) + value if value else b""


def field_message(number: int, value: bytes) -> bytes:
    """Encode an embedded message that is *set*, even when it encodes to no bytes.

    A present-but-empty sub-message differs from an absent one (e.g. an ``AddUserOperation`` with
    an empty ``User``), so unlike :func:`field_bytes` this always writes the field.
    """
    return _key(number, LEN) + encode_varint(len(value)) + value


def field_string(number: int, value: str) -> bytes:
    """Encode a string field as UTF-8; omitted when empty."""
    return field_bytes(number, value.encode("utf-8"))


def iter_fields(data: bytes) -> Iterator[Field]:
    """Yield every ``(number, wire type, value)`` of a serialized message, in order.

    Raises :class:`CoreProtocolError` on structural damage (see the module docstring).
    """
    pos = 0
    end = len(data)
    while pos < end:
        key, pos = decode_varint(data, pos)
        number, wire_type = key >> 3, key & 0x7
        if number == 0 or number > 0x1FFFFFFF:
            raise CoreProtocolError(f"protobuf: invalid field number {number} at offset {pos}")
        if wire_type == VARINT:
            value, pos = decode_varint(data, pos)
            yield number, wire_type, value
        elif wire_type == LEN:
            length, pos = decode_varint(data, pos)
            if length > end - pos:
                raise CoreProtocolError(f"protobuf: field {number} length {length} runs past the end")
            yield number, wire_type, data[pos : pos + length]
            pos += length
        elif wire_type in (I64, I32):
            size = 8 if wire_type == I64 else 4
            if size > end - pos:
                raise CoreProtocolError(f"protobuf: truncated fixed-width field {number}")
            yield number, wire_type, int.from_bytes(data[pos : pos + size], "little")
            pos += size
        else:
            raise CoreProtocolError(f"protobuf: unsupported wire type {wire_type} for field {number}")


def expect_int(field: Field) -> int:
    """Return a VARINT field's value, or raise :class:`CoreProtocolError` for another wire type."""
    number, wire_type, value = field
    if wire_type != VARINT or not isinstance(value, int):
        raise CoreProtocolError(f"protobuf: field {number} has wire type {wire_type}, expected varint")
    return value


def expect_bytes(field: Field) -> bytes:
    """Return a LEN field's payload, or raise :class:`CoreProtocolError` for another wire type."""
    number, wire_type, value = field
    if wire_type != LEN or not isinstance(value, bytes):
        raise CoreProtocolError(
            f"protobuf: field {number} has wire type {wire_type}, expected length-delimited"
        )
    return value


def expect_string(field: Field) -> str:
    """Return a LEN field decoded as UTF-8, or raise :class:`CoreProtocolError`."""
    raw = expect_bytes(field)
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise CoreProtocolError(f"protobuf: field {field[0]} is not valid UTF-8") from exc


def as_int64(value: int) -> int:
    """Interpret a decoded 64-bit varint as a signed int64 (two's complement)."""
    return value - (1 << 64) if value >= (1 << 63) else value
