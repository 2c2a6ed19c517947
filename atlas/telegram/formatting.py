"""Times and money as a reader of one language expects them, from Babel's CLDR data. Pure.

Every text the bot sends — screens, admin replies and outbox notices — gets its dates and amounts
from here, through :mod:`atlas.telegram.i18n`: a parameter that is a :class:`~datetime.datetime`
or a :class:`Money` is formatted for the text's language when it is substituted, so no handler
formats by hand and no locale file sees a raw value.

* **Times** are shown in the operator's timezone (``ATLAS_TIMEZONE``, a :class:`Formats` field),
  to the minute: ``"4 декабря 2026, 19:11"`` / ``"Dec 4, 2026, 19:11"``. The zone is not written
  next to the time: a deployment has one, and its users live in it.
* **Money** follows CLDR's currency pattern of the language: ``"199,00 ₽"`` in Russian and
  ``"RUB 199.00"`` in English (CLDR's English symbol for the rouble is its ISO code; the space is
  CLDR's ``currencySpacing`` rule, which Babel does not apply, so it is applied here). One
  departure, per language in :data:`_DROP_ZERO_FRACTION`: Russian readers write whole roubles
  without kopecks (``"199 ₽"``), as every Russian shop does. Telegram Stars (``XTR``) are not in
  CLDR; they read ``"50 ⭐"`` everywhere.

Minor units come in, decimals go out through :class:`~decimal.Decimal` (never ``float``).
"""

from __future__ import annotations

import datetime as dt
import functools
import re
import zoneinfo
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal

from babel import Locale
from babel.dates import format_datetime as _babel_datetime
from babel.numbers import format_currency as _babel_currency

from atlas.domain import Currency, DomainError

STARS = "XTR"

# ---- the rules, as tables --------------------------------------------------------------------

_MOMENT_PATTERN: dict[str, str] = {
    "ru": "d MMMM y, HH:mm",  # "4 декабря 2026, 19:11" (CLDR gives the genitive month)
    "en": "MMM d, y, HH:mm",  # "Dec 4, 2026, 19:11"
}
_DATE_PATTERN: dict[str, str] = {
    "ru": "d MMMM y",
    "en": "MMM d, y",
}
_DROP_ZERO_FRACTION: dict[str, bool] = {
    "ru": True,  # "199 ₽", but "99 979,10 ₽"
    "en": False,  # "RUB 199.00": CLDR's English pattern as is
}
_DEFAULT_LANGUAGE = "en"

# Babel's formatting is pure but slow (~0.1–0.2 ms per amount: it re-reads CLDR data and parses
# the pattern on every call), and a shop shows the same few prices and the same expiry dates over
# and over — a plan list is several prices on every press. The functions below are pure, so their
# results are memoised per argument tuple; the bound keeps an unusual spread of values (balances)
# from growing the caches without limit.
_CACHE_SIZE = 4096

_LETTER_BEFORE_DIGIT = re.compile(r"([^\W\d_])(\d)")
_DIGIT_BEFORE_LETTER = re.compile(r"(\d)([^\W\d_])")
_NBSP = "\u00a0"


@dataclass(frozen=True, slots=True)
class Money:
    """An amount to show: ``amount_minor`` minor units of ``currency`` (an ISO code, or ``XTR``)."""

    amount_minor: int
    currency: str


@dataclass(frozen=True, slots=True)
class Formats:
    """How this deployment writes its values: times in ``timezone`` (the operator's
    ``ATLAS_TIMEZONE``), and amounts that do not name their currency in ``currency`` (the balance
    currency, ``ATLAS_CURRENCY``)."""

    timezone: dt.tzinfo = dt.UTC
    currency: str = "RUB"


def load_timezone(name: str) -> zoneinfo.ZoneInfo:
    """The IANA zone ``name`` (``"Europe/Moscow"``); ``ValueError`` naming it when unknown."""
    try:
        return zoneinfo.ZoneInfo(name)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError) as exc:
        raise ValueError(f"{name!r} is not an IANA timezone name (e.g. 'UTC', 'Europe/Moscow')") from exc


def _language(language: str | None) -> str:
    base = (language or "").split("-", 1)[0].lower()
    return base if base in _MOMENT_PATTERN else _DEFAULT_LANGUAGE


