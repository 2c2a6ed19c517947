"""What the user screens need to know about the deployment: :class:`BotConfig`.

The runtime builds one from its settings, the plan catalogue and the nodes file, and passes it to
:func:`~atlas.telegram.wiring.build_dispatcher` as the dependency ``config``; handlers receive it by
that name. It is frozen plain data: a handler can read it, never change it.
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass, field

from atlas.domain import Currency
from atlas.vpn import NodeConfig

_USERNAME = re.compile(r"^[A-Za-z][A-Za-z0-9_]{3,31}$")
_ASSET = re.compile(r"^[A-Z0-9]{2,10}$")


@dataclass(frozen=True, slots=True)
class BotConfig:
    """Settings of the user screens. Fields (all but the first three optional):

    - ``currency``: the balance currency (ISO code), what plans are bought in from the balance and
      what Crypto Pay invoices are priced in (fiat).
    - ``public_base_url``: where ``/sub/<token>`` is served (no trailing slash needed).
    - ``bot_username``: the bot's @username without ``@``, for referral links.
    - ``nodes`` (none): the VPN nodes; the enabled ones get a share link each.
    - ``trial_days`` (3): length of the one trial.
    - ``support`` (None): a support contact shown in help (``@name`` or a URL).
    - ``promo_ttl`` (30 min): how long a typed promo code is remembered.
    - ``payment_ttl`` (1 h): how long an invoice (Stars or Crypto Pay) stays payable.
    - ``crypto_assets`` (USDT, TON, BTC): what a Crypto Pay invoice accepts.
    - ``topup_amounts_minor`` (100, 300, 500, 1000 in major units): the top-up buttons.
    - ``stars_enabled`` (True): offer Telegram Stars for plans that have a Stars price.
    - ``min_topup_minor`` (1): the smallest top-up the unit accepts (a forged button is refused);
      buttons below it are not shown.
    - ``invoices_per_hour`` (None: no limit): invoices (Stars or Crypto Pay) one user may open per
      hour; the unit that records the intent enforces it.
    - ``support_chat_id`` (None: no tickets): the group where support agents read tickets and reply
      (:mod:`atlas.telegram.routers.support`); only messages from this chat are agents' replies.
    - ``support_per_hour`` (20; None: no limit): messages one user may send to support per hour.
    - ``support_language`` ("en"): the language of the bot's notices in the support chat.

    Construction checks every field and raises ``ValueError`` naming the field and the value.
    """

    currency: str
    public_base_url: str
    bot_username: str
    nodes: tuple[NodeConfig, ...] = ()
    trial_days: int = 3
    support: str | None = None
    promo_ttl: dt.timedelta = dt.timedelta(minutes=30)
    payment_ttl: dt.timedelta = dt.timedelta(hours=1)
    crypto_assets: tuple[str, ...] = ("USDT", "TON", "BTC")
    topup_amounts_minor: tuple[int, ...] = field(default=(10_000, 30_000, 50_000, 100_000))
    stars_enabled: bool = True
    min_topup_minor: int = 1
    invoices_per_hour: int | None = None
    support_chat_id: int | None = None
    support_per_hour: int | None = 20
    support_language: str = "en"

    def __post_init__(self) -> None:
        money = Currency.of(self.currency) if isinstance(self.currency, str) else None
        if money is None or money.is_stars or money.code != self.currency:
            raise ValueError(f"BotConfig.currency must be an upper-case fiat code, got {self.currency!r}")
        if not isinstance(self.public_base_url, str) or not self.public_base_url.startswith(
            ("http://", "https://")
        ):
            raise ValueError(
                f"BotConfig.public_base_url must be an http(s) URL, got {self.public_base_url!r}"
            )
        object.__setattr__(self, "public_base_url", self.public_base_url.rstrip("/"))
        if not isinstance(self.bot_username, str) or not _USERNAME.match(self.bot_username):
            raise ValueError(f"BotConfig.bot_username must be a Telegram username, got {self.bot_username!r}")
        if not all(isinstance(node, NodeConfig) for node in self.nodes):
            raise ValueError(f"BotConfig.nodes must hold NodeConfig values, got {self.nodes!r}")
        if (
            isinstance(self.trial_days, bool)
            or not isinstance(self.trial_days, int)
            or not 1 <= self.trial_days <= 90
        ):
            raise ValueError(f"BotConfig.trial_days must be an int in 1..90, got {self.trial_days!r}")
        for name in ("promo_ttl", "payment_ttl"):
            value = getattr(self, name)
            if not isinstance(value, dt.timedelta) or value <= dt.timedelta(0):
                raise ValueError(f"BotConfig.{name} must be a positive timedelta, got {value!r}")
        if not self.crypto_assets or not all(
            isinstance(a, str) and _ASSET.match(a) for a in self.crypto_assets
        ):
            raise ValueError(
                f"BotConfig.crypto_assets must be asset codes like 'USDT', got {self.crypto_assets!r}"
            )
        amounts = self.topup_amounts_minor
        if not amounts or not all(isinstance(a, int) and not isinstance(a, bool) and a > 0 for a in amounts):
            raise ValueError(f"BotConfig.topup_amounts_minor must be positive ints, got {amounts!r}")
        minimum = self.min_topup_minor
        if isinstance(minimum, bool) or not isinstance(minimum, int) or minimum < 1:
            raise ValueError(f"BotConfig.min_topup_minor must be a positive int, got {minimum!r}")
        limit = self.invoices_per_hour
        if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
            raise ValueError(f"BotConfig.invoices_per_hour must be a positive int or None, got {limit!r}")
        chat = self.support_chat_id
        if chat is not None and (isinstance(chat, bool) or not isinstance(chat, int) or chat == 0):
            raise ValueError(f"BotConfig.support_chat_id must be a non-zero int or None, got {chat!r}")
        per_hour = self.support_per_hour
        if per_hour is not None and (
            isinstance(per_hour, bool) or not isinstance(per_hour, int) or per_hour < 1
        ):
            raise ValueError(f"BotConfig.support_per_hour must be a positive int or None, got {per_hour!r}")
        if self.support_language not in ("ru", "en"):
            raise ValueError(
                f"BotConfig.support_language must be 'ru' or 'en', got {self.support_language!r}"
            )

    @property
    def money(self) -> Currency:
        """The balance currency as a :class:`~atlas.domain.Currency`."""
        return Currency(self.currency)

    @property
    def topup_buttons(self) -> tuple[int, ...]:
        """The top-up amounts to offer: those at or above the minimum (the minimum itself if none)."""
        return tuple(a for a in self.topup_amounts_minor if a >= self.min_topup_minor) or (
            self.min_topup_minor,
        )

    @property
    def enabled_nodes(self) -> tuple[NodeConfig, ...]:
        """The nodes that get a share link."""
        return tuple(node for node in self.nodes if node.enabled)

    def subscription_url(self, token: str) -> str:
        """The ``/sub/<token>`` URL a client imports."""
        return f"{self.public_base_url}/sub/{token}"

    def referral_link(self, code: str) -> str:
        """The ``t.me`` deep link that registers the opener as referred by ``code``'s owner."""
        return f"https://t.me/{self.bot_username}?start=ref_{code}"
