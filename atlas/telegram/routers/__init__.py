"""The user screens, one router per feature, in one ordered list: :func:`build_user_routers`.

aiogram tries routers in the order they are included and stops at the first handler whose filters
match, so the order is part of the behaviour. Where this list goes in the whole bot: **after** the
admin routers (their filters are narrower: admin ids only) and the payments router (a
``successful_payment`` message must reach it, not the fallback), because the fallback at the end
of this list matches every message and every button press.

Each feature module exposes ``build_router()`` — a factory, since aiogram attaches a router to
one parent only and every test builds its own Dispatcher. Handlers get ``ui``
(:class:`~atlas.telegram.routers._screen.Screen`) from each router's inner middleware; the
dependencies they rely on are ``db``, ``clock``, ``config``
(:class:`~atlas.telegram.config.BotConfig`) and, optionally, ``cryptopay``.
"""

from __future__ import annotations

from aiogram import Router

from atlas.telegram.routers import (
    buy,
    fallback,
    help,
    language,
    menu,
    promo,
    referral,
    start,
    subscription,
    support,
    topup,
    trial,
)


def build_user_routers(*, with_fallback: bool = True) -> list[Router]:
    """Fresh user routers, in the order aiogram must try them (see the comments)."""
    routers = [
        # /start first: it registers the user (with the referral payload) and must win over any
        # text handler, including the promo prompt's "any text" state.
        start.build_router(),
        # Promo before the other text handlers: while it waits for a code, the next plain text is
        # that code (commands are excluded by its filter and go on below).
        promo.build_router(),
        # The feature screens: each matches only its own callback data and commands, so their
        # order among themselves does not matter; kept in menu order for reading.
        menu.build_router(),
        trial.build_router(),
        subscription.build_router(),
        buy.build_router(),
        topup.build_router(),
        referral.build_router(),
        language.build_router(),
        help.build_router(),
        # Support after the screens and before the fallback: it takes text only in its own states
        # ("write your message"), and buttons only of its own callback data.
        support.build_router(),
    ]
    if with_fallback:
        # Last: matches every message and every button press ("outdated button", "unknown text").
        routers.append(fallback.build_router())
    return routers


__all__ = ["build_user_routers"]
