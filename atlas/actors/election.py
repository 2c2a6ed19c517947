"""One leader among N processes: do a job only while holding a PostgreSQL advisory lock.

Some jobs must run in one process of a fleet at a time — not for safety of the rows (claims with
``SKIP LOCKED`` already keep two processes off the same row) but because of a limit that belongs
to the bot as a whole: Telegram's 30 messages/s and 1 message/s per chat are per *bot*, and two
senders pacing themselves each to 30/s reach 60/s together. The simplest shared budget is a single
spender: the process holding the advisory lock leads, the others stand by and try again every
``standby_retry`` seconds.

Why an advisory lock and not a lease row: a session lock goes away with its session, so a leader
that crashes (or is killed, or loses the network) releases it at once and a standby takes over
within ``standby_retry`` — without trusting the machines' clocks to agree, which a lease written
with each process's own clock would. The cost is one pooled connection held by the leader
(accounted in the connection budget; see :mod:`atlas.storage.locks`), none by a standby.

A leader that is alive but lost its session (the database restarted, the connection dropped)
finds out within ``check_every`` seconds (:func:`watch_lock` raises
:class:`~atlas.storage.locks.AdvisoryLockLost`), which ends its job and sends it back to stand
by (an outage, not a crash: no restart intensity is spent on it); a new leader waits
``quiet`` seconds after taking the lock before it starts, so the old one has stopped by then.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

import trio

from atlas.storage import Database
from atlas.storage.locks import AdvisoryLock, AdvisoryLockBusy, hold_advisory_lock, lock_outage

_log = logging.getLogger("atlas.actors.election")


async def watch_lock(lock: AdvisoryLock, check_every: float) -> None:
    """Check ``lock`` every ``check_every`` seconds; raise ``AdvisoryLockLost`` when it is gone."""
    while True:
        await trio.sleep(check_every)
        await lock.check()


async def lead_when_elected(
    db: Callable[[], Database],
    name: str,
    lead: Callable[[AdvisoryLock], Awaitable[None]],
    *,
    standby_retry: float,
    quiet: float,
    on_role: Callable[[str], None],
    on_wait: Callable[[str | None], None] | None = None,
) -> None:
    """Stand by until the lock ``name`` is free, then run ``lead(lock)`` while holding it.

    Returns when ``lead`` returns (the lock is released). ``lead``'s errors propagate; the
    caller's supervisor restarts it. A database outage does not: a lock that cannot be taken
    because the server is away, or a held one that is lost with its session, makes this process
    stand by and try again every ``standby_retry`` seconds (``on_wait("database")``, then
    ``on_wait(None)`` once the lock is taken again). ``on_role`` hears ``"standby"`` and
    ``"leader"`` as they change.
    """
    standing_by = False
    while True:
        try:
            async with hold_advisory_lock(db(), name) as lock:
                if on_wait is not None:
                    on_wait(None)
                _log.info("%s: this process leads (lock taken); starting in %.1fs", name, quiet)
                on_role("leader")
                await trio.sleep(quiet)
                await lead(lock)
                return
        except AdvisoryLockBusy:
            if not standing_by:
                _log.info("%s: another process leads; standing by (retry every %gs)", name, standby_retry)
            standing_by = True
            on_role("standby")
            await trio.sleep(standby_retry)
        except BaseException as exc:
            outage = lock_outage(exc)
            if outage is None:
                raise
            # The database went away under the leader (or before it could lead): stand by and run
            # for election again once it answers, on this incarnation (see lock_outage).
            _log.warning("%s: the database is away (%s); trying again in %gs", name, outage, standby_retry)
            standing_by = False
            on_role("standby")
            if on_wait is not None:
                on_wait("database")
            await trio.sleep(standby_retry)
