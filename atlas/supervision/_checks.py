"""Small field checks shared by the specs: each returns the reason a value is wrong, or None.

They return a reason rather than raising so that every caller raises its own error type naming its
own field (``InvalidChildSpec("shutdown_timeout", -1)``, ``InvalidSupervisorSpec("period", 0)``).
"""

from __future__ import annotations

import math

NAME_MAX = 64


def name_problem(value: object) -> str | None:
    """Why ``value`` cannot be a child or supervisor name (it becomes one segment of a path)."""
    if not isinstance(value, str):
        return "must be a str"
    if not value:
        return "must not be empty"
    if len(value) > NAME_MAX:
        return f"must be at most {NAME_MAX} characters"
    if "/" in value:
        return "must not contain '/' (it separates path segments)"
    if not value.isprintable() or value.strip() != value:
        return "must be printable without leading or trailing whitespace"
    return None


def number_problem(
    value: object, *, minimum: float = 0.0, allow_equal: bool = False, allow_inf: bool = False
) -> str | None:
    """Why ``value`` is not a real number above ``minimum`` (or equal to it when ``allow_equal``)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return "must be a number"
    if math.isnan(value):
        return "must not be NaN"
    if math.isinf(value) and not allow_inf:
        return "must be finite"
    if value < minimum or (value == minimum and not allow_equal):
        return f"must be {'>=' if allow_equal else '>'} {minimum:g}"
    return None


def int_problem(value: object, *, minimum: int = 0) -> str | None:
    """Why ``value`` is not an int >= ``minimum``."""
    if isinstance(value, bool) or not isinstance(value, int):
        return "must be an int"
    if value < minimum:
        return f"must be >= {minimum}"
    return None
