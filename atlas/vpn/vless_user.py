"""A VLESS user of a node (email, uuid, flow, level) and the checks its fields must pass.

Users are keyed by email, compared case-insensitively (the cores lower-case emails when they
index users). Emails that pass :func:`check_email` are lower-cased, and UUIDs are stored in lower
case, canonical 8-4-4-4-12 form, so every party compares both as plain strings. (Entries written
into a config file by hand keep their spelling and are still matched case-insensitively.)

Each check raises :class:`InvalidUser` naming the field and the value, before anything changes.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Final

EMAIL_MAX_LENGTH: Final = 128
_EMAIL = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@+\-]*")
_UUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")
_FLOW = re.compile(r"[a-z0-9\-]{0,64}")
LEVEL_MAX: Final = 0xFFFFFFFF


class InvalidUser(ValueError):
    """A user field is malformed; the message names the field and the value."""


def check_email(value: object) -> str:
    """Return ``value`` lower-cased if it is an acceptable email key, else raise :class:`InvalidUser`.

    Allowed: 1..128 characters of ``A-Z a-z 0-9 . _ @ + -``, starting with a letter or digit.
    The charset keeps emails safe in URLs, file names and the core's ``user>>>EMAIL>>>`` counters.
    """
    if not isinstance(value, str):
        raise InvalidUser(f"email must be a string, got {type(value).__name__}")
    if not 0 < len(value) <= EMAIL_MAX_LENGTH:
        raise InvalidUser(f"email must be 1..{EMAIL_MAX_LENGTH} characters, got {len(value)}")
    if not _EMAIL.fullmatch(value):
        raise InvalidUser(f"email {value!r} has characters outside A-Z a-z 0-9 . _ @ + -")
    return value.lower()


def check_uuid(value: object) -> str:
    """Return ``value`` lower-cased if it is a canonical 8-4-4-4-12 hex UUID, else raise."""
    if not isinstance(value, str) or not _UUID.fullmatch(value):
        raise InvalidUser(f"uuid must be 8-4-4-4-12 hex digits, got {value!r}")
    return value.lower()


def check_flow(value: object) -> str:
    """Return ``value`` if it is a flow name (``""`` or e.g. ``xtls-rprx-vision``), else raise."""
    if not isinstance(value, str) or not _FLOW.fullmatch(value):
        raise InvalidUser(f"flow must be empty or up to 64 of a-z 0-9 -, got {value!r}")
    return value


def check_level(value: object) -> int:
    """Return ``value`` if it is an integer in 0..2**32-1 (not a bool), else raise."""
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= LEVEL_MAX:
        raise InvalidUser(f"level must be an integer in 0..{LEVEL_MAX}, got {value!r}")
    return value


def email_key(email: str) -> str:
    """The case-insensitive key of an email."""
    return email.casefold()


@dataclass(frozen=True, slots=True)
class VlessUser:
    """One VLESS client of the inbound, as the config file and the API carry it."""

    email: str
    uuid: str
    flow: str = ""
    level: int = 0

    @property
    def key(self) -> str:
        """The case-insensitive email key."""
        return email_key(self.email)

    @classmethod
    def checked(cls, email: object, uuid: object, flow: object = "", level: object = 0) -> VlessUser:
        """Build a user from untrusted values; raises :class:`InvalidUser` naming the bad field."""
        return cls(check_email(email), check_uuid(uuid), check_flow(flow), check_level(level))

    def same_as(self, other: VlessUser) -> bool:
        """True if ``other`` is the same user with the same credentials (email case ignored)."""
        return (self.key, self.uuid, self.flow, self.level) == (
            other.key,
            other.uuid,
            other.flow,
            other.level,
        )

    def to_client_entry(self) -> dict[str, Any]:
        """The entry for the inbound's ``settings.clients`` list."""
        return {"id": self.uuid, "email": self.email, "flow": self.flow, "level": self.level}
