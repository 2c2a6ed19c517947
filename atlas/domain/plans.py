"""Plans and the plan catalogue, loaded from a reviewed TOML file.

A plan is what a user buys: a duration and its prices (one per fiat currency, in minor units, plus
an optional price in Telegram Stars). The catalogue is operator configuration, so it is validated
whole before anything starts, the way OTP checks child specs: one small check per field, and every
error is a :class:`PlanConfigError` naming the field path (``plans[2].duration_days``), the value and
the reason. Unknown keys are errors too, because a typo (``duraton_days``) silently falling back to
a default is how a plan ends up free.

Prices in the file are either integers in **minor units** (``RUB = 19900`` is 199.00 RUB) or
decimal strings in **major units** (``RUB = "199.00"``). Floats are refused: ``199.99`` in TOML is a
binary float and not exactly 199.99.

See ``plans.example.toml`` next to this module.
"""

from __future__ import annotations

import datetime as dt
import re
import tomllib
from collections.abc import Collection, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from atlas.domain.errors import (
    InvalidAmount,
    PlanConfigError,
    PlanNotForSale,
    UnknownPlan,
    UnsupportedCurrency,
)
from atlas.domain.money import MAX_AMOUNT_MINOR, XTR, Currency, parse_amount

#: Plan codes travel in callback data and deep links: short, lower-case, ASCII.
PLAN_CODE_PATTERN = re.compile(r"[a-z0-9][a-z0-9_-]{0,31}", re.ASCII)
#: Ten years: any longer is a typo (days entered as hours, an extra zero).
MAX_DURATION_DAYS = 3660
#: A sanity bound only; Telegram enforces its own, lower, per-invoice limit.
MAX_STARS = 1_000_000

_LANGUAGE = re.compile(r"[a-z]{2,3}(?:-[A-Za-z0-9]{2,8})?", re.ASCII)
_PLAN_KEYS = frozenset({"code", "duration_days", "prices", "stars_price", "titles", "for_sale"})
_REQUIRED_PLAN_KEYS = ("code", "duration_days", "titles")
_TOP_KEYS = frozenset({"plans"})


@dataclass(frozen=True)
class Plan:
    """One purchasable (or formerly purchasable) plan. Frozen; the mappings are read-only views.

    ``prices`` maps a fiat :class:`Currency` to a positive price in minor units; Stars are priced
    in ``stars_price`` (whole stars) instead. ``titles`` maps a language code to the button title.
    ``for_sale=False`` keeps a plan that existing subscribers renew but nobody new can buy.
    Construction validates every field and raises :class:`PlanConfigError` (field ``plan.<name>``).
    """

    code: str
    duration_days: int
    prices: Mapping[Currency, int] = field(hash=False)
    stars_price: int | None
    titles: Mapping[str, str] = field(hash=False)
    for_sale: bool = True

    def __post_init__(self) -> None:
        _check_code("plan.code", self.code)
        _check_duration("plan.duration_days", self.duration_days)
        for currency, price in self.prices.items():
            if not isinstance(currency, Currency) or currency.is_stars:
                raise PlanConfigError("plan.prices", currency, "keys must be fiat Currency values")
            _check_minor(f"plan.prices.{currency.code}", price)
        if self.stars_price is not None:
            _check_stars("plan.stars_price", self.stars_price)
        if not self.prices and self.stars_price is None:
            raise PlanConfigError("plan.prices", {}, "a plan needs at least one price or a stars_price")
        _check_titles("plan.titles", self.titles, ())
        if not isinstance(self.for_sale, bool):
            raise PlanConfigError("plan.for_sale", self.for_sale, "must be true or false")
        # Read-only copies: a frozen dataclass holding a caller's dict is not frozen at all.
        object.__setattr__(self, "prices", MappingProxyType(dict(self.prices)))
        object.__setattr__(self, "titles", MappingProxyType(dict(self.titles)))

    @property
    def duration(self) -> dt.timedelta:
        """The plan's length as a ``timedelta``."""
        return dt.timedelta(days=self.duration_days)

    @property
    def currencies(self) -> tuple[Currency, ...]:
        """Every currency this plan can be paid in, Stars (``XTR``) last when priced."""
        stars = (XTR,) if self.stars_price is not None else ()
        return (*self.prices, *stars)

    def price(self, currency: Currency) -> int:
        """The price in ``currency`` (minor units; whole stars for ``XTR``).

        Raises :class:`UnsupportedCurrency` when the plan is not priced in it.
        """
        if currency.is_stars:
            if self.stars_price is None:
                raise UnsupportedCurrency(currency.code, f"plan {self.code!r} has no Stars price")
            return self.stars_price
        try:
            return self.prices[currency]
        except KeyError:
            raise UnsupportedCurrency(
                currency.code, f"plan {self.code!r} has no {currency.code} price"
            ) from None

    def title(self, language: str, *, fallback: str = "en") -> str:
        """The title in ``language``, else in ``fallback``, else the first one configured."""
        if language in self.titles:
            return self.titles[language]
        if fallback in self.titles:
            return self.titles[fallback]
        return next(iter(self.titles.values()))


