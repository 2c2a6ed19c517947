"""Forward-only SQL migrations, applied in order, once, under an advisory lock.

Files live in ``atlas/storage/migrations/NNNN_name.sql``. Applying them is one unit of work: take a
transaction-scoped advisory lock, read what ``schema_migrations`` says is applied, apply the rest in
order and record each with its checksum. PostgreSQL's DDL is transactional, so a failing migration
leaves nothing behind, and a second process that runs ``migrate`` at the same moment waits on the
lock and then finds nothing left to do.

A file whose checksum differs from the recorded one means somebody edited an applied migration; that
is refused with :class:`MigrationError` rather than silently ignored (forward-only: write a new one).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import re
from dataclasses import dataclass
from importlib import resources

from atlas.storage.database import Database
from atlas.storage.errors import MigrationError
from atlas.storage.tx import Tx

# pg_advisory_xact_lock key: the first 8 bytes of sha256("atlas.migrations") as a signed bigint.
MIGRATION_LOCK_KEY = int.from_bytes(hashlib.sha256(b"atlas.migrations").digest()[:8], "big", signed=True)
_NAME = re.compile(r"^(\d{4})_[a-z0-9_]+\.sql$")


@dataclass(frozen=True, slots=True)
class Migration:
    """One migration file: its version (the 4-digit prefix), name, SQL and checksum."""

    version: int
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        """sha256 of the SQL text: detects edits to applied migrations."""
        return hashlib.sha256(self.sql.encode()).hexdigest()


def bundled_migrations() -> list[Migration]:
    """Load the migrations shipped in the package, ordered by version; reject malformed names."""
    folder = resources.files("atlas.storage").joinpath("migrations")
    found: list[Migration] = []
    for entry in folder.iterdir():
        if not entry.name.endswith(".sql"):
            continue
        match = _NAME.match(entry.name)
        if match is None:
            raise MigrationError(f"migration file name {entry.name!r} is not NNNN_lower_snake.sql")
        found.append(Migration(int(match.group(1)), entry.name, entry.read_text(encoding="utf-8")))
    found.sort(key=lambda m: m.version)
    versions = [m.version for m in found]
    if len(set(versions)) != len(versions):
        raise MigrationError(f"two migration files share a version: {sorted(versions)}")
    return found


async def _apply(tx: Tx, *, migrations: list[Migration], now: dt.datetime) -> list[str]:
    await tx.execute("SELECT pg_advisory_xact_lock($1)", MIGRATION_LOCK_KEY)
    await tx.execute(
        """
        CREATE TABLE IF NOT EXISTS schema_migrations (
            version integer PRIMARY KEY,
            name text NOT NULL,
            checksum text NOT NULL,
            applied_at timestamptz NOT NULL
        )
        """
    )
    rows = await tx.fetch(
        "SELECT version, name, checksum FROM schema_migrations ORDER BY version",
        bounded_by="one row per migration file shipped",
    )
    applied = {row["version"]: row for row in rows}
    known = {m.version for m in migrations}
    unknown = sorted(set(applied) - known)
    if unknown:
        raise MigrationError(f"database has migrations this version of Atlas does not know: {unknown}")
    done: list[str] = []
    for migration in migrations:
        row = applied.get(migration.version)
        if row is not None:
            if row["checksum"] != migration.checksum:
                raise MigrationError(
                    f"migration {migration.name} was edited after it was applied "
                    "(checksum differs); write a new migration instead"
                )
            continue
        await tx.execute(migration.sql)
        await tx.execute(
            "INSERT INTO schema_migrations (version, name, checksum, applied_at) VALUES ($1, $2, $3, $4)",
            migration.version,
            migration.name,
            migration.checksum,
            now,
        )
        done.append(migration.name)
    return done


async def migrate(db: Database, *, now: dt.datetime, migrations: list[Migration] | None = None) -> list[str]:
    """Apply every pending migration; return the names applied (empty when up to date).

    ``now`` is the business time recorded as ``applied_at`` (the caller's ``clock.now()``).
    """
    chosen = migrations if migrations is not None else bundled_migrations()
    return await db.run(_apply, migrations=chosen, now=now)
