"""``GET /sub/<token>`` and ``GET /sub/<token>/qr.png``: the subscription URL clients import.

The body is the base64 list of VLESS links, one per enabled node, with the headers v2rayNG,
Hiddify, Streisand and others read (:func:`atlas.vpn.render_subscription`). The token is the only
credential:

* a malformed token (not 22-64 URL-safe base64 characters) is answered 404 without touching the
  database, so garbage costs nothing and cannot probe it;
* an unknown token is 404 too, after one lookup on the unique index (no difference in the answer,
  and the lookup's time does not depend on how close a guess is);
* an expired subscription (or one with no key wanted present: a banned user, a key being
  reissued) is **200 with an empty list**, not 410: clients then show the expiry date from
  ``subscription-userinfo`` (in the past) and drop the dead servers, while a 410 is shown by most
  of them as a network error and keeps the dead servers configured. When the user pays, the next
  refresh brings the links back.

Database trouble (:class:`BudgetExhausted`, :class:`DatabaseUnavailable`) is 503 with
``retry-after``: the client keeps its current list and tries later.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from urllib.parse import urlsplit

from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from atlas.clock import Clock
from atlas.storage import BudgetExhausted, Database, DatabaseUnavailable
from atlas.storage.units.vpn import SubscriptionAccess, subscription_access
from atlas.vpn.links import vless_link
from atlas.vpn.nodes import NodeConfig
from atlas.vpn.qr import qr_png
from atlas.vpn.subscription import SubscriptionUserInfo, is_valid_token_format, render_subscription

_NOT_FOUND = "not found\n"


def subscription_url(public_base_url: str, token: str) -> str:
    """The URL users import: ``<public_base_url>/sub/<token>``."""
    return f"{public_base_url.rstrip('/')}/sub/{token}"


def _check_base_url(value: str) -> str:
    parts = urlsplit(value)
    if parts.scheme not in {"http", "https"} or not parts.netloc or parts.query or parts.fragment:
        raise ValueError(f"public_base_url must be an http(s) URL without query or fragment, got {value!r}")
    return value.rstrip("/")


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
) -> list[Route]:
    """The ``/sub`` routes for the web app; see the module docstring for the answers.

    ``nodes``: every configured node (disabled ones are left out of the links). ``titles`` maps a
    user language (``ru``, ``en``) to the profile title, falling back to ``title``. Bad arguments
    raise ``ValueError`` here, at assembly, not on the first request.
    """
    base = _check_base_url(public_base_url)
    enabled = tuple(node for node in nodes if node.enabled)
    # Validate the static parts once (support URL, interval, title) instead of per request.
    render_subscription(
        [],
        userinfo=SubscriptionUserInfo(0, 0, 0, None),
        title=title,
        update_interval_hours=update_interval_hours,
        support_url=support_url,
    )
    title_for = dict(titles or {})

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

    async def subscription(request: Request) -> Response:
        found = await lookup(str(request.path_params["token"]))
        if isinstance(found, Response):
            return found
        key = found.key_uuid
        links = [vless_link(str(key), node) for node in enabled] if found.is_active and key else []
        body, headers = render_subscription(
            links,
            userinfo=SubscriptionUserInfo(upload=0, download=0, total=0, expire=found.expires_at),
            title=title_for.get(found.language, title),
            update_interval_hours=update_interval_hours,
            support_url=support_url,
        )
        headers["cache-control"] = "no-store"
        return Response(body, headers=headers)

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
    ]
