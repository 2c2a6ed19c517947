"""The shop's numbers read from the database: one unit of work, every count an aggregate."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from atlas.storage import Tx

_COUNTS = """
SELECT
  (SELECT count(*) FROM users)                                              AS users,
  (SELECT count(*) FROM users WHERE referrer_id IS NOT NULL)                AS referred,
  (SELECT count(*) FROM payments WHERE status = 'applied' AND provider = 'stars')     AS paid_stars,
  (SELECT count(*) FROM payments WHERE status = 'applied' AND provider = 'cryptopay') AS paid_cryptopay,
  (SELECT count(*) FROM ledger WHERE kind = 'renewal')                      AS renewals,
  (SELECT count(*) FROM ledger WHERE kind = 'topup')                        AS topups,
  (SELECT count(*) FROM ledger WHERE kind = 'purchase')                     AS balance_purchases,
  (SELECT count(*) FROM promo_redemptions)                                  AS promo_redemptions,
  (SELECT count(*) FROM referral_rewards)                                   AS referral_rewards,
  (SELECT count(*) FROM subscriptions WHERE kind = 'trial')                 AS trials,
  (SELECT count(*) FROM subscriptions WHERE status = 'expired')             AS expired,
  (SELECT count(*) FROM vpn_keys WHERE desired = 'present')                 AS keys_present,
  (SELECT count(*) FROM vpn_keys WHERE desired = 'absent')                  AS keys_revoked,
  (SELECT count(*) FROM broadcasts WHERE state = 'done')                    AS broadcasts_done,
  (SELECT count(*) FROM outbox WHERE state = 'sent')                        AS outbox_sent,
  (SELECT count(*) FROM outbox WHERE state = 'pending')                     AS outbox_pending,
  (SELECT count(*) FROM outbox WHERE state = 'failed')                      AS outbox_failed
"""


@dataclass(frozen=True)
class ShopCounts:
    """Totals over the whole database (the demo's database holds only the demo's shop)."""

    users: int
    referred: int
    paid_stars: int
    paid_cryptopay: int
    renewals: int
    topups: int
    balance_purchases: int
    promo_redemptions: int
    referral_rewards: int
    trials: int
    expired: int
    keys_present: int
    keys_revoked: int
    broadcasts_done: int
    outbox_sent: int
    outbox_pending: int
    outbox_failed: int

    def as_dict(self) -> dict[str, Any]:
        """The counts by name (for the JSON summary)."""
        return asdict(self)


async def shop_counts(tx: Tx) -> ShopCounts:
    """Read every count in one statement (aggregates: one row, nothing unbounded)."""
    row = await tx.fetchrow(_COUNTS)
    if row is None:  # an aggregate SELECT always returns its one row
        raise RuntimeError("the counts query returned no row")
    return ShopCounts(**{key: int(value) for key, value in dict(row).items()})
