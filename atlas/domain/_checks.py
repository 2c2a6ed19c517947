"""Small shared checks: ints that are really ints, datetimes that are aware (time is always a parameter)."""

from __future__ import annotations

import datetime as dt


def require_aware(name: str, value: dt.datetime) -> None:
    """Raise ``ValueError`` for a naive datetime: business time is always timezone-aware UTC.

    A naive value is a programming error (someone called ``datetime.utcnow()``), not a user error.
    """
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(f"{name} must be timezone-aware, got naive {value.isoformat()}")


def utc_stamp(value: dt.datetime) -> str:
    """Minute-resolution UTC stamp for dedupe keys: the same instant gives the same key in any zone."""
    require_aware("dedupe key time", value)
    return value.astimezone(dt.UTC).strftime("%Y%m%d%H%M")


def require_int(name: str, value: object) -> int:
    """Return ``value`` if it is an ``int`` (and not a ``bool``); raise ``TypeError`` otherwise.

    ``bool`` is an ``int`` subclass: ``True`` kopecks is a bug, not one kopeck. A ``float`` means
    exactness is already lost upstream.
    """
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__} {value!r}")
    return value
