"""aiogram FSM storage in PostgreSQL, for several processes behind one webhook.

With long polling one process (the holder of the polling lock) receives every update, so aiogram's
``MemoryStorage`` sees every conversation. Behind a webhook load balancer the next message of a
conversation ("now send the broadcast text") may reach another process, which would not know it:
:class:`PostgresFsmStorage` keeps the state in ``conversation_state`` instead (one short unit per
read or write).

Cost: aiogram reads the state of every update (``FSMContextMiddleware``), so this adds one unit per
update; it is used only in webhook mode, where it is needed (docs/architecture.md).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from aiogram.fsm.state import State
from aiogram.fsm.storage.base import BaseStorage, StateType, StorageKey

from atlas.clock import Clock
from atlas.storage import Database
from atlas.storage.units.conversation import (
    ConversationKey,
    conversation_data,
    conversation_state,
    set_conversation_data,
    set_conversation_state,
)


def _key(key: StorageKey) -> ConversationKey:
    return ConversationKey(
        bot_id=key.bot_id,
        chat_id=key.chat_id,
        user_id=key.user_id,
        thread_id=key.thread_id or 0,
        business_connection_id=key.business_connection_id or "",
        destiny=key.destiny,
    )


class PostgresFsmStorage(BaseStorage):
    """``BaseStorage`` over ``db.run``; every method is one unit of work."""

    def __init__(self, db: Callable[[], Database], clock: Clock) -> None:
        self._db = db
        self._clock = clock

    async def set_state(self, key: StorageKey, state: StateType = None) -> None:
        """Set or clear the conversation's state."""
        value = state.state if isinstance(state, State) else state
        await self._db().run(set_conversation_state, key=_key(key), state=value, now=self._clock.now())

    async def get_state(self, key: StorageKey) -> str | None:
        """The conversation's state, or None."""
        return await self._db().run(conversation_state, key=_key(key))

    async def set_data(self, key: StorageKey, data: Mapping[str, Any]) -> None:
        """Replace the conversation's data (JSON values only: ``ValueError`` otherwise)."""
        await self._db().run(set_conversation_data, key=_key(key), data=data, now=self._clock.now())

    async def get_data(self, key: StorageKey) -> dict[str, Any]:
        """The conversation's data (empty when none)."""
        return await self._db().run(conversation_data, key=_key(key))

    async def close(self) -> None:
        """Nothing to close: the pool belongs to the storage child."""
