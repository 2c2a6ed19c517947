"""Units of work for ``telegram_handled_updates``: which Telegram updates this bot has handled.

The table is what lets the next process recognise an update Telegram delivers again after a
SIGKILL (see :mod:`atlas.telegram.handled_log`). Writes come in batches (one statement for every
update handled in a short interval), reads only for the few update ids a predecessor may have
handled, and old rows are pruned in bounded batches.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence

from atlas.storage.tx import Tx
from atlas.storage.units._rows import check_limit, check_now

MAX_IDS = 10_000
"""The most update ids one call takes (a flush of a short interval, or one getUpdates batch)."""


def _check_ids(update_ids: Sequence[int]) -> list[int]:
    if len(update_ids) > MAX_IDS:
        raise ValueError(f"at most {MAX_IDS} update ids per call, got {len(update_ids)}")
    return list(update_ids)


async def record_handled_updates(
    tx: Tx, *, bot_id: int, update_ids: Sequence[int], now: dt.datetime
) -> None:
    """Record ``update_ids`` as handled by ``bot_id`` at ``now``, in one statement (repeats are no-ops)."""
    ids = _check_ids(update_ids)
    if not ids:
        return
    await tx.execute(
        "INSERT INTO telegram_handled_updates (bot_id, update_id, handled_at) "
        "SELECT $1, u, $3 FROM unnest($2::bigint[]) AS u ON CONFLICT DO NOTHING",
        bot_id,
        ids,
        check_now(now),
    )


async def handled_among(tx: Tx, *, bot_id: int, update_ids: Sequence[int]) -> set[int]:
    """Those of ``update_ids`` recorded as handled by ``bot_id``."""
    ids = _check_ids(update_ids)
    if not ids:
        return set()
    rows = await tx.fetch(
        "SELECT update_id FROM telegram_handled_updates WHERE bot_id = $1 AND update_id = ANY($2::bigint[])",
        bot_id,
        ids,
        bounded_by=f"the update ids passed in, at most {MAX_IDS}",
    )
    return {int(row["update_id"]) for row in rows}


async def highest_handled_update(tx: Tx, *, bot_id: int) -> int | None:
    """The highest update id recorded as handled by ``bot_id`` (None: none yet)."""
    value = await tx.fetchval(
        "SELECT update_id FROM telegram_handled_updates WHERE bot_id = $1 ORDER BY update_id DESC LIMIT 1",
        bot_id,
    )
    return None if value is None else int(value)


async def prune_handled_updates(tx: Tx, *, before: dt.datetime, limit: int) -> int:
    """Delete at most ``limit`` records handled before ``before`` (oldest first); return how many."""
    status = await tx.execute(
        """
        DELETE FROM telegram_handled_updates WHERE (bot_id, update_id) IN (
            SELECT bot_id, update_id FROM telegram_handled_updates
            WHERE handled_at < $1 ORDER BY handled_at LIMIT $2
        )
        """,
        check_now(before),
        check_limit(limit),
    )
    return int(status.split()[-1])
