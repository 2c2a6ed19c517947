"""Inline keyboards of the user screens, in the user's language.

Builders are pure: they take the language and what to show and return an
``InlineKeyboardMarkup``; labels come from the locale files (``user.button.*``), callback data
from :mod:`atlas.telegram.callbacks`. One button per row unless a row reads better paired.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any, ParamSpec

from aiogram.types import InlineKeyboardButton, InlineKeyboardMarkup

from atlas.telegram.callbacks import (
    BuyCb,
    LangCb,
    Language,
    MenuAction,
    MenuCb,
    PayMethod,
    PlanCb,
    Platform,
    SubAction,
    SubCb,
    SupportAction,
    SupportCb,
    TopupCb,
)
from atlas.telegram.i18n import Translator, bundled

P = ParamSpec("P")


def _memoised(builder: Callable[P, InlineKeyboardMarkup]) -> Callable[P, InlineKeyboardMarkup]:
    """``builder`` computed once per (translator, arguments): for keyboards of hashable arguments.

    Building a keyboard is pure but not cheap — a lookup and render per label, a pydantic model per
    button and per callback datum (the main menu: ~0.3–0.8 ms) — and the same few keyboards go out
    on nearly every update. aiogram's models are frozen, so one instance can be sent any number of
    times. The translator is part of the key, so a reconfigured :func:`bundled` gets new labels.
    """
    call: Callable[..., InlineKeyboardMarkup] = builder

    @functools.lru_cache(maxsize=512)
    def cached(
        translator: Translator, args: tuple[Any, ...], kwargs: tuple[tuple[str, Any], ...]
    ) -> InlineKeyboardMarkup:
        return call(*args, **dict(kwargs))

    @functools.wraps(builder)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> InlineKeyboardMarkup:
        return cached(bundled(), args, tuple(sorted(kwargs.items())))

    return wrapper


def _label(lang: str, name: str, **params: object) -> str:
    return bundled().t(lang, f"user.button.{name}", **params)


def _button(lang: str, name: str, data: str, **params: object) -> InlineKeyboardButton:
    return InlineKeyboardButton(text=_label(lang, name, **params), callback_data=data)


def _menu(lang: str, action: MenuAction, name: str | None = None) -> InlineKeyboardButton:
    return _button(lang, name or action.name.lower(), MenuCb(action=action).pack())


def _markup(*rows: list[InlineKeyboardButton]) -> InlineKeyboardMarkup:
    return InlineKeyboardMarkup(inline_keyboard=[row for row in rows if row])


@_memoised
def back_to_menu(lang: str) -> InlineKeyboardMarkup:
    """One button: back to the main menu."""
    return _markup([_menu(lang, MenuAction.MENU)])


@_memoised
def main_menu(lang: str, *, trial_available: bool, support: bool = False) -> InlineKeyboardMarkup:
    """The main menu; the trial button only while the user may still take it, "Write to support"
    only where a support chat is configured."""
    return _markup(
        [_menu(lang, MenuAction.TRIAL)] if trial_available else [],
        [_menu(lang, MenuAction.SUBSCRIPTION)],
        [_menu(lang, MenuAction.PLANS), _menu(lang, MenuAction.TOPUP)],
        [_menu(lang, MenuAction.PROMO), _menu(lang, MenuAction.REFERRAL)],
        [_menu(lang, MenuAction.LANGUAGE), _menu(lang, MenuAction.HELP)],
        [support_button(lang)] if support else [],
    )


def support_button(lang: str) -> InlineKeyboardButton:
    """"Write to support" (:mod:`atlas.telegram.routers.support`)."""
    return InlineKeyboardButton(
        text=bundled().t(lang, "support.button.write"),
        callback_data=SupportCb(action=SupportAction.WRITE).pack(),
    )


@_memoised
def no_subscription(lang: str, *, trial_available: bool) -> InlineKeyboardMarkup:
    """Under "you have no subscription": take the trial or buy."""
    return _markup(
        [_menu(lang, MenuAction.TRIAL)] if trial_available else [],
        [_menu(lang, MenuAction.PLANS)],
        [_menu(lang, MenuAction.MENU)],
    )


@_memoised
def subscription(lang: str, *, active: bool, auto_renew: bool) -> InlineKeyboardMarkup:
    """Under "my subscription": QR, setup guides, reissue, auto-renew, renew, menu."""
    auto = SubAction.AUTO_OFF if auto_renew else SubAction.AUTO_ON
    return _markup(
        [
            _button(lang, "qr", SubCb(action=SubAction.QR).pack()),
            _button(lang, "guides", SubCb(action=SubAction.GUIDE).pack()),
        ]
        if active
        else [],
        [_button(lang, "reissue", SubCb(action=SubAction.REISSUE).pack())] if active else [],
        [_button(lang, auto.value, SubCb(action=auto).pack())],
        [_menu(lang, MenuAction.PLANS, "renew")],
        [_menu(lang, MenuAction.MENU)],
    )


@_memoised
def guides(lang: str) -> InlineKeyboardMarkup:
    """One button per platform with setup instructions."""
    platforms = [p for p in Platform if p is not Platform.NONE]
    return _markup(
        [
            _button(lang, f"platform_{p.value}", SubCb(action=SubAction.GUIDE, platform=p).pack())
            for p in platforms[:2]
        ],
        [
            _button(lang, f"platform_{p.value}", SubCb(action=SubAction.GUIDE, platform=p).pack())
            for p in platforms[2:]
        ],
        [_menu(lang, MenuAction.SUBSCRIPTION, "back")],
    )


@_memoised
def back_to_subscription(lang: str) -> InlineKeyboardMarkup:
    """Under the QR code: back to "my subscription", or the menu."""
    return _markup([_menu(lang, MenuAction.SUBSCRIPTION, "back")], [_menu(lang, MenuAction.MENU)])


@_memoised
def reissue_confirm(lang: str) -> InlineKeyboardMarkup:
    """Confirm or cancel a key reissue."""
    return _markup(
        [_button(lang, "reissue_confirm", SubCb(action=SubAction.REISSUE_CONFIRM).pack())],
        [_menu(lang, MenuAction.SUBSCRIPTION, "cancel")],
    )


def plans(lang: str, options: Sequence[tuple[str, str]]) -> InlineKeyboardMarkup:
    """One button per plan: ``(code, label)``."""
    return _plans(lang, tuple(options))


@_memoised
def _plans(lang: str, options: tuple[tuple[str, str], ...]) -> InlineKeyboardMarkup:
    return _markup(
        *[
            [InlineKeyboardButton(text=label, callback_data=PlanCb(plan=code).pack())]
            for code, label in options
        ],
        [_menu(lang, MenuAction.MENU)],
    )


def pay_methods(
    lang: str, plan: str, *, balance_price: str | None, stars_price: int | None, crypto: bool
) -> InlineKeyboardMarkup:
    """The ways to pay for ``plan`` that this deployment and this plan allow."""
    rows: list[list[InlineKeyboardButton]] = []
    if balance_price is not None:
        rows.append(
            [
                _button(
                    lang,
                    "pay_balance",
                    BuyCb(plan=plan, method=PayMethod.BALANCE).pack(),
                    price=balance_price,
                )
            ]
        )
    if stars_price is not None:
        rows.append(
            [_button(lang, "pay_stars", BuyCb(plan=plan, method=PayMethod.STARS).pack(), stars=stars_price)]
        )
    if crypto and balance_price is not None:
        rows.append(
            [
                _button(
                    lang, "pay_crypto", BuyCb(plan=plan, method=PayMethod.CRYPTO).pack(), price=balance_price
                )
            ]
        )
    return _markup(*rows, [_menu(lang, MenuAction.PLANS, "back")])


def topup_amounts(lang: str, options: Sequence[tuple[int, str]]) -> InlineKeyboardMarkup:
    """One button per top-up amount: ``(amount_minor, label)``."""
    return _topup_amounts(lang, tuple(options))


@_memoised
def _topup_amounts(lang: str, options: tuple[tuple[int, str], ...]) -> InlineKeyboardMarkup:
    pairs = [
        InlineKeyboardButton(text=label, callback_data=TopupCb(amount_minor=amount).pack())
        for amount, label in options
    ]
    return _markup(*[pairs[i : i + 2] for i in range(0, len(pairs), 2)], [_menu(lang, MenuAction.MENU)])


@_memoised
def insufficient_balance(lang: str) -> InlineKeyboardMarkup:
    """Under "not enough money": top up, or back to the plans."""
    return _markup([_menu(lang, MenuAction.TOPUP)], [_menu(lang, MenuAction.PLANS, "back")])


@_memoised
def languages(lang: str) -> InlineKeyboardMarkup:
    """One button per language, each labelled in its own language."""
    return _markup(
        [_button(lang, f"lang_{code.value}", LangCb(lang=code).pack()) for code in Language],
        [_menu(lang, MenuAction.MENU)],
    )


def url_button(text: str, url: str, lang: str) -> InlineKeyboardMarkup:
    """A link button (an invoice), then back to the menu."""
    return _markup([InlineKeyboardButton(text=text, url=url)], [_menu(lang, MenuAction.MENU)])


@_memoised
def subscription_entry(lang: str) -> InlineKeyboardMarkup:
    """After a trial or a purchase: open "my subscription", or the menu."""
    return _markup([_menu(lang, MenuAction.SUBSCRIPTION)], [_menu(lang, MenuAction.MENU)])
