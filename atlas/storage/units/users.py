"""Users: registration on ``/start`` (with referral attribution), referrers, language, read models.

Referral attribution happens once, when ``/start ref_<code>`` creates the user: a later ``/start``
with a link changes nothing (the first referrer is kept, rewards are not redirectable). An unknown
code or garbage in the payload registers the user without a referrer; it is never an error, since a
stale link is not the user's fault. A user cannot follow their own link at creation: their code does
not exist before they do. :func:`set_referrer` records one later (a code typed by hand), with the
domain's :class:`~atlas.domain.SelfReferral` and :class:`~atlas.domain.ReferralAlreadySet`.
"""

from __future__ import annotations

import datetime as dt
import secrets

from atlas.domain import check_referrer, parse_referral_payload
from atlas.storage.tx import Tx
from atlas.storage.units._rows import (
    USER_COLUMNS,
    check_now,
    check_user_id,
    lock_user,
    lock_users,
    user_view,
)
from atlas.storage.units.errors import UnknownUser
from atlas.storage.units.outbox import enqueue_message
from atlas.storage.units.records import ReferralStats, Registration, UserView

# No 0/O, 1/l/I: people read these codes aloud and retype them.
_CODE_ALPHABET = "ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz23456789"
_CODE_LENGTH = 8  # 56**8 ≈ 9.7e13: a collision is rare, and retried
_CODE_ATTEMPTS = 5
_NAME_LIMIT = 256
LANGUAGES = ("ru", "en")


def new_referral_code() -> str:
    """A fresh random referral code (8 unambiguous letters and digits)."""
    return "".join(secrets.choice(_CODE_ALPHABET) for _ in range(_CODE_LENGTH))


def normalise_language(language: str | None) -> str:
    """Telegram's ``language_code`` (``"ru"``, ``"en-US"``, ``"de"``) → ``ru`` or ``en``.

    Russian for ``ru*``, English for everything else: a user the bot cannot address in their
    language is better served in English.
    """
    if isinstance(language, str) and language.strip().lower().startswith("ru"):
        return "ru"
    return "en"


def _clip(text: str | None) -> str | None:
    if text is None:
        return None
    cleaned = "".join(ch for ch in str(text) if ch.isprintable())[:_NAME_LIMIT]
    return cleaned or None


async def register_user(
    tx: Tx,
    *,
    user_id: int,
    username: str | None,
    first_name: str | None,
    language: str | None,
    start_payload: str | None,
    now: dt.datetime,
) -> Registration:
    """Create the user on their first ``/start`` (idempotent); refresh names on later ones.

    Returns the user and ``created``. Concurrent first ``/start``s create one user: the losing
    insert waits on the primary key, does nothing, and reads the winner's row.
    """
    check_user_id(user_id)
    check_now(now)
    username, first_name = _clip(username), _clip(first_name)
    existing = await tx.fetchrow(f"SELECT {USER_COLUMNS} FROM users WHERE id = $1 FOR UPDATE", user_id)
    if existing is not None:
        return Registration(await _refresh_names(tx, existing["id"], username, first_name), created=False)
    referrer_id: int | None = None
    code = parse_referral_payload(start_payload)
    if code is not None:
        found = await tx.fetchval("SELECT id FROM users WHERE referral_code = $1", code)
        if found is not None and check_referrer(user_id, found, referrer_exists=True):
            referrer_id = int(found)
    for _ in range(_CODE_ATTEMPTS):
        row = await tx.fetchrow(
            f"""
            INSERT INTO users (id, username, first_name, language, referral_code, referrer_id, created_at)
            VALUES ($1, $2, $3, $4, $5, $6, $7)
            ON CONFLICT DO NOTHING
            RETURNING {USER_COLUMNS}
            """,
            user_id,
            username,
            first_name,
            normalise_language(language),
            new_referral_code(),
            referrer_id,
            now,
        )
        if row is not None:
            if referrer_id is not None:
                await enqueue_message(
                    tx,
                    chat_id=referrer_id,
                    kind="referral.joined",
                    payload={"referred_id": user_id, "first_name": first_name or ""},
                    dedupe_key=f"referral-joined:{user_id}",
                    now=now,
                )
            return Registration(user_view(row), created=True)
        raced = await tx.fetchrow(f"SELECT {USER_COLUMNS} FROM users WHERE id = $1 FOR UPDATE", user_id)
        if raced is not None:  # a concurrent /start created them first
            return Registration(await _refresh_names(tx, user_id, username, first_name), created=False)
        # else: the referral code collided; draw another
    raise RuntimeError(f"no free referral code after {_CODE_ATTEMPTS} draws; is the alphabet too small?")


