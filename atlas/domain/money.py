"""Money as integers: currencies, exact parsing and formatting, percentages with a stated rounding.

Every amount in Atlas is an ``int`` of minor units (kopecks, cents; for Telegram Stars, whole
stars). Floats never appear: ``0.1 + 0.2`` is not ``0.3``, and a balance must equal the sum of its
ledger to the unit (contract 5 in DESIGN.md).

Parsing is done on the text with a strict ASCII grammar and integer arithmetic, not with
``decimal.Decimal``: ``Decimal`` accepts ``NaN``, ``1e3``, ``1_000`` and non-ASCII digits, and rounds
silently past its context precision (28 digits). A grammar plus ``int`` has none of these traps, and
there is then no ``Decimal`` arithmetic anywhere either.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from atlas.domain._checks import require_int
from atlas.domain.errors import InvalidAmount, UnsupportedCurrency

#: The largest amount Atlas accepts anywhere (minor units): far above any real price, far below
#: PostgreSQL's bigint, so an absurd value is refused before it reaches the ledger.
MAX_AMOUNT_MINOR = 10**15

_CODE = re.compile(r"[A-Z]{3}", re.ASCII)
# ISO 4217 minor-unit exponents that differ from 2, plus Telegram Stars (whole stars, no fraction).
_ZERO_DECIMALS = "BIF CLP DJF GNF ISK JPY KMF KRW PYG RWF UGX UYI VND VUV XAF XOF XPF XTR".split()  # noqa: SIM905
_THREE_DECIMALS = "BHD IQD JOD KWD LYD OMR TND".split()  # noqa: SIM905
_EXPONENTS: dict[str, int] = {**dict.fromkeys(_ZERO_DECIMALS, 0), **dict.fromkeys(_THREE_DECIMALS, 3)}
_MAX_TEXT = 32
_AMOUNT = re.compile(r"(-?)([0-9]+)(?:\.([0-9]+))?", re.ASCII)


@dataclass(frozen=True, slots=True)
class Currency:
    """A currency code: three upper-case ASCII letters (ISO 4217), or ``XTR`` for Telegram Stars.

    Construction validates and raises :class:`UnsupportedCurrency` for anything else; use
    :meth:`of` to accept user or config spelling (``" rub "``). The exponent (how many minor
    units make a major one) follows from the code, so two ``Currency("RUB")`` are always equal.
    """

    code: str

    def __post_init__(self) -> None:
        if not isinstance(self.code, str) or not _CODE.fullmatch(self.code):
            raise UnsupportedCurrency(str(self.code)[:16], f"not a currency code: {self.code!r}")

    @classmethod
    def of(cls, text: str) -> Currency:
        """Parse a code written in any case with surrounding spaces; raise ``UnsupportedCurrency``."""
        if not isinstance(text, str):
            raise UnsupportedCurrency(repr(text)[:16], f"currency code must be text, got {text!r}")
        return cls(text.strip().upper())

    @property
    def exponent(self) -> int:
        """Number of decimal places of the minor unit: 2 for RUB/USD, 0 for XTR and JPY."""
        return _EXPONENTS.get(self.code, 2)

    @property
    def is_stars(self) -> bool:
        """True for Telegram Stars (paid through Telegram, priced separately from fiat)."""
        return self.code == "XTR"

    def __str__(self) -> str:
        return self.code


#: Telegram Stars.
XTR = Currency("XTR")


def parse_amount(text: str, *, exponent: int, allow_negative: bool = False) -> int:
    """Parse a decimal string (``"12.50"``) into minor units (``1250`` for ``exponent=2``), exactly.

    Accepts optional surrounding whitespace, an optional ``-`` (only with ``allow_negative``),
    ASCII digits and at most one ``.``. Extra fraction digits are accepted only when they are zeros
    (``"12.500"`` is exactly 1250; ``"12.505"`` would need rounding and is refused). Zero parses;
    whether zero is acceptable is :func:`check_amount`'s business.

    Raises :class:`InvalidAmount` with ``reason`` ``not_a_string`` (a float or anything but
    ``str``: the caller already lost exactness), ``malformed`` (``NaN``, ``1e3``, ``1,5``, ``""``,
    too long), ``too_precise`` or ``negative``.
    """
    exponent = require_int("exponent", exponent)
    if not 0 <= exponent <= 18:
        raise ValueError(f"exponent must be in 0..18, got {exponent}")
    if not isinstance(text, str):
        raise InvalidAmount(repr(text)[:_MAX_TEXT], "not_a_string")
    stripped = text.strip()
    shown = stripped[:_MAX_TEXT]
    if len(stripped) > _MAX_TEXT:
        raise InvalidAmount(shown, "malformed")
    match = _AMOUNT.fullmatch(stripped)
    if match is None:
        raise InvalidAmount(shown, "malformed")
    sign, whole, fraction = match.group(1), match.group(2), match.group(3) or ""
    kept, dropped = fraction[:exponent], fraction[exponent:]
    if dropped.strip("0"):
        raise InvalidAmount(shown, "too_precise")
    scale: int = 10**exponent
    minor = int(whole) * scale + int(kept.ljust(exponent, "0") or "0")
    if sign and minor != 0:
        if not allow_negative:
            raise InvalidAmount(shown, "negative")
        minor = -minor
    return minor


def format_amount(amount_minor: int, *, exponent: int) -> str:
    """Format minor units back as a decimal string: ``format_amount(1250, exponent=2) == "12.50"``.

    The inverse of :func:`parse_amount` (``parse_amount(format_amount(x, e), e) == x``). No
    thousands separators and no currency sign: presentation belongs to the locale layer.
    """
    amount_minor = require_int("amount_minor", amount_minor)
    exponent = require_int("exponent", exponent)
    if exponent < 0:
        raise ValueError(f"exponent must be >= 0, got {exponent}")
    sign = "-" if amount_minor < 0 else ""
    whole, fraction = divmod(abs(amount_minor), 10**exponent)
    if exponent == 0:
        return f"{sign}{whole}"
    return f"{sign}{whole}.{fraction:0{exponent}d}"


def format_money(amount_minor: int, currency: Currency) -> str:
    """``"12.50 RUB"``: an amount with its code, for logs, admin views and error params."""
    return f"{format_amount(amount_minor, exponent=currency.exponent)} {currency.code}"


def percent_of(amount_minor: int, percent_basis_points: int) -> int:
    """Return ``amount_minor * percent_basis_points / 10000``, rounded to the nearest minor unit.

    Rounding rule: **round half down** (a tie, exactly half a minor unit, goes down; anything
    above half goes up). ``percent_of(1005, 5000) == 502``; ``percent_of(1007, 5000) == 503``.

    Why half down, and whose favour: for a discount Atlas computes the *price to pay* with this
    function (``payable = percent_of(base, 10000 - discount_bp)``) and the discount as the rest, so
    a tie lowers the price: the customer wins the half unit. For rewards and bonuses computed
    directly from this function, a tie lowers the reward: the deployment keeps the half unit. Both
    are the conservative side for an operator that must never pay out money it did not take in.

    Both arguments must be non-negative ints (basis points: 1% = 100, 100% = 10000; above 10000
    is allowed and means more than the whole).
    """
    amount_minor = require_int("amount_minor", amount_minor)
    percent_basis_points = require_int("percent_basis_points", percent_basis_points)
    if amount_minor < 0 or percent_basis_points < 0:
        raise ValueError(f"percent_of needs non-negative inputs, got {amount_minor}, {percent_basis_points}")
    quotient, remainder = divmod(amount_minor * percent_basis_points, 10_000)
    return quotient + 1 if remainder * 2 > 10_000 else quotient


def check_amount(
    amount_minor: int,
    currency: Currency,
    *,
    min_minor: int = 1,
    max_minor: int = MAX_AMOUNT_MINOR,
) -> int:
    """Return ``amount_minor`` if it is a sane positive amount; raise :class:`InvalidAmount` if not.

    ``reason`` is ``negative``, ``zero``, ``too_small`` (below the configured ``min_minor``) or
    ``too_large`` (above the configured ``max_minor``: the "absurd" guard against a typo'd
    top-up of 10^12); ``amount`` and ``limit`` params are formatted in ``currency``.
    """
    amount_minor = require_int("amount_minor", amount_minor)
    if not 1 <= min_minor <= max_minor <= MAX_AMOUNT_MINOR:
        raise ValueError(
            f"need 1 <= min_minor <= max_minor <= {MAX_AMOUNT_MINOR}, got {min_minor}, {max_minor}"
        )
    shown = format_amount(amount_minor, exponent=currency.exponent)
    if amount_minor < 0:
        raise InvalidAmount(shown, "negative")
    if amount_minor == 0:
        raise InvalidAmount(shown, "zero")
    if amount_minor < min_minor:
        raise InvalidAmount(shown, "too_small", limit=format_amount(min_minor, exponent=currency.exponent))
    if amount_minor > max_minor:
        raise InvalidAmount(shown, "too_large", limit=format_amount(max_minor, exponent=currency.exponent))
    return amount_minor
