"""Decoding untrusted JSON with a bound on nesting: ``loads_bounded``.

The stdlib decoder recurses once per ``[`` or ``{``, so a body of a few thousand brackets (well
within any size cap) raises ``RecursionError``, which is not a ``ValueError``: a handler that maps
bad JSON to 400 answered 500 instead, and a deep enough structure could also exhaust the stack of
whatever walks it later (pydantic, our own parsers). No message Atlas accepts is nested more than a
handful of levels (a Telegram update is about six), so the depth is counted *before* decoding and
anything deeper than ``max_depth`` is refused as :class:`JsonTooDeep`, a ``ValueError`` like every
other malformed body.

The count is one regular-expression pass that skips over string literals (brackets inside strings
do not count), so it costs a fraction of the decoding itself.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Any

DEFAULT_MAX_DEPTH = 32

# A string literal (with escapes) or one bracket; everything else is skipped by the search.
_TOKEN = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"|[\[\]{}]', re.DOTALL)
_OPENERS = frozenset(b"[{")


class JsonTooDeep(ValueError):
    """The document nests arrays/objects deeper than allowed."""


def json_depth(data: bytes) -> int:
    """The deepest nesting of arrays and objects in ``data`` (0 for a scalar); not a validator."""
    depth = deepest = 0
    for match in _TOKEN.finditer(data):
        token = match.group()
        if len(token) != 1:
            continue  # a string literal
        if token[0] in _OPENERS:
            depth += 1
            deepest = max(deepest, depth)
        else:
            depth -= 1
    return deepest


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def loads_bounded(
    data: bytes | bytearray | str,
    *,
    max_depth: int = DEFAULT_MAX_DEPTH,
    parse_float: Callable[[str], Any] | None = None,
) -> Any:
    """``json.loads(data)``, but :class:`JsonTooDeep` for nesting deeper than ``max_depth``.

    Every failure is a ``ValueError`` (``JSONDecodeError``, ``UnicodeDecodeError``,
    :class:`JsonTooDeep`); never ``RecursionError``. ``NaN``, ``Infinity`` and ``-Infinity``, which
    Python's decoder accepts but JSON (RFC 8259) does not, are refused too: no provider sends them,
    and a NaN compares unequal to itself wherever it lands.
    """
    raw = data.encode("utf-8", "surrogatepass") if isinstance(data, str) else bytes(data)
    depth = json_depth(raw)
    if depth > max_depth:
        raise JsonTooDeep(f"JSON nested {depth} levels deep; at most {max_depth} allowed")
    try:
        return json.loads(data, parse_float=parse_float, parse_constant=_refuse_constant)
    except RecursionError:  # pragma: no cover - the depth check above refuses these first
        raise JsonTooDeep(f"JSON nested too deeply to decode (limit {max_depth})") from None
