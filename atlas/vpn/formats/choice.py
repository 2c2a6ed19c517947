"""Which format a client gets: the User-Agent table, as pure data and one function.

Clients do not say which format they want; panels (Marzban, Remnawave, 3x-ui) recognise them by
``User-Agent``. :data:`CLIENT_RULES` is that recognition as a table read top to bottom, the first
matching rule winning, so an order that matters is visible here and nowhere else:

* Hiddify says ``like ClashMeta v2ray sing-box`` and NekoBox ``Prefer ClashMeta Format``: they come
  before the Clash rules. Hiddify gets sing-box (its own core); NekoBox reads share links best.
* ``v2rayNG`` starts with ``v2rayN``: it comes before v2rayN.
* FlClash says ``clash-verge`` too; it is named first only so that the table says who it is.
* v2rayN (from 6.40) and Happ (from 1.63.1) import a list of Xray configs; older versions only
  read share links, so a rule may carry a minimum version and otherwise falls through to links.

Then, for an unrecognised client, ``Accept: text/html`` (a browser) gets the HTML page, and anything
else the base64 links every client reads. A path suffix (``/sub/<token>/clash``) overrides it all:
:func:`choose_format` takes it as ``forced``.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass
from typing import Final


class Format(enum.StrEnum):
    """A subscription format; the value is also its path suffix (``/sub/<token>/<value>``)."""

    BASE64 = "base64"
    CLASH = "clash"
    SINGBOX = "singbox"
    XRAY = "xray"
    HTML = "html"


@dataclass(frozen=True, slots=True)
class ClientRule:
    """``pattern`` (case-insensitive, searched in the User-Agent) → ``format``.

    With ``min_version``, the pattern's first group must be a dotted version at least that high;
    a lower or unreadable one makes the rule not match (the next rules are tried).
    """

    client: str
    pattern: re.Pattern[str]
    format: Format
    min_version: tuple[int, ...] | None = None


def _rule(client: str, pattern: str, fmt: Format, min_version: str | None = None) -> ClientRule:
    version = None if min_version is None else tuple(int(part) for part in min_version.split("."))
    return ClientRule(client, re.compile(pattern, re.IGNORECASE), fmt, version)


CLIENT_RULES: Final[tuple[ClientRule, ...]] = (
    _rule("Hiddify", r"hiddify", Format.SINGBOX),
    _rule("NekoBox / NekoRay", r"^neko(box|ray)", Format.BASE64),
    _rule("Karing", r"^karing", Format.SINGBOX),
    _rule("sing-box apps (SFA, SFI, SFM, SFT)", r"^SF[AIMT]/", Format.SINGBOX),
    _rule("v2rayNG", r"^v2rayNG", Format.BASE64),
    _rule("v2rayN", r"^v2rayN/(\d+(?:\.\d+)*)", Format.XRAY, "6.40"),
    _rule("Happ", r"^Happ/(\d+(?:\.\d+)*)", Format.XRAY, "1.63.1"),
    _rule("Streisand", r"^streisand", Format.BASE64),
    _rule("Shadowrocket", r"^shadowrocket", Format.BASE64),
    _rule("Stash", r"^stash", Format.CLASH),
    _rule("FlClash", r"^flclash", Format.CLASH),
    _rule("Clash Verge (Rev)", r"clash-verge", Format.CLASH),
    _rule("Mihomo", r"mihomo", Format.CLASH),
    _rule("Clash Meta", r"clash[.\- ]?meta", Format.CLASH),
    _rule("Clash", r"^clash", Format.CLASH),
)


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in text.split("."))


def _matches(rule: ClientRule, user_agent: str) -> bool:
    found = rule.pattern.search(user_agent)
    if found is None:
        return False
    if rule.min_version is None:
        return True
    return _version(found.group(1)) >= rule.min_version


def client_rule(user_agent: str) -> ClientRule | None:
    """The first rule of :data:`CLIENT_RULES` that matches ``user_agent``, or None."""
    return next((rule for rule in CLIENT_RULES if _matches(rule, user_agent)), None)


def wants_html(accept: str) -> bool:
    """True when an ``Accept`` header asks for HTML (what browsers send for a page)."""
    return any(part.split(";", 1)[0].strip().lower() == "text/html" for part in accept.split(","))


def choose_format(user_agent: str, accept: str = "", forced: Format | None = None) -> Format:
    """The format to serve: ``forced``, else the client's rule, else HTML for a browser, else base64."""
    if forced is not None:
        return forced
    rule = client_rule(user_agent)
    if rule is not None:
        return rule.format
    return Format.HTML if wants_html(accept) else Format.BASE64