async def _refresh_names(tx: Tx, user_id: int, username: str | None, first_name: str | None) -> UserView:
    row = await tx.fetchrow(
        f"""
        UPDATE users SET username = $2, first_name = $3 WHERE id = $1
        RETURNING {USER_COLUMNS}
        """,
        user_id,
        username,
        first_name,
    )
    assert row is not None  # locked by the caller
    return user_view(row)


async def set_referrer(tx: Tx, *, user_id: int, referral_code: str, now: dt.datetime) -> bool:
    """Record the owner of ``referral_code`` as the user's referrer; True if recorded.

    False (nothing changed) for a code nobody owns. Raises :class:`~atlas.domain.SelfReferral`
    for the user's own code, :class:`~atlas.domain.ReferralAlreadySet` when one is already recorded,
    :class:`UnknownUser` for an unregistered user.
    """
    check_user_id(user_id)
    check_now(now)
    code = referral_code.strip() if isinstance(referral_code, str) else ""
    found = await tx.fetchval("SELECT id FROM users WHERE referral_code = $1", code) if code else None
    # Both rows in id order (the package's lock order): the update's foreign-key check on the
    # referrer's row must not wait on a payment of the referrer that waits on this user.
    locked = await lock_users(tx, [user_id] if found is None else [user_id, found])
    if user_id not in locked:
        raise UnknownUser(user_id)
    user = locked[user_id]
    if found is None:
        check_referrer(user_id, -1, referrer_exists=False, current_referrer_id=user["referrer_id"])
        return False
    if not check_referrer(user_id, found, referrer_exists=True, current_referrer_id=user["referrer_id"]):
        return False
    await tx.execute("UPDATE users SET referrer_id = $2 WHERE id = $1", user_id, found)
    await enqueue_message(
        tx,
        chat_id=found,
        kind="referral.joined",
        payload={"referred_id": user_id, "first_name": user["first_name"] or ""},
        dedupe_key=f"referral-joined:{user_id}",
        now=now,
    )
    return True


async def get_user(tx: Tx, *, user_id: int) -> UserView | None:
    """The user, or None if they never pressed ``/start``."""
    check_user_id(user_id)
    row = await tx.fetchrow(f"SELECT {USER_COLUMNS} FROM users WHERE id = $1", user_id)
    return None if row is None else user_view(row)


async def set_language(tx: Tx, *, user_id: int, language: str) -> UserView:
    """Switch the user's language (``ru`` or ``en``; ``ValueError`` otherwise: the button's bug)."""
    check_user_id(user_id)
    if language not in LANGUAGES:
        raise ValueError(f"language must be one of {LANGUAGES}, got {language!r}")
    await lock_user(tx, user_id)
    row = await tx.fetchrow(
        f"UPDATE users SET language = $2 WHERE id = $1 RETURNING {USER_COLUMNS}", user_id, language
    )
    assert row is not None
    return user_view(row)


async def referral_stats(tx: Tx, *, user_id: int) -> ReferralStats:
    """How many users came through this user's link, how many of them paid, and the rewards earned
    (rewards taken back by refunds are not counted)."""
    check_user_id(user_id)
    row = await tx.fetchrow(
        """
        SELECT
            (SELECT count(*) FROM users WHERE referrer_id = $1) AS invited,
            (SELECT count(*) FROM users WHERE referrer_id = $1 AND first_paid_at IS NOT NULL) AS paid,
            (SELECT count(*) FROM referral_rewards WHERE referrer_id = $1 AND reversed_at IS NULL)
                AS rewards,
            (SELECT coalesce(sum(amount_minor), 0) FROM referral_rewards
             WHERE referrer_id = $1 AND reversed_at IS NULL) AS earned
        """,
        user_id,
    )
    assert row is not None
    return ReferralStats(
        invited=int(row["invited"]),
        invited_paid=int(row["paid"]),
        rewards_count=int(row["rewards"]),
        rewards_minor=int(row["earned"]),
    )
