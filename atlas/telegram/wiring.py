"""Building the aiogram root: feature routers in one ordered list, dependencies for handlers.

How a feature plugs in (the convention the screens follow):

* One router per feature, in its own module, built by a factory ``build_router() -> Router``.
  A factory and not a module-level router, because aiogram refuses to attach one router to two
  parents and every test builds its own Dispatcher.
* Callback data are ``CallbackData`` classes (``class BuyCb(CallbackData, prefix="buy")``): aiogram
  validates them at class definition and enforces the 64-byte limit on ``pack()``.
* The runtime passes the routers to :func:`build_dispatcher` in one list whose order is the order
  aiogram tries them; the list lives next to the features and says *why* each sits where it does
  (e.g. "admin before user screens: its filters are narrower"; "the fallback last: it matches
  everything").
* Handlers receive dependencies by parameter name: whatever is given to :func:`build_dispatcher` as
  keyword arguments (``db``, ``clock``, ``translator``, ``settings``...) plus aiogram's own
  (``bot``, ``state``, ``event_from_user``...).
* A handler that raises is caught by :class:`~atlas.telegram.dispatch.UpdateDispatcher`'s error
  boundary (apology + crash report). A feature that wants a gentler answer for a known error
  registers ``@router.errors(ExceptionTypeFilter(...))``: errors are events, and a handled one
  never reaches the boundary.
* Handlers never call ``start_polling`` / ``run_polling``; the intake feeds updates.
* Handlers and filters run in trio tasks (:mod:`atlas.telegram.dispatch`): a handler awaits
  ``db.run`` and the clients directly. A sync callback (a magic filter such as ``F.data == "x"``)
  is called inline, not in a thread (:mod:`atlas.telegram.inline_callbacks`), so it must be a quick
  pure predicate.
"""

from __future__ import annotations

from collections.abc import Sequence

from aiogram import Dispatcher, Router
from aiogram.fsm.storage.base import BaseStorage
from aiogram.fsm.storage.memory import MemoryStorage

from atlas.telegram.inline_callbacks import call_sync_callbacks_inline


def build_dispatcher(
    routers: Sequence[Router],
    *,
    storage: BaseStorage | None = None,
    **dependencies: object,
) -> Dispatcher:
    """The aiogram root with ``routers`` included in the given order.

    ``storage`` holds FSM state (in memory by default; it lives as long as the process).
    ``dependencies`` reach every handler and middleware by name. aiogram raises if a router is
    already attached elsewhere or included twice. Every sync handler and filter is made to run
    inline (see :mod:`atlas.telegram.inline_callbacks`); register handlers before calling this.
    """
    dispatcher = Dispatcher(storage=storage or MemoryStorage())
    # Workflow data is what aiogram passes to handlers by name; set after construction so that a
    # dependency can never be mistaken for one of Dispatcher's own keyword options.
    dispatcher.workflow_data.update(dependencies)
    for router in routers:
        dispatcher.include_router(router)
    call_sync_callbacks_inline(dispatcher)
    return dispatcher
