"""Which fiat currencies Crypto Pay can price an invoice in, and the start-up check against it.

``ATLAS_CURRENCY`` is the balance currency and the currency of every Crypto Pay invoice. If the
provider cannot price in it, every ``createInvoice`` fails, so it is checked twice, both before the
first invoice:

* at configuration time against :data:`DOCUMENTED_FIATS`, the list the Crypto Pay documentation
  gives (no I/O; :mod:`atlas.runtime.settings` refuses the setting);
* at start against the provider itself (``getCurrencies``), the authority: a fiat the service no
  longer offers stops the start with :class:`CryptoPayCurrencyUnsupported`. When the provider cannot
  be asked at start, the documented list stands and a warning says so (an outage must not keep the
  rest of Atlas down).
"""

from __future__ import annotations

import logging
from typing import Final

from atlas.payments.cryptopay import CryptoPayClient, CryptoPayProtocolError, CryptoPayUnavailable

_log = logging.getLogger("atlas.payments.cryptopay")

DOCUMENTED_FIATS: Final = frozenset(
    {
        "USD", "EUR", "RUB", "BYN", "UAH", "GBP", "CNY", "KZT", "UZS", "GEL",
        "TRY", "AMD", "THB", "INR", "BRL", "IDR", "AZN", "AED", "PLN", "ILS",
    }
)  # fmt: skip


class CryptoPayCurrencyUnsupported(ValueError):
    """Crypto Pay cannot price invoices in the configured currency."""

    def __init__(self, currency: str, offered: frozenset[str]) -> None:
        super().__init__(
            f"ATLAS_CURRENCY={currency}: Crypto Pay cannot price invoices in it "
            f"(it offers {', '.join(sorted(offered))}); choose one of those or turn Crypto Pay off"
        )
        self.currency = currency


async def check_currency_supported(client: CryptoPayClient, currency: str) -> bool:
    """Ask the provider whether it prices in ``currency``; True when confirmed, False when it could
    not be asked (the documented list then stands). Raises :class:`CryptoPayCurrencyUnsupported`.

    A wrong token (``CryptoPayAuthError``) propagates: that is a configuration error too.
    """
    try:
        offered = await client.supported_fiats()
    except (CryptoPayUnavailable, CryptoPayProtocolError) as exc:
        _log.warning(
            "Crypto Pay could not be asked which fiats it offers (%s); trusting the documented list for %s",
            exc.__class__.__name__,
            currency,
        )
        return False
    if currency not in offered:
        raise CryptoPayCurrencyUnsupported(currency, offered)
    return True
