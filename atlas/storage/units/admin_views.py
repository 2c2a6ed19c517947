"""Units of work behind the admin screens: user lookup, the user card, CSV export pages, maintenance.

Everything here is read-only except :func:`set_maintenance` (audited). Exports page with a keyset
(``WHERE id > $after ORDER BY id LIMIT $n``, contract 3): the caller loops, one short transaction
per page, so an export of a million users never holds a connection for long nor loads the table.
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass

from atlas.storage.tx import Tx
from atlas.storage.units._rows import USER_COLUMNS, check_limit, check_now, unstorable_character, user_view
from atlas.storage.units.audit import check_admin_id, record_audit
from atlas.storage.units.errors import InvalidAdminInput
from atlas.storage.units.records import SubscriptionView, UserView
from atlas.storage.units.subscriptions import get_subscription_view

MAX_PAGE = 5000
MAX_MAINTENANCE_MESSAGE = 1000
_USERNAME = re.compile(r"^@?([A-Za-z0-9_]{3,32})$")


@dataclass(frozen=True, slots=True)
class UserCard:
    """What the admin sees about one user: the user row and their subscription (None: never had one)."""

    user: UserView
    subscription: SubscriptionView | None


@dataclass(frozen=True, slots=True)
class MaintenanceState:
    """Maintenance mode: ``enabled`` and the operator's ``message`` for users."""

    enabled: bool
    message: str
    changed_by: int | None
    changed_at: dt.datetime | None


USER_EXPORT_HEADER: tuple[str, ...] = (
    "id", "username", "first_name", "language", "balance_minor", "referrer_id", "created_at",
    "trial_used_at", "first_paid_at", "banned_at", "bot_blocked_at", "subscription_kind",
    "subscription_status", "expires_at", "auto_renew",
)  # fmt: skip
PAYMENT_EXPORT_HEADER: tuple[str, ...] = (
    "id", "user_id", "provider", "external_id", "purpose", "plan_code", "amount_minor", "currency",
    "credit_minor", "promo_code", "status", "created_at", "applied_at", "refunded_at",
)  # fmt: skip

ExportRow = tuple[object, ...]


def parse_user_query(text: str) -> int | str:
    """An admin's lookup text as a user id (digits) or a username (``@name`` or ``name``).

    :class:`InvalidAdminInput` (``field="query"``) for anything else.
    """
    stripped = (text or "").strip()
    if stripped.isdigit() and 0 < len(stripped) <= 18:
        return int(stripped)
    match = _USERNAME.fullmatch(stripped)
    if match is None:
        raise InvalidAdminInput("query", stripped[:40], "not_an_id_or_username")
    return match.group(1)


async def find_user(tx: Tx, *, query: int | str) -> UserView | None:
    """The user with this id, or with this username (case-insensitive; the newest if several)."""
    if isinstance(query, int):
        row = await tx.fetchrow(f"SELECT {USER_COLUMNS} FROM users WHERE id = $1", query)
    else:
        row = await tx.fetchrow(
            f"SELECT {USER_COLUMNS} FROM users WHERE lower(username) = lower($1) "
            "ORDER BY created_at DESC LIMIT 1",
            query,
        )
    return None if row is None else user_view(row)


async def user_card(tx: Tx, *, user_id: int, now: dt.datetime) -> UserCard | None:
    """The card of ``user_id`` at ``now``, or None for an unknown user."""
    check_now(now)
    row = await tx.fetchrow(f"SELECT {USER_COLUMNS} FROM users WHERE id = $1", user_id)
    if row is None:
        return None
    return UserCard(
        user=user_view(row), subscription=await get_subscription_view(tx, user_id=user_id, now=now)
    )


async def export_users_page(tx: Tx, *, after_id: int, limit: int) -> list[ExportRow]:
    """The next ``limit`` users after ``after_id`` as rows of :data:`USER_EXPORT_HEADER`."""
    rows = await tx.fetch(
        """
        SELECT u.id, u.username, u.first_name, u.language, u.balance_minor, u.referrer_id, u.created_at,
               u.trial_used_at, u.first_paid_at, u.banned_at, u.bot_blocked_at, s.kind, s.status,
               s.expires_at, s.auto_renew
        FROM users AS u LEFT JOIN subscriptions AS s ON s.user_id = u.id
        WHERE u.id > $1 ORDER BY u.id LIMIT $2
        """,
        after_id,
        check_limit(limit, most=MAX_PAGE),
    )
    return [tuple(row.values()) for row in rows]


async def export_payments_page(tx: Tx, *, after_id: int, limit: int) -> list[ExportRow]:
    """The next ``limit`` payments after ``after_id`` as rows of :data:`PAYMENT_EXPORT_HEADER`."""
    rows = await tx.fetch(
        """
        SELECT id, user_id, provider, external_id, purpose, plan_code, amount_minor, currency,
               credit_minor, promo_code, status, created_at, applied_at, refunded_at
        FROM payments WHERE id > $1 ORDER BY id LIMIT $2
        """,
        after_id,
        check_limit(limit, most=MAX_PAGE),
    )
    return [tuple(row.values()) for row in rows]


async def get_maintenance(tx: Tx) -> MaintenanceState:
    """The maintenance switch (off with an empty message if the row is somehow missing)."""
    row = await tx.fetchrow("SELECT enabled, message, changed_by, changed_at FROM maintenance WHERE id")
    if row is None:
        return MaintenanceState(False, "", None, None)
    return MaintenanceState(row["enabled"], row["message"], row["changed_by"], row["changed_at"])


async def set_maintenance(
    tx: Tx, *, admin_id: int, enabled: bool, message: str, now: dt.datetime
) -> MaintenanceState:
    """Switch maintenance mode on or off with ``message`` for users; audited.

    :class:`InvalidAdminInput` (``field="message"``) for a message over 1000 characters.
    """
    check_admin_id(admin_id)
    check_now(now)
    if not isinstance(message, str) or len(message) > MAX_MAINTENANCE_MESSAGE:
        raise InvalidAdminInput("message", message, "too_long")
    if unstorable_character(message) is not None:
        raise InvalidAdminInput("message", message, "unstorable")
    await tx.execute(
        """
        INSERT INTO maintenance (id, enabled, message, changed_by, changed_at) VALUES (true, $1, $2, $3, $4)
        ON CONFLICT (id) DO UPDATE SET enabled = $1, message = $2, changed_by = $3, changed_at = $4
        """,
        bool(enabled),
        message,
        admin_id,
        now,
    )
    await record_audit(
        tx,
        admin_id=admin_id,
        action="maintenance.on" if enabled else "maintenance.off",
        target_user_id=None,
        details={"message": message},
        reason="maintenance switch",
        now=now,
    )
    return MaintenanceState(bool(enabled), message, admin_id, now)
