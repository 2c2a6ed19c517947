"""Scripted error answers: "the next k sendMessage calls to chat 42 get 429, retry after 3".

A fault is checked after the token and the method name are known and before the method runs, so a
faulted call changes nothing in the emulator's state, exactly like a refused call on Telegram.
Faults are matched in the order they were injected; the first live match answers.
"""

from __future__ import annotations

from dataclasses import dataclass

from atlas.testing.botapi.errors import ApiError

_DEFAULT_DESCRIPTIONS: dict[int, str] = {
    400: "Bad Request: chat not found",
    401: "Unauthorized",
    403: "Forbidden: bot was blocked by the user",
    404: "Not Found",
    409: "Conflict: terminated by other getUpdates request; make sure that only one bot instance is running",
    500: "Internal Server Error",
    502: "Bad Gateway",
    503: "Service Unavailable",
}


@dataclass(slots=True)
class InjectedFault:
    """One scripted error. Mutable on purpose: ``remaining`` counts down and ``hits`` up as it fires."""

    method: str | None
    """Bot API method name (case-insensitive) or None for every method."""
    chat_id: int | str | None
    """Only calls whose ``chat_id`` parameter equals this; None for any call."""
    code: int
    description: str
    retry_after: int | None
    remaining: int | None
    """How many more calls it answers; None for "until cleared"."""
    hits: int = 0

    @property
    def live(self) -> bool:
        """True while the fault still answers calls."""
        return self.remaining is None or self.remaining > 0

    def matches(self, method: str, chat_id: int | str | None) -> bool:
        """Whether this fault answers a call of ``method`` for ``chat_id``."""
        if not self.live:
            return False
        if self.method is not None and self.method.lower() != method.lower():
            return False
        return self.chat_id is None or self.chat_id == chat_id


class FaultTable:
    """The injected faults plus the global "everything answers 5xx" switch."""

    def __init__(self) -> None:
        self._faults: list[InjectedFault] = []
        self._all_5xx: int | None = None

    def inject(
        self,
        method: str | None,
        chat_id: int | str | None = None,
        error: int = 429,
        *,
        retry_after: int | None = None,
        count: int | None = 1,
        description: str | None = None,
    ) -> InjectedFault:
        """Add a fault; see :meth:`BotApiEmulator.inject`. Raises ``ValueError`` on bad arguments."""
        if not (error in (400, 401, 403, 404, 409, 429) or 500 <= error <= 599):
            raise ValueError(f"error must be 400, 401, 403, 404, 409, 429 or 5xx, got {error!r}")
        if count is not None and count < 1:
            raise ValueError(f"count must be >= 1 or None (forever), got {count!r}")
        if error == 429:
            retry_after = 1 if retry_after is None else retry_after
            if retry_after < 1:
                raise ValueError(f"retry_after must be >= 1 second for a 429, got {retry_after!r}")
        elif retry_after is not None:
            raise ValueError(f"retry_after only goes with error=429, got error={error!r}")
        if description is None:
            if error == 429:
                description = f"Too Many Requests: retry after {retry_after}"
            else:
                description = _DEFAULT_DESCRIPTIONS.get(error, "Internal Server Error")
        fault = InjectedFault(method, chat_id, error, description, retry_after, count)
        self._faults.append(fault)
        return fault

    def fail_all_5xx(self, on: bool, code: int = 500) -> None:
        """While on, every call (any method) is answered with ``code`` (a 5xx)."""
        if not 500 <= code <= 599:
            raise ValueError(f"code must be a 5xx status, got {code!r}")
        self._all_5xx = code if on else None

    def clear(self) -> None:
        """Remove every fault and turn the 5xx switch off."""
        self._faults.clear()
        self._all_5xx = None

    @property
    def faults(self) -> tuple[InjectedFault, ...]:
        """All faults injected so far (spent ones included), in order."""
        return tuple(self._faults)

    def answer(self, method: str, chat_id: int | str | None) -> ApiError | None:
        """The scripted error for this call, consuming one use of the matching fault, or None."""
        if self._all_5xx is not None:
            return ApiError(self._all_5xx, _DEFAULT_DESCRIPTIONS.get(self._all_5xx, "Internal Server Error"))
        for fault in self._faults:
            if fault.matches(method, chat_id):
                fault.hits += 1
                if fault.remaining is not None:
                    fault.remaining -= 1
                return ApiError(fault.code, fault.description, retry_after=fault.retry_after)
        return None
