"""``lock_outage``: which failures of an advisory-lock holder are a database outage (wait) or a bug.

The outbox sender's election and the polling intake stand by and retry on an outage instead of
crashing (a PostgreSQL kill made ``workers`` give up otherwise: tests/test_fault_postgres_outage.py).
"""

from __future__ import annotations

import trio

from atlas.storage import BudgetExhausted, DatabaseUnavailable
from atlas.storage.locks import AdvisoryLockLost, lock_outage


def _cancelled() -> trio.Cancelled:
    # trio.Cancelled cannot be built directly; its private constructor is the test's only way.
    return trio.Cancelled._create()  # type: ignore[attr-defined, no-any-return]


def test_outages_alone_or_in_groups_with_cancelled_siblings_are_waited_out() -> None:
    lost = AdvisoryLockLost("outbox_sender:1", "ConnectionDoesNotExistError: closed")
    down = DatabaseUnavailable("advisory lock 'x': FileNotFoundError")
    busy = BudgetExhausted("no database connection within 2s")
    for error in (lost, down, busy):
        assert lock_outage(error) is error
    assert lock_outage(BaseExceptionGroup("lead", [lost, _cancelled()])) is lost
    assert lock_outage(ExceptionGroup("outer", [ExceptionGroup("inner", [down])])) is down


def test_anything_else_is_not_an_outage() -> None:
    bug = ValueError("a bug")
    assert lock_outage(bug) is None
    assert lock_outage(_cancelled()) is None
    assert lock_outage(ExceptionGroup("lead", [AdvisoryLockLost("x", "gone"), bug])) is None
    assert lock_outage(ExceptionGroup("lead", [bug])) is None
