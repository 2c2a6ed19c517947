"""Money: exact parsing and formatting, currencies, percent_of's rounding, balance arithmetic."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from atlas.domain import (
    MAX_AMOUNT_MINOR,
    XTR,
    Currency,
    InsufficientBalance,
    InvalidAmount,
    UnsupportedCurrency,
    check_amount,
    credit,
    debit,
    format_amount,
    format_money,
    parse_amount,
    percent_of,
)

RUB = Currency("RUB")


@pytest.mark.parametrize(
    ("text", "exponent", "expected"),
    [
        ("12.50", 2, 1250),
        ("12.5", 2, 1250),
        ("12", 2, 1200),
        ("0", 2, 0),
        ("0.01", 2, 1),
        (" 7.00 ", 2, 700),
        ("12.500", 2, 1250),  # trailing zeros are exact, so accepted
        ("150", 0, 150),
        ("1.234", 3, 1234),
        ("000123.40", 2, 12340),
    ],
)
def test_parse_amount_exact(text: str, exponent: int, expected: int) -> None:
    assert parse_amount(text, exponent=exponent) == expected


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("12.505", "too_precise"),
        ("0.001", "too_precise"),
        ("NaN", "malformed"),
        ("nan", "malformed"),
        ("Infinity", "malformed"),
        ("1e3", "malformed"),
        ("1_000", "malformed"),
        ("1,50", "malformed"),
        ("", "malformed"),
        (".5", "malformed"),
        ("5.", "malformed"),
        ("+5", "malformed"),
        ("٣", "malformed"),  # Arabic-Indic digit: Decimal would accept it
        ("1" * 40, "malformed"),
        ("-1.00", "negative"),
    ],
)
def test_parse_amount_rejects(text: str, reason: str) -> None:
    with pytest.raises(InvalidAmount) as info:
        parse_amount(text, exponent=2)
    assert info.value.reason == reason
    assert info.value.code == "amount.invalid"
    assert info.value.params["reason"] == reason


def test_parse_amount_rejects_floats_and_non_strings() -> None:
    for value in (12.5, 12, None, b"12"):
        with pytest.raises(InvalidAmount) as info:
            parse_amount(value, exponent=2)  # type: ignore[arg-type]
        assert info.value.reason == "not_a_string"


def test_parse_amount_negative_when_allowed() -> None:
    assert parse_amount("-1.25", exponent=2, allow_negative=True) == -125
    assert parse_amount("-0.00", exponent=2) == 0  # negative zero is zero, not an error


def test_format_amount() -> None:
    assert format_amount(1250, exponent=2) == "12.50"
    assert format_amount(5, exponent=2) == "0.05"
    assert format_amount(-5, exponent=2) == "-0.05"
    assert format_amount(150, exponent=0) == "150"
    assert format_money(19900, RUB) == "199.00 RUB"
    assert format_money(150, XTR) == "150 XTR"
    with pytest.raises(TypeError):
        format_amount(12.5, exponent=2)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        format_amount(True, exponent=2)


@given(st.integers(min_value=-(10**18), max_value=10**18), st.integers(min_value=0, max_value=8))
def test_parse_format_round_trip(amount: int, exponent: int) -> None:
    text = format_amount(amount, exponent=exponent)
    assert parse_amount(text, exponent=exponent, allow_negative=True) == amount


@given(st.decimals(min_value=0, max_value=10**9, places=2, allow_nan=False, allow_infinity=False))
def test_parse_agrees_with_decimal(value: object) -> None:
    text = f"{value:.2f}"
    assert parse_amount(text, exponent=2) == int(value * 100)  # type: ignore[operator]


@given(st.text(max_size=40))
def test_parse_untrusted_text_never_crashes(text: str) -> None:
    try:
        result = parse_amount(text, exponent=2)
    except InvalidAmount as exc:
        assert exc.code == "amount.invalid"
    else:
        assert isinstance(result, int) and result >= 0


def test_currency_validation() -> None:
    assert Currency("USD").exponent == 2
    assert XTR.exponent == 0 and XTR.is_stars
    assert Currency("JPY").exponent == 0
    assert Currency("KWD").exponent == 3
    assert Currency.of(" rub ") == RUB
    assert str(RUB) == "RUB"
    for bad in ("rub", "RU", "RUBL", "", "R1B", "РУБ"):
        with pytest.raises(UnsupportedCurrency) as info:
            Currency(bad)
        assert info.value.code == "currency.unsupported"
    with pytest.raises(UnsupportedCurrency):
        Currency.of(12)  # type: ignore[arg-type]


def test_percent_of_rounds_half_down() -> None:
    assert percent_of(1005, 5000) == 502  # 502.5: the tie goes down
    assert percent_of(1007, 5000) == 503  # 503.5: also a tie, goes down
    assert percent_of(1, 5000) == 0  # 0.5 -> 0
    assert percent_of(3, 5000) == 1  # 1.5 -> 1
    assert percent_of(10, 3333) == 3  # 3.333 -> 3
    assert percent_of(10, 3500) == 3  # 3.5 tie -> 3
    assert percent_of(10, 3600) == 4  # 3.6 -> 4: above half goes up
    assert percent_of(1000, 10_000) == 1000
    assert percent_of(0, 5000) == 0
    with pytest.raises(ValueError, match="non-negative"):
        percent_of(-1, 100)
    with pytest.raises(TypeError):
        percent_of(10.0, 100)  # type: ignore[arg-type]


@given(st.integers(min_value=0, max_value=10**15), st.integers(min_value=0, max_value=10_000))
def test_percent_of_is_nearest_with_ties_down(amount: int, bp: int) -> None:
    result = percent_of(amount, bp)
    exact_times_10000 = amount * bp
    # |result - exact| <= 1/2, and exactly 1/2 only when rounding down.
    diff = result * 10_000 - exact_times_10000
    assert -5_000 <= diff < 5_000
    assert 0 <= result <= amount


def test_check_amount() -> None:
    assert check_amount(100, RUB) == 100
    cases = [(-1, "negative"), (0, "zero"), (50, "too_small"), (10**7 + 1, "too_large")]
    for amount, reason in cases:
        with pytest.raises(InvalidAmount) as info:
            check_amount(amount, RUB, min_minor=100, max_minor=10**7)
        assert info.value.reason == reason
    with pytest.raises(InvalidAmount) as info:
        check_amount(10**7 + 1, RUB, max_minor=10**7)
    assert info.value.params == {"amount": "100000.01", "reason": "too_large", "limit": "100000.00"}
    with pytest.raises(ValueError, match="min_minor"):
        check_amount(1, RUB, min_minor=10, max_minor=5)


def test_debit_and_credit() -> None:
    assert debit(1000, 300) == 700
    assert debit(300, 300) == 0
    with pytest.raises(InsufficientBalance) as info:
        debit(200, 300)
    assert info.value.code == "balance.insufficient"
    assert info.value.params == {"balance": 200, "required": 300, "shortfall": 100}
    assert credit(0, 500) == 500
    for bad in (0, -5):
        with pytest.raises(ValueError):
            debit(100, bad)
        with pytest.raises(ValueError):
            credit(100, bad)
    with pytest.raises(ValueError):
        credit(MAX_AMOUNT_MINOR, 1)


@given(st.integers(min_value=0, max_value=10**12), st.integers(min_value=1, max_value=10**12))
def test_debit_never_goes_negative(balance: int, amount: int) -> None:
    try:
        after = debit(balance, amount)
    except InsufficientBalance as exc:
        assert amount > balance
        assert exc.params["shortfall"] == amount - balance
    else:
        assert after == balance - amount >= 0
        assert credit(after, amount) == balance
