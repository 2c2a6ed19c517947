"""What ``/sub/<token>`` shows, decided before any rendering: :func:`subscription_view`.

The subscription's state is decided once, here, and every format then renders the same entries:

======================  ==========  ==================================================================
the subscription        state       entries every format carries
======================  ==========  ==================================================================
user banned             banned      one placeholder: "⛔ Access blocked — write to support in @bot"
not active (expired)    expired     two placeholders: "⌛ … renew in @bot", "📅 Expired on <date>"
active, no key present  pending     one placeholder: "⏳ Your key is being prepared …"
active, no nodes        active      one placeholder: "⏳ Servers are being set up …"
active with a key       active      one server per enabled node
======================  ==========  ==================================================================

Why placeholders and not an empty body: v2rayNG and v2rayN keep or silently drop an empty list,
and the user loses the servers without a word; a Clash or sing-box profile with no proxies is
refused as invalid. A named entry that connects nowhere (``0.0.0.0:1``) is what every client shows
in its server list, so the reason reaches the user in the app itself (REFERENCE.md, "Expired or
limited users"). When the user pays, the next refresh brings the servers back.

Traffic: Atlas does not count per-user traffic yet (the node agent can report it), so
``upload`` and ``download`` are 0 until it does; ``total`` is 0 because every plan is unlimited
(``total=0`` is how the clients read "unlimited").

Placeholder texts come from the locale files (``sub_url.placeholder.*``); they are plain text, so
the HTML escaping of :meth:`~atlas.telegram.i18n.Translator.t` is undone for them.
"""

from __future__ import annotations

import datetime as dt
import enum
import html
from collections.abc import Sequence
from dataclasses import dataclass

from atlas.storage.units.vpn import SubscriptionAccess
from atlas.telegram.i18n import Translator
from atlas.vpn.endpoint import Endpoint, endpoint_for, placeholder
from atlas.vpn.nodes import NodeConfig
from atlas.vpn.subscription import SubscriptionUserInfo


class AccessState(enum.StrEnum):
    """What the user can do with the subscription right now (the table in the module docstring)."""

    ACTIVE = "active"
    EXPIRED = "expired"
    BANNED = "banned"
    PENDING = "pending"


@dataclass(frozen=True, slots=True)
class SubscriptionView:
    """Everything the formats and the page render: state, entries, the numbers for the headers."""

    state: AccessState
    language: str
    expires_at: dt.datetime
    endpoints: tuple[Endpoint, ...]
    userinfo: SubscriptionUserInfo

    @property
    def servers(self) -> tuple[Endpoint, ...]:
        """The real servers (no placeholders)."""
        return tuple(endpoint for endpoint in self.endpoints if not endpoint.placeholder)


def access_state(access: SubscriptionAccess) -> AccessState:
    """The state of a looked-up subscription; a ban wins over everything else."""
    if access.banned:
        return AccessState.BANNED
    if not access.is_active:
        return AccessState.EXPIRED
    if access.key_uuid is None:
        return AccessState.PENDING
    return AccessState.ACTIVE


def format_date(moment: dt.datetime, language: str) -> str:
    """A date as the user's language writes it (``04.03.2025`` in Russian, ``2025-03-04`` otherwise), UTC."""
    day = moment.astimezone(dt.UTC).date()
    return f"{day:%d.%m.%Y}" if language == "ru" else day.isoformat()


def subscription_view(
    access: SubscriptionAccess,
    nodes: Sequence[NodeConfig],
    *,
    texts: Translator,
    bot_username: str | None,
) -> SubscriptionView:
    """Decide the state and the entries of ``access`` (see the module docstring).

    ``nodes``: the enabled nodes, in the order users see them. ``bot_username`` (without ``@``)
    is named in the placeholders; without it they say "the bot".
    """
    language = texts.language_for(access.language)

    def label(key: str, **params: object) -> str:
        return html.unescape(texts.t(language, f"sub_url.placeholder.{key}", **params))

    bot = f"@{bot_username}" if bot_username else html.unescape(texts.t(language, "sub_url.the_bot"))
    state = access_state(access)
    endpoints: list[Endpoint]
    if state is AccessState.BANNED:
        endpoints = [placeholder(label("banned", bot=bot))]
    elif state is AccessState.EXPIRED:
        endpoints = [
            placeholder(label("expired", bot=bot)),
            placeholder(label("expired_on", date=format_date(access.expires_at, language))),
        ]
    elif state is AccessState.PENDING or access.key_uuid is None:
        endpoints = [placeholder(label("pending"))]
    elif not nodes:
        endpoints = [placeholder(label("no_servers"))]
    else:
        key = str(access.key_uuid)
        endpoints = [endpoint_for(key, node) for node in nodes]
    return SubscriptionView(
        state=state,
        language=language,
        expires_at=access.expires_at,
        endpoints=tuple(endpoints),
        userinfo=SubscriptionUserInfo(upload=0, download=0, total=0, expire=access.expires_at),
    )
