"""Units of work for ``conversation_state``: aiogram's FSM state and data, one row per conversation.

A conversation is identified by :class:`ConversationKey` (aiogram's ``StorageKey`` fields). A row
with no state and empty data is deleted rather than kept: most users are in no conversation, and
the table should only hold the few that are.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from atlas.storage.tx import Tx
from atlas.storage.units._rows import check_now

MAX_DATA_BYTES = 16 * 1024
"""FSM data is a handful of ids and short texts; a larger blob is a bug (or abuse), refused."""


@dataclass(frozen=True, slots=True)
class ConversationKey:
    """Whose conversation: the bot, the chat, the user, the topic thread and the destiny."""

    bot_id: int
    chat_id: int
    user_id: int
    thread_id: int = 0
    business_connection_id: str = ""
    destiny: str = "default"

    def as_args(self) -> tuple[int, int, int, int, str, str]:
        """The primary key columns, in order."""
        return (self.bot_id, self.chat_id, self.user_id, self.thread_id, self.business_connection_id,
                self.destiny)  # fmt: skip


_KEY = (
    "bot_id = $1 AND chat_id = $2 AND user_id = $3 AND thread_id = $4 AND business_connection_id = $5 "
    "AND destiny = $6"
)


async def conversation_state(tx: Tx, *, key: ConversationKey) -> str | None:
    """The conversation's state, or None."""
    value = await tx.fetchval(f"SELECT state FROM conversation_state WHERE {_KEY}", *key.as_args())
    return None if value is None else str(value)


async def conversation_data(tx: Tx, *, key: ConversationKey) -> dict[str, Any]:
    """The conversation's data (a fresh dict; empty when there is none)."""
    value = await tx.fetchval(f"SELECT data FROM conversation_state WHERE {_KEY}", *key.as_args())
    if value is None:
        return {}
    loaded = json.loads(value) if isinstance(value, str) else value
    return dict(loaded)


def _encoded(data: Mapping[str, Any]) -> str:
    try:
        text = json.dumps(dict(data), ensure_ascii=False, separators=(",", ":"))
    except (TypeError, ValueError) as exc:
        raise ValueError(f"conversation data must be JSON (ids, texts, numbers): {exc}") from exc
    if len(text.encode()) > MAX_DATA_BYTES:
        raise ValueError(f"conversation data is over {MAX_DATA_BYTES} bytes")
    return text


async def set_conversation_state(
    tx: Tx, *, key: ConversationKey, state: str | None, now: dt.datetime
) -> None:
    """Set (or clear) the state, keeping the data; an empty conversation is deleted."""
    check_now(now)
    await tx.execute(
        """
        INSERT INTO conversation_state (bot_id, chat_id, user_id, thread_id, business_connection_id,
                                        destiny, state, updated_at)
        VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
        ON CONFLICT (bot_id, chat_id, user_id, thread_id, business_connection_id, destiny)
        DO UPDATE SET state = EXCLUDED.state, updated_at = EXCLUDED.updated_at
        """,
        *key.as_args(),
        state,
        now,
    )
    await _drop_if_empty(tx, key)


async def set_conversation_data(
    tx: Tx, *, key: ConversationKey, data: Mapping[str, Any], now: dt.datetime
) -> None:
    """Replace the data, keeping the state; an empty conversation is deleted."""
    check_now(now)
    await tx.execute(
        """
        INSERT INTO conversation_state (bot_id, chat_id, user_id, thread_id, business_connection_id,
                                        destiny, data, updated_at)
        VALUES ($1, $2, $3, $4, $5, $6, $7::jsonb, $8)
        ON CONFLICT (bot_id, chat_id, user_id, thread_id, business_connection_id, destiny)
        DO UPDATE SET data = EXCLUDED.data, updated_at = EXCLUDED.updated_at
        """,
        *key.as_args(),
        _encoded(data),
        now,
    )
    await _drop_if_empty(tx, key)


async def _drop_if_empty(tx: Tx, key: ConversationKey) -> None:
    await tx.execute(
        f"DELETE FROM conversation_state WHERE {_KEY} AND state IS NULL AND data = '{{}}'::jsonb",
        *key.as_args(),
    )
