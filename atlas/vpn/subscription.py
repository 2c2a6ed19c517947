"""The headers of the subscription served at ``/sub/<token>``, as Marzban, Remnawave and 3x-ui send them.

Clients fetch the URL periodically; the body is in the client's format (:mod:`atlas.vpn.formats`),
and the headers, the same for every format, carry what the app shows beside the servers::

    subscription-userinfo: upload=0; download=123; total=0; expire=1767225600
    profile-update-interval: 12
    profile-title: base64:QXRsYXMgVlBO
    content-disposition: attachment; filename="atlas"
    support-url: https://t.me/atlas_support_bot
    profile-web-page-url: https://vpn.example.com/sub/<token>
    announce: base64:<the operator's message>

``total=0`` and ``expire=0`` mean "unlimited" to those clients. The token in the URL is the only
credential, so it carries at least 128 bits from :mod:`secrets` (:func:`subscription_token`);
:func:`is_valid_token_format` lets the route reject garbage before touching the database.
"""

from __future__ import annotations

import base64
import datetime as dt
import re
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final
from urllib.parse import urlsplit

MAX_ANNOUNCE: Final = 200  # what Happ shows; longer texts are cut by the apps
TOKEN_BYTES: Final = 24  # 192 bits, 32 URL-safe characters
_TOKEN_RE = re.compile(r"[A-Za-z0-9_-]{22,64}")  # 22 base64 characters = 132 bits, the floor
_FILENAME_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")


@dataclass(frozen=True, slots=True)
class SubscriptionUserInfo:
    """Traffic in bytes (``total=0``: unlimited) and the expiry (``None``: never)."""

    upload: int
    download: int
    total: int
    expire: dt.datetime | None

    def __post_init__(self) -> None:
        for name in ("upload", "download", "total"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"SubscriptionUserInfo.{name} must be a non-negative integer, got {value!r}")
        if self.expire is not None and (
            not isinstance(self.expire, dt.datetime) or self.expire.tzinfo is None
        ):
            raise ValueError(
                f"SubscriptionUserInfo.expire must be a timezone-aware datetime, got {self.expire!r}"
            )

    def header_value(self) -> str:
        """The ``subscription-userinfo`` header value."""
        expire = 0 if self.expire is None else int(self.expire.timestamp())
        return f"upload={self.upload}; download={self.download}; total={self.total}; expire={expire}"


def _header_safe(name: str, value: str) -> str:
    if not value.isascii() or any(not ch.isprintable() for ch in value):
        raise ValueError(f"{name} must be printable ASCII, got {value!r}")
    return value


def _b64_header(text: str) -> str:
    return "base64:" + base64.b64encode(text.encode("utf-8")).decode("ascii")


def subscription_headers(
    *,
    userinfo: SubscriptionUserInfo,
    title: str,
    content_type: str = "text/plain; charset=utf-8",
    update_interval_hours: int = 12,
    support_url: str | None = None,
    web_page_url: str | None = None,
    announce: str | None = None,
    filename: str | None = None,
) -> dict[str, str]:
    """The headers of a subscription in any format; names are lower case.

    ``title`` and ``announce`` may be any Unicode (both are sent ``base64:``-encoded; ``announce``,
    the operator's message shown above the server list by Happ, v2RayTun and others, is at most
    :data:`MAX_ANNOUNCE` characters). ``filename`` defaults to the title, reduced to
    ``[A-Za-z0-9._-]`` (others become ``_``). Raises ``ValueError`` on a non-positive interval, a
    support or web-page URL that is not http(s), or an announce that is empty or too long.
    """
    if (
        isinstance(update_interval_hours, bool)
        or not isinstance(update_interval_hours, int)
        or (update_interval_hours < 1)
    ):
        raise ValueError(f"update_interval_hours must be a positive integer, got {update_interval_hours!r}")
    safe_name = _FILENAME_UNSAFE.sub("_", filename if filename is not None else title)[:64] or "subscription"
    headers = {
        "content-type": content_type,
        "subscription-userinfo": userinfo.header_value(),
        "profile-update-interval": str(update_interval_hours),
        "profile-title": _b64_header(title),
        "content-disposition": f'attachment; filename="{safe_name}"',
    }
    for name, url in (("support-url", support_url), ("profile-web-page-url", web_page_url)):
        if url is None:
            continue
        parts = urlsplit(url)
        if parts.scheme not in {"http", "https"} or not parts.netloc:
            raise ValueError(f"{name.replace('-', '_')} must be an http(s) URL, got {url!r}")
        headers[name] = _header_safe(name, url)
    if announce is not None:
        if not announce.strip() or len(announce) > MAX_ANNOUNCE:
            raise ValueError(f"announce must be 1..{MAX_ANNOUNCE} characters, got {len(announce)}")
        headers["announce"] = _b64_header(announce)
    return headers


def render_subscription(
    links: Sequence[str],
    *,
    userinfo: SubscriptionUserInfo,
    title: str,
    update_interval_hours: int = 12,
    support_url: str | None = None,
    filename: str | None = None,
) -> tuple[bytes, dict[str, str]]:
    """Return ``(body, headers)`` of a base64 list of ``links`` (see :func:`subscription_headers`).

    Raises ``ValueError`` on a link with a line break, and as :func:`subscription_headers` does.
    The ``/sub`` route renders every format through :mod:`atlas.vpn.formats`; this is the plain
    list for callers that already hold links.
    """
    for index, link in enumerate(links):
        if not link or "\n" in link or "\r" in link:
            raise ValueError(f"links[{index}] must be a non-empty single line, got {link!r}")
    headers = subscription_headers(
        userinfo=userinfo,
        title=title,
        update_interval_hours=update_interval_hours,
        support_url=support_url,
        filename=filename,
    )
    return base64.b64encode("\n".join(links).encode("utf-8")), headers


def subscription_token() -> str:
    """Return a fresh URL-safe subscription token with 192 bits from :mod:`secrets`."""
    return secrets.token_urlsafe(TOKEN_BYTES)


def is_valid_token_format(value: str) -> bool:
    """True when ``value`` looks like a token we issue (22-64 URL-safe base64 characters).

    A cheap filter for the ``/sub/<token>`` route, not a proof the token exists.
    """
    return isinstance(value, str) and _TOKEN_RE.fullmatch(value) is not None
