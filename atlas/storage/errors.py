"""Storage errors, named by who caused them.

::

    StorageError
    ├── BudgetExhausted        busy: no connection token within the acquire deadline
    ├── TxClosed               you: a ``tx`` was used after its unit of work ended
    ├── UnboundedFetch         you: ``tx.fetch`` of a query with no LIMIT and no declared bound
    ├── DatabaseUnavailable    it broke: the server could not be reached or dropped the connection
    ├── TransactionConflict    busy: serialization failure or deadlock, still failing after retries
    └── MigrationError         the migration files and the database disagree

Errors raised by a unit of work itself (a domain error, a unique violation it did not expect) pass
through ``db.run`` unchanged after the transaction is rolled back.
"""

from __future__ import annotations


class StorageError(Exception):
    """Base of every error the storage layer raises itself."""


class BudgetExhausted(StorageError):
    """No connection token could be borrowed before the acquire deadline."""


class TxClosed(StorageError):
    """A transaction handle was used after its unit of work had ended."""


class UnboundedFetch(StorageError):
    """``tx.fetch`` was given a query that has no LIMIT and no declared bound."""


class DatabaseUnavailable(StorageError):
    """The database server could not be reached, or it dropped the connection."""


class TransactionConflict(StorageError):
    """A serialization failure or deadlock persisted after the configured retries."""


class MigrationError(StorageError):
    """The migration files and the database's migration record disagree."""
