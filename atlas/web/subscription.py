"""``GET /sub/<token>[/<format>]`` and ``GET /sub/<token>/qr.png``: the subscription URL clients import.

One URL for every client. The format is chosen by the client's ``User-Agent``
(:func:`atlas.vpn.formats.choose_format`: share links, Clash/Mihomo YAML, sing-box JSON, Xray JSON)
and can be forced by the path (``/sub/<token>/base64|clash|singbox|xray|html``); a browser
(``Accept: text/html``) gets a page in the user's language with the status, the QR code and
one-tap import buttons (:mod:`atlas.web.subscription_page`). Every client format carries the same
headers (:func:`atlas.vpn.subscription.subscription_headers`): ``subscription-userinfo``,
``profile-title``, ``profile-update-interval``, ``content-disposition``, ``support-url``,
``profile-web-page-url`` (this URL, for the page), and ``announce`` when the operator sets one.

The token is the only credential:

* a malformed token (not 22-64 URL-safe base64 characters) is answered 404 without touching the
  database, so garbage costs nothing and cannot probe it; so is an unknown format suffix;
* an unknown token is 404 too, after one lookup on the unique index (no difference in the answer,
  and the lookup's time does not depend on how close a guess is);
* an expired subscription, a banned user, or a key being prepared is **200 with placeholder
  entries** whose names say why ("⌛ Subscription expired — renew in @bot"), in every format
  (:mod:`atlas.web.subscription_view`): an empty list makes v2rayNG and v2rayN users silently lose
  their servers, and Clash and sing-box refuse an empty profile. The expiry in
  ``subscription-userinfo`` is the real one. When the user pays, the next refresh brings the
  servers back.

Database trouble (:class:`BudgetExhausted`, :class:`DatabaseUnavailable`) is 503 with
``retry-after``: the client keeps its current list and tries later.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from urllib.parse import urlsplit

from starlette.requests import Request
from starlette.responses import HTMLResponse, PlainTextResponse, Response
from starlette.routing import Route

from atlas.clock import Clock
from atlas.storage import BudgetExhausted, Database, DatabaseUnavailable
from atlas.storage.units.vpn import SubscriptionAccess, subscription_access
from atlas.telegram.i18n import Translator, bundled
from atlas.vpn.endpoint import placeholder
from atlas.vpn.formats import Format, choose_format, render_profile
from atlas.vpn.nodes import NodeConfig
from atlas.vpn.qr import qr_png
from atlas.vpn.subscription import SubscriptionUserInfo, is_valid_token_format, subscription_headers
from atlas.web.subscription_page import PAGE_HEADERS, render_page
from atlas.web.subscription_view import subscription_view

_NOT_FOUND = "not found\n"
_USERNAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_")


def subscription_url(public_base_url: str, token: str) -> str:
    """The URL users import: ``<public_base_url>/sub/<token>``."""
    return f"{public_base_url.rstrip('/')}/sub/{token}"


def _check_base_url(value: str) -> str:
    parts = urlsplit(value)
    if parts.scheme not in {"http", "https"} or not parts.netloc or parts.query or parts.fragment:
        raise ValueError(f"public_base_url must be an http(s) URL without query or fragment, got {value!r}")
    return value.rstrip("/")


def _check_bot_username(value: str | None) -> str | None:
    if value is None:
        return None
    name = value.removeprefix("@")
    if not 4 <= len(name) <= 32 or not set(name) <= _USERNAME_CHARS:
        raise ValueError(f"bot_username must be a Telegram username, got {value!r}")
    return name


def subscription_routes(
    db_provider: Callable[[], Database],
    nodes: Sequence[NodeConfig],
    public_base_url: str,
    support_url: str | None,
    *,
    clock: Clock,
    title: str = "Atlas VPN",
    titles: Mapping[str, str] | None = None,
    update_interval_hours: int = 12,
    bot_username: str | None = None,
    announce: str | None = None,
    texts: Translator | None = None,
) -> list[Route]:
    """The ``/sub`` routes for the web app; see the module docstring for the answers.

    ``nodes``: every configured node (disabled ones are left out). ``titles`` maps a user language
    (``ru``, ``en``) to the profile title, falling back to ``title``. ``bot_username`` (with or
    without ``@``) is where placeholders and the page send users to renew; ``announce`` is the
    operator's message for the apps that show one; ``texts`` the locale files (the shipped ones by
    default). Bad arguments raise ``ValueError`` here, at assembly, not on the first request.
    """
    base = _check_base_url(public_base_url)
    enabled = tuple(node for node in nodes if node.enabled)
    bot = _check_bot_username(bot_username)
    bot_url = None if bot is None else f"https://t.me/{bot}"
    translator = texts if texts is not None else bundled()
    title_for = dict(titles or {})
    # Validate the static parts once (support URL, interval, title, announce), and that every
    # format renders, instead of failing per request.
    subscription_headers(
        userinfo=SubscriptionUserInfo(0, 0, 0, None),
        title=title,
        update_interval_hours=update_interval_hours,
        support_url=support_url,
        web_page_url=base,
        announce=announce,
    )
    for fmt in (Format.BASE64, Format.CLASH, Format.SINGBOX, Format.XRAY):
        render_profile(fmt, [placeholder("check")], title=title)

    async def lookup(token: str) -> SubscriptionAccess | Response:
        if not is_valid_token_format(token):
            return PlainTextResponse(_NOT_FOUND, status_code=404)
        try:
            access = await db_provider().run(subscription_access, token=token, now=clock.now())
        except (BudgetExhausted, DatabaseUnavailable):
            return PlainTextResponse("try again later\n", status_code=503, headers={"retry-after": "30"})
        if access is None:
            return PlainTextResponse(_NOT_FOUND, status_code=404)
        return access

    async def serve(request: Request, token: str, forced: Format | None) -> Response:
        fmt = choose_format(request.headers.get("user-agent", ""), request.headers.get("accept", ""), forced)
        found = await lookup(token)
        if isinstance(found, Response):
            return found
        view = subscription_view(found, enabled, texts=translator, bot_username=bot)
        profile_title = title_for.get(view.language, title)
        url = subscription_url(base, token)
        if fmt is Format.HTML:
            seconds_left = (view.expires_at - clock.now()).total_seconds()
            page = render_page(
                view,
                texts=translator,
                title=profile_title,
                subscription_url=url,
                days_left=max(0, math.ceil(seconds_left / 86400)),
                bot_url=bot_url,
                support_url=support_url,
            )
            return HTMLResponse(page, headers=PAGE_HEADERS)
        body, content_type = render_profile(fmt, view.endpoints, title=profile_title)
        headers = subscription_headers(
            userinfo=view.userinfo,
            title=profile_title,
            content_type=content_type,
            update_interval_hours=update_interval_hours,
            support_url=support_url,
            web_page_url=url,
            announce=announce,
            filename=title,
        )
        headers["cache-control"] = "no-store"
        headers["vary"] = "user-agent, accept"
        return Response(body, headers=headers)

    async def subscription(request: Request) -> Response:
        return await serve(request, str(request.path_params["token"]), None)

    async def forced_format(request: Request) -> Response:
        try:
            fmt = Format(str(request.path_params["format"]))
        except ValueError:
            return PlainTextResponse(_NOT_FOUND, status_code=404)
        return await serve(request, str(request.path_params["token"]), fmt)

    async def qr(request: Request) -> Response:
        token = str(request.path_params["token"])
        found = await lookup(token)
        if isinstance(found, Response):
            return found
        png = qr_png(subscription_url(base, token))
        return Response(png, media_type="image/png", headers={"cache-control": "no-store"})

    return [
        Route("/sub/{token}", subscription, methods=["GET"]),
        Route("/sub/{token}/qr.png", qr, methods=["GET"]),
        Route("/sub/{token}/{format}", forced_format, methods=["GET"]),
    ]