def format_moment(moment: dt.datetime, language: str | None, timezone: dt.tzinfo = dt.UTC) -> str:
    """``moment`` to the minute in ``timezone``: ``"4 декабря 2026, 19:11"`` / ``"Dec 4, 2026, 19:11"``.

    A naive datetime is taken as UTC (business times are aware; this is a guard, not a feature).
    """
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=dt.UTC)
    lang = _language(language)
    return _babel_moment(moment, _MOMENT_PATTERN[lang], lang, timezone)


def format_day(moment: dt.datetime, language: str | None, timezone: dt.tzinfo = dt.UTC) -> str:
    """The calendar day of ``moment`` in ``timezone``: ``"4 декабря 2026"`` / ``"Dec 4, 2026"``."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=dt.UTC)
    lang = _language(language)
    return _babel_moment(moment, _DATE_PATTERN[lang], lang, timezone)


@functools.lru_cache(maxsize=_CACHE_SIZE)
def _babel_moment(moment: dt.datetime, pattern: str, lang: str, timezone: dt.tzinfo) -> str:
    # Keyed on the exact aware moment (not truncated to the minute: a zone's offset may have seconds).
    return str(_babel_datetime(moment, pattern, tzinfo=timezone, locale=lang))


def format_money(amount_minor: int, currency: str, language: str | None) -> str:
    """``amount_minor`` of ``currency`` as the language writes it (see the module docstring).

    An unknown currency code is shown as the bare amount in minor units with its code, rather than
    failing a message over a display detail.
    """
    if currency == STARS:
        return f"{amount_minor}{_NBSP}⭐"
    return _money(amount_minor, currency, _language(language))


@functools.lru_cache(maxsize=_CACHE_SIZE)
def _money(amount_minor: int, currency: str, lang: str) -> str:
    try:
        exponent = Currency.of(currency).exponent
    except (DomainError, ValueError):
        return f"{amount_minor}{_NBSP}{currency}"
    value = Decimal(amount_minor).scaleb(-exponent)
    if _DROP_ZERO_FRACTION[lang] and amount_minor % (10**exponent) == 0:
        text = _babel_currency(value, currency, locale=lang, currency_digits=False, format=_whole(lang))
    else:
        text = _babel_currency(value, currency, locale=lang)
    return _space_letters_from_digits(str(text))


@functools.cache  # one entry per language of _MOMENT_PATTERN
def _whole(language: str) -> str:
    # The locale's own currency pattern with the fraction removed (keeps the symbol's side).
    pattern = Locale.parse(language).currency_formats["standard"].pattern
    return re.sub(r"\.0+", "", pattern.split(";", 1)[0])


def _space_letters_from_digits(text: str) -> str:
    # CLDR currencySpacing: a symbol ending in a letter ("RUB") is kept apart from the digits.
    text = _LETTER_BEFORE_DIGIT.sub(rf"\1{_NBSP}\2", text)
    return _DIGIT_BEFORE_LETTER.sub(rf"\1{_NBSP}\2", text)


def notice_values(payload: Mapping[str, object], default_currency: str) -> dict[str, object]:
    """An outbox payload's fields as typed values, by the naming rule the units follow.

    A field named ``*_at`` (or ``time``) holding an ISO 8601 string is a time; a field named
    ``*_minor`` holding an integer is an amount in the payload's ``currency`` (else
    ``default_currency``, the balance's). Every other field is kept as it is; a ``*_at`` string
    that is not ISO stays text.
    """
    currency = payload.get("currency")
    code = currency if isinstance(currency, str) and currency else default_currency
    values: dict[str, object] = {}
    for name, value in payload.items():
        if (name.endswith("_at") or name == "time") and isinstance(value, str):
            try:
                values[name] = dt.datetime.fromisoformat(value)
            except ValueError:
                values[name] = value
        elif name.endswith("_minor") and isinstance(value, int) and not isinstance(value, bool):
            values[name] = Money(value, code)
        else:
            values[name] = value
    return values


def format_value(value: object, language: str | None, formats: Formats) -> str | None:
    """The text of a typed text parameter (a datetime or :class:`Money`), or None for other values."""
    if isinstance(value, Money):
        return format_money(value.amount_minor, value.currency, language)
    if isinstance(value, dt.datetime):
        return format_moment(value, language, formats.timezone)
    return None
