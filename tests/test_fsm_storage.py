"""Conversation state in PostgreSQL: what one process writes, another reads (webhook scale-out)."""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator

import pytest
import trio
from aiogram.fsm.state import State, StatesGroup
from aiogram.fsm.storage.base import StorageKey

from atlas.clock import Clock
from atlas.storage import Database, DatabaseSettings, Tx
from atlas.telegram.fsm_storage import PostgresFsmStorage

NOW = dt.datetime(2026, 12, 1, 12, 0, tzinfo=dt.UTC)
KEY = StorageKey(bot_id=42, chat_id=900, user_id=900)


class Broadcast(StatesGroup):
    text = State()


@pytest.fixture
async def second_db(fresh_database: str) -> AsyncIterator[Database]:
    """A second pool on the same database: another process, as far as the data can tell."""
    other = await Database.open(DatabaseSettings(dsn=fresh_database, pool_size=2))
    try:
        yield other
    finally:
        with trio.CancelScope(shield=True):
            await other.close()


async def _rows(tx: Tx) -> int:
    return int(await tx.fetchval("SELECT count(*) FROM conversation_state"))


async def test_state_and_data_written_by_one_process_are_read_by_another(
    db: Database, second_db: Database
) -> None:
    clock = Clock(NOW)
    one, two = PostgresFsmStorage(lambda: db, clock), PostgresFsmStorage(lambda: second_db, clock)
    assert await two.get_state(KEY) is None and await two.get_data(KEY) == {}

    await one.set_state(KEY, Broadcast.text)
    await one.update_data(KEY, {"segment": "active", "preview_id": 17})
    assert await two.get_state(KEY) == "Broadcast:text"
    assert await two.get_data(KEY) == {"segment": "active", "preview_id": 17}
    other_user = StorageKey(bot_id=42, chat_id=901, user_id=901)
    assert await two.get_state(other_user) is None

    await two.set_state(KEY, None)  # the conversation ends on the other process
    assert await one.get_state(KEY) is None
    assert await one.get_data(KEY) == {"segment": "active", "preview_id": 17}  # data stays until cleared
    await one.set_data(KEY, {})
    assert await db.run(_rows) == 0  # an empty conversation leaves no row


async def test_data_that_is_not_json_or_too_big_is_refused_and_nothing_is_written(db: Database) -> None:
    storage = PostgresFsmStorage(lambda: db, Clock(NOW))
    with pytest.raises(ValueError, match="must be JSON"):
        await storage.set_data(KEY, {"when": dt.datetime(2026, 1, 1)})
    with pytest.raises(ValueError, match="over 16384 bytes"):
        await storage.set_data(KEY, {"text": "x" * 20_000})
    assert await db.run(_rows) == 0
