"""Opening the database the way settings say: an external server, or the embedded one.

``open_database`` is the single place that decides this, for ``atlas run`` and for the one-shot CLI
commands alike: with ``ATLAS_DATABASE_URL`` unset it starts (or reuses) the embedded server under
``ATLAS_DATA_DIR`` and stops it on the way out if this process started it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import trio

from atlas.runtime.settings import Settings
from atlas.storage import Database, DatabaseSettings, EmbeddedPostgres


def database_settings(settings: Settings, dsn: str) -> DatabaseSettings:
    """The storage layer's settings for ``dsn``, taken from the operator's settings."""
    return DatabaseSettings(
        dsn=dsn,
        pool_size=settings.db_pool_size,
        acquire_timeout=settings.db_acquire_timeout,
        unit_timeout=settings.db_unit_timeout,
        statement_timeout=settings.db_statement_timeout,
    )


@asynccontextmanager
async def database_server(settings: Settings) -> AsyncIterator[str]:
    """Yield the DSN to use; run the embedded server for the block when no URL is configured."""
    if settings.database_url is not None:
        yield settings.database_url.get_secret_value()
        return
    server = EmbeddedPostgres(settings.data_dir.resolve() / "postgres")
    dsn = await server.start()
    try:
        yield dsn
    finally:
        if server.started_here:
            with trio.CancelScope(shield=True):
                await server.stop()


@asynccontextmanager
async def open_database(settings: Settings) -> AsyncIterator[Database]:
    """Yield an open :class:`Database` (inside the asyncio bridge, which the caller opens)."""
    async with database_server(settings) as dsn:
        db = await Database.open(database_settings(settings, dsn))
        try:
            yield db
        finally:
            with trio.CancelScope(shield=True):
                await db.close()
