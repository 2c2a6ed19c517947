"""Messages leave through the ``outbox`` table (contract 2): a unit writes a row, an actor sends it.

A row is ``(chat_id, kind, payload, dedupe_key)``. ``kind`` is the locale key of the message
(``"payment.applied"``, ``"reminder.paid.1d"``) and ``payload`` the JSON object of its placeholders;
the sender renders it in the user's language at send time. ``dedupe_key`` is unique: writing the
same notice twice (a replayed webhook, a worker restarted after a crash, two processes) keeps the
first row and drops the rest, so "notify once" is a constraint, not a flag set after sending (the
predecessor double-sent after crashes for exactly that reason).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping

from atlas.storage.tx import Tx
from atlas.storage.units._rows import check_now, to_json

MAX_DEDUPE_KEY = 200


async def enqueue_message(
    tx: Tx,
    *,
    chat_id: int,
    kind: str,
    payload: Mapping[str, object],
    dedupe_key: str,
    now: dt.datetime,
    priority: int = 0,
    broadcast_id: int | None = None,
) -> bool:
    """Write one message for the sender, due at ``now``; return False if ``dedupe_key`` was used.

    ``priority`` 0 is a personal notice, 1 bulk (broadcasts). An empty or over-long key, or an empty
    kind, is a caller's bug (``ValueError``).
    """
    check_now(now)
    if not dedupe_key or len(dedupe_key) > MAX_DEDUPE_KEY:
        raise ValueError(f"dedupe_key must be 1..{MAX_DEDUPE_KEY} chars, got {dedupe_key!r}")
    if not kind:
        raise ValueError("an outbox message needs a kind (its locale key)")
    if priority not in (0, 1):
        raise ValueError(f"priority must be 0 (personal) or 1 (bulk), got {priority!r}")
    inserted = await tx.fetchval(
        """
        INSERT INTO outbox (chat_id, kind, payload, dedupe_key, priority, broadcast_id,
                            next_attempt_at, created_at)
        VALUES ($1, $2, $3::jsonb, $4, $5, $6, $7, $7)
        ON CONFLICT (dedupe_key) DO NOTHING
        RETURNING id
        """,
        chat_id,
        kind,
        to_json(dict(payload)),
        dedupe_key,
        priority,
        broadcast_id,
        now,
    )
    return inserted is not None
