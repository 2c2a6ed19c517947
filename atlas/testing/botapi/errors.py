"""Errors of the Bot API emulator.

Two different audiences, so two families::

    EmulatorError            the test (or demo script) asked for something that did not happen
    ├── NothingInTime        an awaited event (a message, an answer, a long poll) did not come in time
    └── ScriptError          a scripted user cannot do that: no such button, not an invoice, ...

    ApiError                 what the emulated Telegram answers to the *bot*: never raised to a
                             test, it is turned into ``{"ok": false, "error_code": ...}`` at the
                             HTTP boundary (aiogram then raises its own TelegramXxx error).

Bad arguments to the emulator's own Python API (a negative user id, an unknown fault code) raise
``ValueError`` naming the field and the value.
"""

from __future__ import annotations


class EmulatorError(Exception):
    """Something a scripted scenario expected did not happen, or cannot happen."""


class NothingInTime(EmulatorError):
    """An awaited event did not happen before the timeout."""


class ScriptError(EmulatorError):
    """A scripted user was asked to do something impossible in the current chat state."""


class ApiError(Exception):
    """A Bot API error answer: HTTP status ``code``, Telegram's ``description``, optional ``retry_after``."""

    def __init__(self, code: int, description: str, *, retry_after: int | None = None) -> None:
        super().__init__(f"{code} {description}")
        self.code = code
        self.description = description
        self.retry_after = retry_after

    def envelope(self) -> dict[str, object]:
        """The JSON body Telegram sends with this error."""
        body: dict[str, object] = {"ok": False, "error_code": self.code, "description": self.description}
        if self.retry_after is not None:
            body["parameters"] = {"retry_after": self.retry_after}
        return body


def bad_request(what: str) -> ApiError:
    """A 400 answer worded like Telegram's: ``Bad Request: <what>``."""
    return ApiError(400, f"Bad Request: {what}")


def query_too_old() -> ApiError:
    """Telegram's answer to an unknown, expired or already answered callback/pre-checkout query."""
    return bad_request("query is too old and response timeout expired or query ID is invalid")
