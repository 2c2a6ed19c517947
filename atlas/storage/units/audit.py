"""The admin audit log: every admin action writes one row, with a reason, in its own transaction.

An admin action and its audit row commit together or not at all, so the log never claims an action
that did not happen nor misses one that did.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping

from atlas.storage.tx import Tx
from atlas.storage.units._rows import check_limit, from_json, to_json, unstorable_character
from atlas.storage.units.errors import InvalidAdminInput
from atlas.storage.units.records import AuditEntry

MAX_REASON = 1000


def check_reason(reason: str) -> str:
    """The stripped reason; :class:`InvalidAdminInput` when empty or longer than 1000 chars."""
    if not isinstance(reason, str) or not reason.strip():
        raise InvalidAdminInput("reason", reason, "empty")
    if len(reason) > MAX_REASON:
        raise InvalidAdminInput("reason", reason, "too_long")
    if unstorable_character(reason) is not None:
        raise InvalidAdminInput("reason", reason, "unstorable")
    return reason.strip()


def check_admin_id(admin_id: int) -> int:
    """An admin is a Telegram user id (a positive int); anything else is a bug (``ValueError``)."""
    if isinstance(admin_id, bool) or not isinstance(admin_id, int) or admin_id <= 0:
        raise ValueError(f"admin_id must be a positive int, got {admin_id!r}")
    return admin_id


async def record_audit(
    tx: Tx,
    *,
    admin_id: int,
    action: str,
    target_user_id: int | None,
    details: Mapping[str, object],
    reason: str,
    now: dt.datetime,
) -> int:
    """Write one audit row in the caller's transaction; return its id."""
    row_id = await tx.fetchval(
        """
        INSERT INTO admin_audit (admin_id, action, target_user_id, details, reason, created_at)
        VALUES ($1, $2, $3, $4::jsonb, $5, $6) RETURNING id
        """,
        check_admin_id(admin_id),
        action,
        target_user_id,
        to_json(dict(details)),
        check_reason(reason),
        now,
    )
    return int(row_id)


async def audit_log(
    tx: Tx, *, target_user_id: int | None = None, before_id: int | None = None, limit: int = 50
) -> list[AuditEntry]:
    """Audit rows newest first, optionally for one user; keyset-paged by ``before_id``."""
    rows = await tx.fetch(
        """
        SELECT id, admin_id, action, target_user_id, details, reason, created_at FROM admin_audit
        WHERE ($1::bigint IS NULL OR target_user_id = $1) AND ($2::bigint IS NULL OR id < $2)
        ORDER BY id DESC LIMIT $3
        """,
        target_user_id,
        before_id,
        check_limit(limit, most=1000),
    )
    return [
        AuditEntry(
            id=row["id"],
            admin_id=row["admin_id"],
            action=row["action"],
            target_user_id=row["target_user_id"],
            details=from_json(row["details"]),
            reason=row["reason"],
            created_at=row["created_at"],
        )
        for row in rows
    ]
