"""A small block-style YAML emitter for the Clash/Mihomo profile (no dependency on PyYAML).

The profile is plain data: mappings with string keys, lists, strings, integers and booleans. That is
all this emits, and anything else is a ``TypeError`` (a programming error, caught by the tests).
Every string is written double-quoted with JSON escapes, which YAML 1.1 and 1.2 read the same way
(go-yaml in Mihomo, PyYAML in the tests), so a name like ``yes``, ``0x10``, ``: #`` or ``⌛ …`` can
never turn into a boolean, a number or a syntax error. Non-printable characters are written as
``\\uXXXX``/``\\UXXXXXXXX`` escapes, never raw. Keys are plain scalars and must be simple
identifiers (``[A-Za-z0-9_-]``), which every key of a Clash profile is.

Why not flow style (JSON is valid YAML)? Clash Verge Rev and FlClash show and let users edit the
profile; block style is what they and every guide use.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence

_PLAIN_KEY = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_-]*")


def quote(text: str) -> str:
    """``text`` as a YAML double-quoted scalar."""
    out = []
    for ch in json.dumps(text, ensure_ascii=False)[1:-1]:
        if ch.isprintable():
            out.append(ch)
        elif ord(ch) <= 0xFFFF:
            out.append(f"\\u{ord(ch):04x}")
        else:
            out.append(f"\\U{ord(ch):08x}")
    return '"' + "".join(out) + '"'


def _scalar(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        return quote(value)
    raise TypeError(f"cannot emit {type(value).__name__} as a YAML scalar: {value!r}")


def _key(key: object) -> str:
    if not isinstance(key, str) or not _PLAIN_KEY.fullmatch(key):
        raise TypeError(f"YAML keys here must be simple identifiers, got {key!r}")
    return key


def _is_collection(value: object) -> bool:
    return isinstance(value, Mapping) or (isinstance(value, Sequence) and not isinstance(value, str))


def _lines(value: object, indent: int) -> list[str]:
    pad = " " * indent
    if isinstance(value, Mapping):
        if not value:
            return [pad + "{}"]
        out: list[str] = []
        for key, item in value.items():
            if _is_collection(item) and item:
                out.append(f"{pad}{_key(key)}:")
                out.extend(_lines(item, indent + 2))
            else:
                out.append(f"{pad}{_key(key)}: {_inline(item)}")
        return out
    if isinstance(value, Sequence) and not isinstance(value, str):
        if not value:
            return [pad + "[]"]
        out = []
        for item in value:
            if _is_collection(item) and item:
                nested = _lines(item, indent + 2)
                # "- " takes the place of the first nested line's indentation.
                out.append(f"{pad}- {nested[0][indent + 2 :]}")
                out.extend(nested[1:])
            else:
                out.append(f"{pad}- {_inline(item)}")
        return out
    return [pad + _scalar(value)]


def _inline(value: object) -> str:
    if isinstance(value, Mapping):
        return "{}"  # only ever empty here (non-empty collections go to their own lines)
    if isinstance(value, Sequence) and not isinstance(value, str):
        return "[]"
    return _scalar(value)


def dump(document: Mapping[str, object]) -> str:
    """``document`` as a block-style YAML text ending in a newline."""
    return "\n".join(_lines(document, 0)) + "\n"
