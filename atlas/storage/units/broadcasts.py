"""Units of work for broadcasts: draft, confirm, materialise recipients into the outbox, finish.

A broadcast's life (``broadcasts.state``)::

    draft ──confirm──▶ confirmed ──first batch──▶ materializing ──last batch──▶ sending ──▶ done
      └──cancel──▶ cancelled

* An admin writes a **draft** (segment + text), sees a preview, then **confirms** it; the confirm
  records where the live progress message is (``progress_chat_id``, ``progress_message_id``).
* The broadcaster (:mod:`atlas.actors.broadcaster`) **materialises** recipients in bounded batches
  (:func:`materialize_batch`): keyset pagination over ``users.id`` from ``cursor_user_id``, one
  ``outbox`` row per recipient (priority 1, dedupe key ``broadcast:<id>:<user>``, so a batch
  repeated after a crash adds nothing). Banned users and users who blocked the bot are skipped.
  The segment is evaluated batch by batch at the batch's ``now``: a user who moves between
  segments while a long broadcast materialises is judged when their id range is reached.
* When the last batch is written the broadcast is **sending**; the outbox sender delivers it and
  :func:`finish_broadcast` turns it **done** once no row is pending.

Segments (at ``now``): ``all``; ``active`` (an active subscription whose time is not up);
``trial`` (the same, of kind trial); ``expired`` (a subscription that is not active now);
``never_paid`` (``users.first_paid_at`` is null).

Refusals are :class:`BroadcastError` (a :class:`~atlas.domain.DomainError`, code
``admin.broadcast.<reason>``): an unknown segment, an empty or over-long text, a broadcast that is
not a draft any more. Nothing changes then.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from atlas.domain import DomainError
from atlas.storage.tx import Record, Tx
from atlas.storage.units._rows import check_limit, check_now, to_json, unstorable_character
from atlas.storage.units.audit import check_admin_id

SEGMENTS: tuple[str, ...] = ("all", "active", "expired", "trial", "never_paid")
MAX_TEXT = 4096
MAX_BATCH = 5000
BROADCAST_KIND = "broadcast"

# Each predicate sees ``u`` (users) and ``s`` (the user's subscription, LEFT JOINed) and ``$1`` = now.
_SEGMENT_SQL: dict[str, str] = {
    "all": "true",
    "active": "s.status = 'active' AND s.expires_at > $1",
    "trial": "s.kind = 'trial' AND s.status = 'active' AND s.expires_at > $1",
    "expired": "s.id IS NOT NULL AND NOT (s.status = 'active' AND s.expires_at > $1)",
    "never_paid": "u.first_paid_at IS NULL",
}
_REACHABLE = "u.banned_at IS NULL AND u.bot_blocked_at IS NULL"
_COLUMNS = (
    "b.id, b.created_by, b.segment, b.text, b.state, b.cursor_user_id, b.recipients, "
    "b.progress_chat_id, b.progress_message_id, b.created_at, b.confirmed_at, b.finished_at, "
    # The language the admin wrote the broadcast in, else their user row's (older broadcasts).
    "coalesce(b.admin_language, (SELECT u.language FROM users AS u WHERE u.id = b.created_by)) "
    "AS admin_language"
)


class BroadcastError(DomainError):
    """A broadcast request that cannot be done: ``reason`` names why (also the locale key suffix).

    Reasons: ``unknown_segment``, ``empty_text``, ``text_too_long``, ``unstorable_text`` (a NUL or
    a lone surrogate), ``not_found``, ``not_draft``.
    """

    code = "admin.broadcast.refused"

    def __init__(self, reason: str, value: object = "") -> None:
        super().__init__(f"broadcast refused: {reason} ({value!r:.80})", reason=reason, value=str(value)[:80])
        self.reason = reason


@dataclass(frozen=True, slots=True)
class BroadcastView:
    """One broadcast row; ``admin_language`` is the language the admin wrote it in, else their
    stored language (None: unknown)."""

    id: int
    created_by: int
    segment: str
    text: str
    state: str
    cursor_user_id: int
    recipients: int
    progress_chat_id: int | None
    progress_message_id: int | None
    created_at: dt.datetime
    confirmed_at: dt.datetime | None
    finished_at: dt.datetime | None
    admin_language: str | None


@dataclass(frozen=True, slots=True)
class MaterializeStep:
    """What one :func:`materialize_batch` did: users examined, rows written, and whether it ended."""

    examined: int
    enqueued: int
    finished: bool
    state: str


def _view(row: Record) -> BroadcastView:
    return BroadcastView(
        id=row["id"],
        created_by=row["created_by"],
        segment=row["segment"],
        text=row["text"],
        state=row["state"],
        cursor_user_id=row["cursor_user_id"],
        recipients=row["recipients"],
        progress_chat_id=row["progress_chat_id"],
        progress_message_id=row["progress_message_id"],
        created_at=row["created_at"],
        confirmed_at=row["confirmed_at"],
        finished_at=row["finished_at"],
        admin_language=row["admin_language"],
    )


def check_segment(segment: str) -> str:
    """``segment`` if it is one of :data:`SEGMENTS`; :class:`BroadcastError` ``unknown_segment``."""
    if segment not in _SEGMENT_SQL:
        raise BroadcastError("unknown_segment", segment)
    return segment


def check_text(text: str) -> str:
    """The text if 1..4096 characters and not blank; :class:`BroadcastError` otherwise."""
    if not isinstance(text, str) or not text.strip():
        raise BroadcastError("empty_text", text)
    if len(text) > MAX_TEXT:
        raise BroadcastError("text_too_long", len(text))
    problem = unstorable_character(text)
    if problem is not None:
        raise BroadcastError("unstorable_text", problem)
    return text


async def create_broadcast(
    tx: Tx,
    *,
    admin_id: int,
    segment: str,
    text: str,
    now: dt.datetime,
    admin_language: str | None = None,
) -> BroadcastView:
    """Write a draft broadcast of ``text`` (Telegram HTML) to ``segment``; return it.

    ``admin_language`` (``"en"``): what the reports to the admin are written in; None uses the
    admin's user row, if any.
    """
    check_admin_id(admin_id)
    check_segment(segment)
    check_text(text)
    check_now(now)
    if admin_language is not None and not (
        isinstance(admin_language, str) and admin_language.isascii() and admin_language.isalpha()
        and admin_language.islower() and 2 <= len(admin_language) <= 3
    ):
        raise ValueError(f"admin_language must be a language code like 'en', got {admin_language!r}")
    row_id = await tx.fetchval(
        "INSERT INTO broadcasts (created_by, segment, text, state, created_at, admin_language) "
        "VALUES ($1, $2, $3, 'draft', $4, $5) RETURNING id",
        admin_id,
        segment,
        text,
        now,
        admin_language,
    )
    return await get_broadcast(tx, broadcast_id=int(row_id))


async def get_broadcast(tx: Tx, *, broadcast_id: int) -> BroadcastView:
    """The broadcast ``broadcast_id``; :class:`BroadcastError` ``not_found``."""
    row = await tx.fetchrow(f"SELECT {_COLUMNS} FROM broadcasts AS b WHERE b.id = $1", broadcast_id)
    if row is None:
        raise BroadcastError("not_found", broadcast_id)
    return _view(row)


async def segment_size(tx: Tx, *, segment: str, now: dt.datetime) -> int:
    """How many reachable users (not banned, bot not blocked) are in ``segment`` at ``now``.

    One ``count(*)`` (an aggregate: one row, however many users); for the preview.
    """
    predicate = _SEGMENT_SQL[check_segment(segment)]
    value = await tx.fetchval(
        f"""
        SELECT count(*) FROM users AS u LEFT JOIN subscriptions AS s ON s.user_id = u.id
        WHERE {_REACHABLE} AND ({predicate}) AND $1::timestamptz IS NOT NULL
        """,
        check_now(now),
    )
    return int(value)


async def confirm_broadcast(
    tx: Tx,
    *,
    broadcast_id: int,
    admin_id: int,
    progress_chat_id: int,
    progress_message_id: int,
    now: dt.datetime,
) -> BroadcastView:
    """Turn a draft into ``confirmed`` (the broadcaster takes it from there).

    ``progress_*`` name the admin's message the broadcaster edits with live counts. Confirming a
    broadcast that is not a draft (confirmed twice: a double tap) raises :class:`BroadcastError`
    ``not_draft`` and changes nothing.
    """
    check_admin_id(admin_id)
    check_now(now)
    row = await tx.fetchrow("SELECT state FROM broadcasts WHERE id = $1 FOR UPDATE", broadcast_id)
    if row is None:
        raise BroadcastError("not_found", broadcast_id)
    if row["state"] != "draft":
        raise BroadcastError("not_draft", row["state"])
    await tx.execute(
        """
        UPDATE broadcasts SET state = 'confirmed', confirmed_at = $2, progress_chat_id = $3,
               progress_message_id = $4
        WHERE id = $1
        """,
        broadcast_id,
        now,
        progress_chat_id,
        progress_message_id,
    )
    return await get_broadcast(tx, broadcast_id=broadcast_id)


async def cancel_broadcast(tx: Tx, *, broadcast_id: int, admin_id: int, now: dt.datetime) -> BroadcastView:
    """Cancel a draft (``not_draft`` otherwise: a confirmed broadcast is already under way)."""
    check_admin_id(admin_id)
    check_now(now)
    row = await tx.fetchrow("SELECT state FROM broadcasts WHERE id = $1 FOR UPDATE", broadcast_id)
    if row is None:
        raise BroadcastError("not_found", broadcast_id)
    if row["state"] != "draft":
        raise BroadcastError("not_draft", row["state"])
    await tx.execute(
        "UPDATE broadcasts SET state = 'cancelled', finished_at = $2 WHERE id = $1", broadcast_id, now
    )
    return await get_broadcast(tx, broadcast_id=broadcast_id)


async def active_broadcasts(tx: Tx, *, limit: int = 20) -> list[BroadcastView]:
    """Broadcasts with work left (confirmed, materializing, sending), oldest first, at most ``limit``."""
    rows = await tx.fetch(
        f"""
        SELECT {_COLUMNS} FROM broadcasts AS b
        WHERE b.state IN ('confirmed', 'materializing', 'sending') ORDER BY b.id LIMIT $1
        """,
        check_limit(limit, most=1000),
    )
    return [_view(row) for row in rows]


async def materialize_batch(tx: Tx, *, broadcast_id: int, now: dt.datetime, limit: int) -> MaterializeStep:
    """Write the next ``limit`` recipients of a confirmed broadcast into the outbox.

    Locks the broadcast row with ``SKIP LOCKED``: a second broadcaster working on it at the same
    moment gets ``examined=0`` and moves on (and the dedupe keys would drop its rows anyway). A
    broadcast that is not ``confirmed``/``materializing`` is left alone. When fewer than ``limit``
    users remain the broadcast becomes ``sending`` (``finished=True``).
    """
    check_now(now)
    check_limit(limit, most=MAX_BATCH)
    row = await tx.fetchrow(
        "SELECT segment, text, state, cursor_user_id FROM broadcasts WHERE id = $1 FOR UPDATE SKIP LOCKED",
        broadcast_id,
    )
    if row is None or row["state"] not in ("confirmed", "materializing"):
        state = "busy" if row is None else str(row["state"])
        return MaterializeStep(examined=0, enqueued=0, finished=False, state=state)
    predicate = _SEGMENT_SQL[check_segment(row["segment"])]
    payload = to_json({"text": row["text"], "parse_mode": "HTML"})
    result = await tx.fetchrow(
        f"""
        WITH batch AS (
            SELECT u.id FROM users AS u LEFT JOIN subscriptions AS s ON s.user_id = u.id
            WHERE u.id > $2 AND {_REACHABLE} AND ({predicate})
            ORDER BY u.id LIMIT $3
        ), written AS (
            INSERT INTO outbox (chat_id, kind, payload, dedupe_key, priority, broadcast_id,
                                next_attempt_at, created_at)
            SELECT id, '{BROADCAST_KIND}', $4::jsonb, 'broadcast:' || $5::bigint || ':' || id, 1, $5, $1, $1
            FROM batch
            ON CONFLICT (dedupe_key) DO NOTHING
            RETURNING 1
        )
        SELECT (SELECT count(*) FROM batch) AS examined, (SELECT max(id) FROM batch) AS last_id,
               (SELECT count(*) FROM written) AS enqueued
        """,
        now,
        row["cursor_user_id"],
        limit,
        payload,
        broadcast_id,
    )
    assert result is not None
    examined, enqueued = int(result["examined"]), int(result["enqueued"])
    finished = examined < limit
    state = "sending" if finished else "materializing"
    await tx.execute(
        """
        UPDATE broadcasts SET state = $2, cursor_user_id = coalesce($3, cursor_user_id),
               recipients = recipients + $4
        WHERE id = $1
        """,
        broadcast_id,
        state,
        result["last_id"],
        enqueued,
    )
    return MaterializeStep(examined=examined, enqueued=enqueued, finished=finished, state=state)


async def finish_broadcast(tx: Tx, *, broadcast_id: int, now: dt.datetime) -> bool:
    """Mark a ``sending`` broadcast ``done`` if none of its rows is pending; True if it did."""
    check_now(now)
    status = await tx.execute(
        """
        UPDATE broadcasts SET state = 'done', finished_at = $2
        WHERE id = $1 AND state = 'sending'
          AND NOT EXISTS (SELECT 1 FROM outbox WHERE broadcast_id = $1 AND state = 'pending')
        """,
        broadcast_id,
        now,
    )
    return status.endswith(" 1")