class PlanCatalog:
    """The plans of a deployment, in configuration order, looked up by code.

    Built from plans with unique codes (a duplicate raises :class:`PlanConfigError`). Immutable
    after construction.
    """

    def __init__(self, plans: Iterable[Plan]) -> None:
        ordered = tuple(plans)
        by_code: dict[str, Plan] = {}
        for index, plan in enumerate(ordered):
            if plan.code in by_code:
                raise PlanConfigError(f"plans[{index}].code", plan.code, "duplicate plan code")
            by_code[plan.code] = plan
        self._plans = ordered
        self._by_code = MappingProxyType(by_code)

    def get(self, code: str) -> Plan:
        """The plan with this code, for sale or not; raise :class:`UnknownPlan` if there is none."""
        try:
            return self._by_code[code]
        except (KeyError, TypeError):
            raise UnknownPlan(str(code)[:64]) from None

    def get_for_sale(self, code: str) -> Plan:
        """The plan with this code if it can be bought; :class:`UnknownPlan` or :class:`PlanNotForSale`."""
        plan = self.get(code)
        if not plan.for_sale:
            raise PlanNotForSale(plan.code)
        return plan

    def for_sale(self) -> tuple[Plan, ...]:
        """The plans a user may buy now, in configuration order (the order of the buttons)."""
        return tuple(plan for plan in self._plans if plan.for_sale)

    @property
    def codes(self) -> frozenset[str]:
        """Every plan code, for sale or not."""
        return frozenset(self._by_code)

    def __iter__(self) -> Iterator[Plan]:
        return iter(self._plans)

    def __len__(self) -> int:
        return len(self._plans)

    def __contains__(self, code: object) -> bool:
        return code in self._by_code

    def __repr__(self) -> str:
        return f"PlanCatalog({[plan.code for plan in self._plans]!r})"


def load_plan_catalog(
    text: str,
    *,
    required_languages: Collection[str] = ("ru", "en"),
    required_currencies: Collection[str] = (),
) -> PlanCatalog:
    """Parse and validate a plan catalogue from TOML text; raise :class:`PlanConfigError` on any fault.

    Every plan needs a title in each of ``required_languages`` (the bot speaks them all), and every
    plan *for sale* needs a price in each of ``required_currencies`` (the deployment's currency).
    Nothing is returned unless the whole file is valid.
    """
    if not isinstance(text, str):
        raise TypeError(f"plan catalogue must be TOML text (str), got {type(text).__name__}")
    try:
        document = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise PlanConfigError("<toml>", None, f"not valid TOML: {exc}") from exc
    for key in document:
        if key not in _TOP_KEYS:
            raise PlanConfigError(key, document[key], "unknown top-level key (expected [[plans]])")
    raw_plans = document.get("plans")
    if not isinstance(raw_plans, list) or not raw_plans:
        raise PlanConfigError("plans", raw_plans, "need at least one [[plans]] table")
    needed = []
    for code in required_currencies:
        try:
            needed.append(Currency.of(code))
        except UnsupportedCurrency as exc:
            raise PlanConfigError("required_currencies", code, "not a currency code") from exc
    plans = []
    for index, raw in enumerate(raw_plans):
        path = f"plans[{index}]"
        plan = _load_plan(path, raw, tuple(required_languages))
        if plan.for_sale:
            for currency in needed:
                if currency not in plan.currencies:
                    raise PlanConfigError(
                        f"{path}.prices.{currency.code}",
                        None,
                        "missing: every plan for sale needs this currency",
                    )
        plans.append(plan)
    return PlanCatalog(plans)


