"""Telegram HTML as a tree of safe nodes, for the web chat to build DOM nodes from.

The bot's text is never handed to the browser as HTML: this module parses the subset Telegram
supports (``b i u s code pre a blockquote tg-spoiler`` and their aliases ``strong em ins strike
del span class="tg-spoiler"``) into JSON-ready nodes, and the page creates one element per node
from a fixed table and puts every string in as text. So a ``<script>`` in a user's name (escaped by
the bot, or else refused by ``sendMessage``) stays text, and an ``href`` is kept only when it is
``http(s)://``. Bare ``http(s)://`` URLs in the text become links too (Telegram's clients do the same),
also inside ``code``: on a phone a tap copies a code span, a browser has no such gesture and a link
is what the person wants to open.

Node shapes::

    "text"                                    a string: plain text (entities decoded)
    {"t": "b" | "i" | ..., "c": [nodes]}      a formatting element and its children
    {"t": "a", "href": "https://...", "c": [nodes]}

Text that cannot be parsed (the emulator refuses such HTML in ``sendMessage``, so only a record
made another way can hold it) is shown as it is, as one string.
"""

from __future__ import annotations

import html
import re
from typing import Any

Node = str | dict[str, Any]

ALLOWED_TAGS = frozenset({"b", "i", "u", "s", "code", "pre", "a", "blockquote", "tg-spoiler"})
"""The tags a node tree may hold (the page has an element for each)."""

_ALIASES = {
    "b": "b", "strong": "b", "i": "i", "em": "i", "u": "u", "ins": "u",
    "s": "s", "strike": "s", "del": "s", "code": "code", "pre": "pre", "a": "a",
    "blockquote": "blockquote", "tg-spoiler": "tg-spoiler", "span": "tg-spoiler",
}
_TRANSPARENT = frozenset({"tg-emoji"})
"""Tags whose content is shown without an element (a custom emoji's fallback character)."""

_TAG = re.compile(r"<(/?)([A-Za-z][A-Za-z0-9-]*)(\s[^<>]*)?>")
_ENTITY = re.compile(r"&(?:lt|gt|amp|quot|#[0-9]{1,7}|#x[0-9a-fA-F]{1,6});")
_HREF = re.compile(r"""\bhref\s*=\s*(?:"([^"]*)"|'([^']*)'|([^\s"'>]+))""", re.IGNORECASE)
_URL = re.compile(r"https?://[^\s<>\"']+", re.IGNORECASE)
_TRAILING = ".,;:!?)]}»"
"""Punctuation that ends a sentence more often than a URL: left out of an auto-link."""


class _Unparsable(ValueError):
    pass


def safe_href(raw: str) -> str | None:
    """The link target when it is an absolute ``http(s)`` URL, else None (``javascript:``, ``tg://``...)."""
    href = raw.strip()
    if re.match(r"^https?://[^\s]+$", href, re.IGNORECASE) and not any(ord(c) < 32 for c in href):
        return href
    return None


def linkify(text: str) -> list[Node]:
    """``text`` with each bare http(s) URL made a link node."""
    nodes: list[Node] = []
    last = 0
    for match in _URL.finditer(text):
        url = match.group(0).rstrip(_TRAILING)
        if len(url) <= len("https://"):
            continue
        start, end = match.start(), match.start() + len(url)
        if start > last:
            nodes.append(text[last:start])
        nodes.append({"t": "a", "href": url, "c": [url]})
        last = end
    if last < len(text):
        nodes.append(text[last:])
    return nodes


def to_nodes(text: str, parse_mode: str | None) -> list[Node]:
    """The node tree of a message text as the bot sent it under ``parse_mode``.

    Only ``HTML`` is parsed; Markdown modes are shown as sent (the emulator does not parse them).
    """
    if parse_mode != "HTML":
        return linkify(text)
    try:
        return _parse(text)
    except _Unparsable:
        return [text]


def plain(nodes: list[Node]) -> str:
    """The text a reader sees in ``nodes`` (what Telegram calls the message's plain text)."""
    return "".join(node if isinstance(node, str) else plain(node["c"]) for node in nodes)


def _parse(text: str) -> list[Node]:
    root: list[Node] = []
    # Each open tag: its name as written (to match the end tag), its children list, inside a link?
    stack: list[tuple[str, list[Node], bool]] = [("", root, False)]
    buffer: list[str] = []

    def flush() -> None:
        if buffer:
            _, children, in_link = stack[-1]
            run = "".join(buffer)
            children.extend([run] if in_link else linkify(run))
            buffer.clear()

    i = 0
    while i < len(text):
        char = text[i]
        if char == "<":
            match = _TAG.match(text, i)
            if match is None:
                raise _Unparsable(i)
            flush()
            closing, name, attrs = match.group(1) == "/", match.group(2).lower(), match.group(3) or ""
            if closing:
                if len(stack) == 1 or stack[-1][0] != name:
                    raise _Unparsable(i)
                stack.pop()
            else:
                stack.append(_open(name, attrs, stack[-1]))
            i = match.end()
            continue
        if char == "&":
            entity = _ENTITY.match(text, i)
            if entity is not None:
                buffer.append(html.unescape(entity.group(0)))
                i = entity.end()
                continue
        buffer.append(char)
        i += 1
    if len(stack) != 1:
        raise _Unparsable(len(text))
    flush()
    return root


def _open(name: str, attrs: str, parent: tuple[str, list[Node], bool]) -> tuple[str, list[Node], bool]:
    """The stack entry for an opening tag, its node (if it has one) appended to ``parent``."""
    _, siblings, in_link = parent
    if name in _TRANSPARENT:
        return name, siblings, in_link
    tag = _ALIASES.get(name)
    if tag is None or (name == "span" and "tg-spoiler" not in attrs):
        raise _Unparsable(name)
    if tag == "a":
        found = _HREF.search(attrs)
        raw = next((g for g in found.groups() if g is not None), "") if found else ""
        href = safe_href(html.unescape(raw))
        if href is None:
            # A mention (tg://user?id=) or a scheme a browser must not follow: its text stays.
            return name, siblings, True
        node: dict[str, Any] = {"t": "a", "href": href, "c": []}
        siblings.append(node)
        return name, node["c"], True
    node = {"t": tag, "c": []}
    siblings.append(node)
    return name, node["c"], in_link
