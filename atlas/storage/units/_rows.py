"""Row locking in the package's one order, and rows turned into records.

The lock order (see the package docstring) lives here so that no unit spells it differently:
users (ascending id) → the subscription → payments → promo codes → keys.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterable
from typing import Any

from atlas.domain import SubscriptionKind, SubscriptionState, SubscriptionStatus
from atlas.storage.tx import Record, Tx
from atlas.storage.units.errors import UnknownUser
from atlas.storage.units.records import UserView

USER_COLUMNS = (
    "id, username, first_name, language, referral_code, referrer_id, balance_minor, trial_used_at, "
    "first_paid_at, banned_at, bot_blocked_at, created_at"
)
SUBSCRIPTION_COLUMNS = (
    "id, user_id, kind, status, plan_code, starts_at, expires_at, auto_renew, last_auto_renewal_at, "
    "renew_next_try_at, token, created_at, updated_at"
)


def unstorable_character(text: str) -> str | None:
    """Why PostgreSQL would refuse to store ``text``, or None when it can.

    ``"nul"``: a NUL character (PostgreSQL's text types cannot hold U+0000; asyncpg raises deep in
    the unit). ``"surrogate"``: a lone UTF-16 surrogate (JSON's ``"\\ud800"`` decodes to one, and it
    has no UTF-8 encoding). Units check user-typed text with this before writing anything, so the
    person gets a clear refusal and nothing is stored half-way.
    """
    if "\x00" in text:
        return "nul"
    if any("\ud800" <= ch <= "\udfff" for ch in text):
        return "surrogate"
    return None


def check_user_id(user_id: int) -> int:
    """Telegram user ids are positive ints; anything else is a caller's bug (``ValueError``)."""
    if isinstance(user_id, bool) or not isinstance(user_id, int) or user_id <= 0:
        raise ValueError(f"user_id must be a positive int, got {user_id!r}")
    return user_id


def check_now(now: dt.datetime) -> dt.datetime:
    """Business time is an aware datetime passed in (contract 4); a naive one is a bug."""
    if not isinstance(now, dt.datetime) or now.utcoffset() is None:
        raise ValueError(f"now must be a timezone-aware datetime, got {now!r}")
    return now


def check_limit(limit: int, *, most: int = 10_000) -> int:
    """A batch size in ``1..most``."""
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= most:
        raise ValueError(f"limit must be an int in 1..{most}, got {limit!r}")
    return limit


async def lock_user(tx: Tx, user_id: int) -> Record:
    """Lock and return the user's row; :class:`UnknownUser` if there is none."""
    row = await tx.fetchrow(f"SELECT {USER_COLUMNS} FROM users WHERE id = $1 FOR UPDATE", user_id)
    if row is None:
        raise UnknownUser(user_id)
    return row


async def lock_users(tx: Tx, user_ids: Iterable[int]) -> dict[int, Record]:
    """Lock several users in ascending id order (so two units never wait on each other in a cycle)."""
    ids = sorted(set(user_ids))
    rows = await tx.fetch(
        f"SELECT {USER_COLUMNS} FROM users WHERE id = ANY($1::bigint[]) ORDER BY id FOR UPDATE",
        ids,
        bounded_by="the ids passed in: a payer and their referrer",
    )
    return {row["id"]: row for row in rows}


async def lock_subscription(tx: Tx, user_id: int) -> Record | None:
    """Lock and return the user's subscription (call after the user's row is locked)."""
    return await tx.fetchrow(
        f"SELECT {SUBSCRIPTION_COLUMNS} FROM subscriptions WHERE user_id = $1 FOR UPDATE", user_id
    )


def user_view(row: Record) -> UserView:
    """A users row (``USER_COLUMNS``) as a :class:`UserView`."""
    return UserView(
        id=row["id"],
        username=row["username"],
        first_name=row["first_name"],
        language=row["language"],
        referral_code=row["referral_code"],
        referrer_id=row["referrer_id"],
        balance_minor=row["balance_minor"],
        trial_used_at=row["trial_used_at"],
        first_paid_at=row["first_paid_at"],
        banned_at=row["banned_at"],
        bot_blocked_at=row["bot_blocked_at"],
        created_at=row["created_at"],
    )


def subscription_state(row: Record | None) -> SubscriptionState | None:
    """The decision-relevant part of a subscriptions row, for the domain rules."""
    if row is None:
        return None
    return SubscriptionState(
        SubscriptionKind(row["kind"]), SubscriptionStatus(row["status"]), row["expires_at"]
    )


def stamp(value: dt.datetime) -> str:
    """An ISO 8601 UTC stamp for outbox payloads and audit details."""
    return value.astimezone(dt.UTC).isoformat()


def to_json(value: Any) -> str:
    """JSON text for a jsonb parameter; datetimes and UUIDs as strings."""
    return json.dumps(value, default=_default, sort_keys=True, ensure_ascii=False)


def _default(value: object) -> object:
    if isinstance(value, dt.datetime):
        return stamp(value)
    if isinstance(value, dt.timedelta):
        return int(value.total_seconds())
    return str(value)


def from_json(value: Any) -> Any:
    """A jsonb column as Python (asyncpg hands jsonb over as text)."""
    return json.loads(value) if isinstance(value, str) else value


def status_count(status: str) -> int:
    """The row count of a status tag like ``"UPDATE 3"``."""
    return int(status.rsplit(" ", 1)[-1])
