"""What the Crypto Pay emulator knows about money: the currencies and the (fixed) rates.

The codes are the service's (REFERENCE.md and the Crypto Pay documentation): invoices are paid in
the crypto assets; a fiat-priced invoice may be priced in any of the documented fiats. The rates are
deterministic on purpose (tests assert on paid amounts); they are of the right order of magnitude,
nothing more.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from decimal import Decimal
from typing import Any, Final

# USD value of one unit of each asset invoices can be paid in.
ASSET_USD_RATES: Final[Mapping[str, Decimal]] = {
    "USDT": Decimal("1"),
    "USDC": Decimal("1"),
    "TON": Decimal("5.2"),
    "BTC": Decimal("65000"),
    "ETH": Decimal("3200"),
    "LTC": Decimal("80"),
    "BNB": Decimal("600"),
    "TRX": Decimal("0.12"),
}
ASSET_NAMES: Final[Mapping[str, str]] = {
    "USDT": "Tether",
    "USDC": "USD Coin",
    "TON": "Toncoin",
    "BTC": "Bitcoin",
    "ETH": "Ethereum",
    "LTC": "Litecoin",
    "BNB": "Binance Coin",
    "TRX": "TRON",
}
STABLECOINS: Final = frozenset({"USDT", "USDC"})

# USD value of one unit of every fiat Crypto Pay prices invoices in (the documented list).
FIAT_USD_RATES: Final[Mapping[str, Decimal]] = {
    "USD": Decimal("1"),
    "EUR": Decimal("1.08"),
    "RUB": Decimal("0.011"),
    "BYN": Decimal("0.31"),
    "UAH": Decimal("0.024"),
    "GBP": Decimal("1.27"),
    "CNY": Decimal("0.14"),
    "KZT": Decimal("0.0021"),
    "UZS": Decimal("0.000079"),
    "GEL": Decimal("0.37"),
    "TRY": Decimal("0.031"),
    "AMD": Decimal("0.0026"),
    "THB": Decimal("0.028"),
    "INR": Decimal("0.012"),
    "BRL": Decimal("0.18"),
    "IDR": Decimal("0.000062"),
    "AZN": Decimal("0.59"),
    "AED": Decimal("0.27"),
    "PLN": Decimal("0.25"),
    "ILS": Decimal("0.27"),
}
FIAT_NAMES: Final[Mapping[str, str]] = {
    "USD": "US Dollar",
    "EUR": "Euro",
    "RUB": "Russian Ruble",
    "BYN": "Belarusian Ruble",
    "UAH": "Ukrainian Hryvnia",
    "GBP": "Pound Sterling",
    "CNY": "Chinese Yuan",
    "KZT": "Kazakhstani Tenge",
    "UZS": "Uzbekistani Sum",
    "GEL": "Georgian Lari",
    "TRY": "Turkish Lira",
    "AMD": "Armenian Dram",
    "THB": "Thai Baht",
    "INR": "Indian Rupee",
    "BRL": "Brazilian Real",
    "IDR": "Indonesian Rupiah",
    "AZN": "Azerbaijani Manat",
    "AED": "UAE Dirham",
    "PLN": "Polish Zloty",
    "ILS": "Israeli New Shekel",
}
SWAP_TARGETS: Final = ("USDT", "TON", "TRX", "ETH", "SOL", "BTC", "LTC")
"""What ``swap_to`` accepts (the service attempts the swap after payment; it is not guaranteed)."""

_EIGHT_PLACES = Decimal("0.00000001")


def currencies(fiats: Collection[str] = FIAT_USD_RATES.keys()) -> list[dict[str, Any]]:
    """The ``getCurrencies`` result: every asset, then the fiats offered (all documented by default)."""
    assets = [
        {
            "is_blockchain": True,
            "is_stablecoin": code in STABLECOINS,
            "is_fiat": False,
            "name": ASSET_NAMES[code],
            "code": code,
            "decimals": 8,
        }
        for code in ASSET_USD_RATES
    ]
    offered = [
        {"is_blockchain": False, "is_stablecoin": False, "is_fiat": True, "name": FIAT_NAMES[code],
         "code": code, "decimals": 8}
        for code in FIAT_USD_RATES
        if code in fiats
    ]
    return assets + offered


def exchange_rates() -> list[dict[str, Any]]:
    """The ``getExchangeRates`` result: every asset against every fiat (1 asset = rate fiat)."""
    return [
        {
            "is_valid": True,
            "is_crypto": True,
            "is_fiat": False,
            "source": asset,
            "target": fiat,
            "rate": format((asset_usd / fiat_usd).quantize(_EIGHT_PLACES), "f"),
        }
        for asset, asset_usd in ASSET_USD_RATES.items()
        for fiat, fiat_usd in FIAT_USD_RATES.items()
    ]