def _load_plan(path: str, raw: object, languages: tuple[str, ...]) -> Plan:
    if not isinstance(raw, dict):
        raise PlanConfigError(path, raw, "must be a table")
    for key in raw:
        if key not in _PLAN_KEYS:
            raise PlanConfigError(
                f"{path}.{key}", raw[key], f"unknown field (known: {', '.join(sorted(_PLAN_KEYS))})"
            )
    for key in _REQUIRED_PLAN_KEYS:
        if key not in raw:
            raise PlanConfigError(f"{path}.{key}", None, "required field is missing")
    code = raw["code"]
    _check_code(f"{path}.code", code)
    _check_duration(f"{path}.duration_days", raw["duration_days"])
    prices = _load_prices(f"{path}.prices", raw.get("prices", {}))
    stars = raw.get("stars_price")
    if stars is not None:
        _check_stars(f"{path}.stars_price", stars)
    if not prices and stars is None:
        raise PlanConfigError(
            f"{path}.prices", raw.get("prices"), "a plan needs at least one price or a stars_price"
        )
    _check_titles(f"{path}.titles", raw["titles"], languages)
    for_sale = raw.get("for_sale", True)
    if not isinstance(for_sale, bool):
        raise PlanConfigError(f"{path}.for_sale", for_sale, "must be true or false")
    return Plan(
        code=code,
        duration_days=raw["duration_days"],
        prices=prices,
        stars_price=stars,
        titles=raw["titles"],
        for_sale=for_sale,
    )


def _load_prices(path: str, raw: object) -> dict[Currency, int]:
    if not isinstance(raw, dict):
        raise PlanConfigError(path, raw, 'must be a table like { RUB = "199.00" }')
    prices: dict[Currency, int] = {}
    for key, value in raw.items():
        field_path = f"{path}.{key}"
        try:
            currency = Currency(key)
        except UnsupportedCurrency:
            raise PlanConfigError(
                field_path, value, "key must be an upper-case ISO 4217 code like RUB"
            ) from None
        if currency.is_stars:
            raise PlanConfigError(field_path, value, "Stars are priced with stars_price, not in prices")
        prices[currency] = _price_minor(field_path, value, currency)
    return prices


def _price_minor(path: str, value: Any, currency: Currency) -> int:
    if isinstance(value, float):
        raise PlanConfigError(
            path, value, "floats are inexact: write minor units as an int or a decimal string"
        )
    if isinstance(value, str):
        try:
            value = parse_amount(value, exponent=currency.exponent)
        except InvalidAmount as exc:
            raise PlanConfigError(
                path,
                value,
                f"not a price in {currency.code} ({exc.reason}; at most {currency.exponent} decimals)",
            ) from exc
    _check_minor(path, value)
    return int(value)


def _check_code(path: str, value: object) -> None:
    if not isinstance(value, str) or not PLAN_CODE_PATTERN.fullmatch(value):
        raise PlanConfigError(
            path, value, "must be 1-32 chars of a-z, 0-9, '_' or '-', starting with a letter or digit"
        )


def _check_duration(path: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise PlanConfigError(path, value, "must be a whole number of days")
    if not 1 <= value <= MAX_DURATION_DAYS:
        raise PlanConfigError(path, value, f"must be between 1 and {MAX_DURATION_DAYS} days")


def _check_minor(path: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise PlanConfigError(path, value, "must be an int of minor units or a decimal string")
    if not 1 <= value <= MAX_AMOUNT_MINOR:
        raise PlanConfigError(path, value, "a price must be positive (and not absurd)")


def _check_stars(path: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise PlanConfigError(path, value, "must be a whole number of stars")
    if not 1 <= value <= MAX_STARS:
        raise PlanConfigError(path, value, f"must be between 1 and {MAX_STARS}")


def _check_titles(path: str, value: object, languages: tuple[str, ...]) -> None:
    if not isinstance(value, Mapping) or not value:
        raise PlanConfigError(path, value, 'must be a non-empty table like { ru = "...", en = "..." }')
    for language, title in value.items():
        if not isinstance(language, str) or not _LANGUAGE.fullmatch(language):
            raise PlanConfigError(f"{path}.{language}", title, "key must be a language code like ru or en")
        if not isinstance(title, str) or not title.strip() or len(title) > 64:
            raise PlanConfigError(f"{path}.{language}", title, "must be non-empty text of at most 64 chars")
    for language in languages:
        if language not in value:
            raise PlanConfigError(
                f"{path}.{language}", None, "missing: every plan needs a title in this language"
            )
