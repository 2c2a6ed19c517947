"""Balance arithmetic: the rule that a balance never goes below zero, decided before the ledger write.

The database enforces the same rule (``CHECK (balance_minor >= 0)``); deciding it here first turns a
constraint violation (a crash report) into :class:`InsufficientBalance` (a message to the user).
"""

from __future__ import annotations

from atlas.domain._checks import require_int
from atlas.domain.errors import InsufficientBalance
from atlas.domain.money import MAX_AMOUNT_MINOR


def debit(balance_minor: int, amount_minor: int) -> int:
    """Return the balance after taking ``amount_minor``; raise :class:`InsufficientBalance` if short.

    ``amount_minor`` must be positive and ``balance_minor`` non-negative (``ValueError`` otherwise:
    that is a caller's bug, not the user's).
    """
    balance_minor = require_int("balance_minor", balance_minor)
    amount_minor = require_int("amount_minor", amount_minor)
    if balance_minor < 0:
        raise ValueError(f"balance_minor must be >= 0, got {balance_minor}")
    if amount_minor <= 0:
        raise ValueError(f"a debit must be positive, got {amount_minor}")
    if amount_minor > balance_minor:
        raise InsufficientBalance(balance_minor, amount_minor)
    return balance_minor - amount_minor


def credit(balance_minor: int, amount_minor: int) -> int:
    """Return the balance after adding ``amount_minor`` (positive, ``ValueError`` otherwise).

    Refuses (``ValueError``) a result above ``MAX_AMOUNT_MINOR``: such a balance means a bug upstream.
    """
    balance_minor = require_int("balance_minor", balance_minor)
    amount_minor = require_int("amount_minor", amount_minor)
    if balance_minor < 0:
        raise ValueError(f"balance_minor must be >= 0, got {balance_minor}")
    if amount_minor <= 0:
        raise ValueError(f"a credit must be positive, got {amount_minor}")
    result = balance_minor + amount_minor
    if result > MAX_AMOUNT_MINOR:
        raise ValueError(f"balance {result} would exceed the sanity limit {MAX_AMOUNT_MINOR}")
    return result
