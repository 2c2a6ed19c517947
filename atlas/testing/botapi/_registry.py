"""The table of Bot API methods the emulator answers.

Method names are case-insensitive on Telegram, so the table is keyed by the lower-cased name.
A handler takes the core and the call's :class:`Params` and returns the ``result`` (or a
:class:`Described` result); it raises :class:`ApiError` for an error answer, having changed nothing.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from atlas.testing.botapi._core import EmulatorCore
from atlas.testing.botapi._params import Params

Handler = Callable[[EmulatorCore, Params], Awaitable[Any]]
_H = TypeVar("_H", bound=Handler)

METHODS: dict[str, Handler] = {}
SEND_METHODS: set[str] = set()
"""Lower-cased names of the methods that send a message and so count against the flood limits."""


@dataclass(frozen=True, slots=True)
class Described:
    """A result with Telegram's optional ``description`` next to it ("Webhook was set")."""

    result: Any
    description: str


def api_method(name: str, *, sends: bool = False) -> Callable[[_H], _H]:
    """Register a handler under ``name``; ``sends`` marks it as a rate-limited ``send*`` method."""

    def register(handler: _H) -> _H:
        key = name.lower()
        if key in METHODS:
            raise RuntimeError(f"Bot API method {name!r} registered twice")
        METHODS[key] = handler
        if sends:
            SEND_METHODS.add(key)
        return handler

    return register
