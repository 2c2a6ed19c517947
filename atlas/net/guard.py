"""The connection-held flag that makes "a connection never meets I/O" checkable.

``atlas.storage`` sets the flag for exactly as long as a unit of work runs; every outbound client
calls :func:`ensure_no_connection_held` before it touches the network. The flag is a context
variable, so it follows the unit's own task (on the asyncio side of the bridge) and nothing else:
another task's HTTP call is not affected by somebody else's transaction.
"""

from __future__ import annotations

import contextvars
from collections.abc import Iterator
from contextlib import contextmanager

_held: contextvars.ContextVar[str | None] = contextvars.ContextVar("atlas_connection_held", default=None)


class ConnectionHeldAcrossIO(RuntimeError):
    """Raised when code tries network I/O while a database connection is held.

    It names a programming error, not an outage: a unit of work must write intent rows (outbox,
    desired key state) and let an actor do the I/O after the transaction ends.
    """


def connection_held() -> str | None:
    """Return the name of the unit of work holding a connection in this context, or None."""
    return _held.get()


@contextmanager
def holding_connection(unit_name: str) -> Iterator[None]:
    """Mark the current context as holding a connection for ``unit_name`` until the block ends."""
    token = _held.set(unit_name)
    try:
        yield
    finally:
        _held.reset(token)


def ensure_no_connection_held(what: str) -> None:
    """Raise :class:`ConnectionHeldAcrossIO` if a connection is held; ``what`` names the I/O."""
    unit = _held.get()
    if unit is not None:
        raise ConnectionHeldAcrossIO(
            f"{what} attempted inside unit of work {unit!r}: a database connection is held. "
            "Write an intent row (outbox, desired state) and do the I/O from an actor instead."
        )
