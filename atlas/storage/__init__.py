"""The only package that touches asyncpg: pool, connection budget, units of work, migrations.

Everything else reaches the database through ``await db.run(unit, **kwargs)``; see
:mod:`atlas.storage.database` for the contract.
"""

from atlas.storage.budget import BudgetStatistics as BudgetStatistics
from atlas.storage.budget import ConnectionBudget as ConnectionBudget
from atlas.storage.combiner import CombinerStatistics as CombinerStatistics
from atlas.storage.combiner import UnitCombiner as UnitCombiner
from atlas.storage.combiner import combiner_for as combiner_for
from atlas.storage.database import Database as Database
from atlas.storage.database import DatabaseSettings as DatabaseSettings
from atlas.storage.database import UnitOfWork as UnitOfWork
from atlas.storage.embedded import EmbeddedPostgres as EmbeddedPostgres
from atlas.storage.embedded import EmbeddedPostgresError as EmbeddedPostgresError
from atlas.storage.errors import BudgetExhausted as BudgetExhausted
from atlas.storage.errors import DatabaseUnavailable as DatabaseUnavailable
from atlas.storage.errors import MigrationError as MigrationError
from atlas.storage.errors import StorageError as StorageError
from atlas.storage.errors import TransactionConflict as TransactionConflict
from atlas.storage.errors import TxClosed as TxClosed
from atlas.storage.errors import UnboundedFetch as UnboundedFetch
from atlas.storage.migrations import bundled_migrations as bundled_migrations
from atlas.storage.migrations import migrate as migrate
from atlas.storage.tx import Tx as Tx
from atlas.storage.tx import transaction_settings as transaction_settings
