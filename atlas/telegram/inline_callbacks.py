"""Sync aiogram callbacks called inline: the one adaptation aiogram needs to run from trio tasks.

aiogram 3.31's ``CallableObject.call`` (``aiogram/dispatcher/event/handler.py``) awaits a coroutine
callback directly but runs every *sync* one through ``asyncio.to_thread``. Sync callbacks on our path
are the magic filters (``F.data == "..."``, ``F.successful_payment``, ``~F.text.startswith("/")``)
and the odd sync handler. From a trio task that cannot work (``to_thread`` hands back an asyncio
future, which trio cannot await), and even on an asyncio loop it would be a thread hop per filter
per update for what is a pure predicate over the event.

:func:`call_sync_callbacks_inline` walks a router tree once, when the dispatcher is built
(:func:`atlas.telegram.wiring.build_dispatcher`), and turns every sync callback into a coroutine
function that calls it inline. It walks every router's observers (their handlers, the handlers'
filters, the observer-level filters set with ``router.message.filter(...)``) and the filters nested
in aiogram's logic filters (``and_f``, ``or_f``, ``invert_f``, ``~SomeFilter()``). The object's
``params``/``varkw`` (what aiogram passes it by name) were computed from the original callback and
stay as they were.

Rejected alternatives: patching ``CallableObject.call`` for the whole process (every aiogram user
in the process would change behaviour, tests included, and nothing would show it was done), and
a ``trio.to_thread`` hop (a thread per filter per update, for a predicate).

The contract this relies on: **a sync callback must be quick and must not block** (it now runs on
the scheduler). Anything that does I/O is an ``async def``. A handler registered *after*
``build_dispatcher`` is not adapted; :func:`sync_callbacks` finds such leftovers (tests use it).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from aiogram import Router
from aiogram.dispatcher.event.handler import CallableObject, FilterObject, HandlerObject
from aiogram.filters.logic import _AndFilter, _InvertFilter, _OrFilter


def _inline(callback: Callable[..., Any]) -> Callable[..., Any]:
    async def call_inline(*args: Any, **kwargs: Any) -> Any:
        return callback(*args, **kwargs)

    call_inline.__qualname__ = f"inline[{getattr(callback, '__qualname__', repr(callback))}]"
    return call_inline


def _callables(router: Router) -> Iterator[CallableObject]:
    """Every ``CallableObject`` aiogram may call for ``router`` and the routers below it."""
    for each in router.chain_tail:
        for observer in each.observers.values():
            # The observer's own HandlerObject only carries the router-level filters; aiogram
            # checks them and never calls its callback.
            for found in observer._handler.filters or ():
                yield from _filter_tree(found)
            for handler in observer.handlers:
                yield from _with_filters(handler)


def _with_filters(handler: HandlerObject) -> Iterator[CallableObject]:
    yield handler
    for found in handler.filters or ():
        yield from _filter_tree(found)


def _filter_tree(found: FilterObject) -> Iterator[CallableObject]:
    yield found
    callback = found.callback
    if isinstance(callback, _InvertFilter):
        yield from _filter_tree(callback.target)
    elif isinstance(callback, _AndFilter | _OrFilter):
        for target in callback.targets:
            yield from _filter_tree(target)


def call_sync_callbacks_inline(router: Router) -> int:
    """Make every sync handler and filter under ``router`` a coroutine that calls it inline.

    Returns how many were adapted. Idempotent: an adapted callback is awaitable and left alone.
    """
    adapted = 0
    for callable_object in _callables(router):
        if not callable_object.awaitable:
            callable_object.callback = _inline(callable_object.callback)
            callable_object.awaitable = True
            adapted += 1
    return adapted


def sync_callbacks(router: Router) -> list[Callable[..., Any]]:
    """The callbacks under ``router`` that aiogram would still run through ``asyncio.to_thread``."""
    return [each.callback for each in _callables(router) if not each.awaitable]
