"""The loop every batch worker shares: bounded batches, a time budget, a heartbeat between them.

Contract 3 of DESIGN.md: a tick works in bounded batches (each one unit of work, so each holds a
connection only for its own transaction), yields to the scheduler between batches, and stops when
its time budget is spent even if work remains — the next tick continues. The predecessor's workers
held one connection across a whole loop and fetched everything at once; this is the replacement.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import trio


@dataclass(frozen=True, slots=True)
class BatchRun:
    """What one tick did: how many batches ran, items they handled, and whether work may remain."""

    batches: int
    items: int
    exhausted_budget: bool


async def run_batches(
    step: Callable[[], Awaitable[tuple[int, bool]]],
    *,
    budget: float,
    heartbeat: Callable[[], None],
    max_batches: int = 10_000,
) -> BatchRun:
    """Call ``step`` until it says there is no more work, or ``budget`` seconds have passed.

    ``step`` returns ``(items handled, more work may remain)``. Cancellation propagates between
    steps; a step that raises ends the tick (the actor crashes and its supervisor decides).
    """
    deadline = trio.current_time() + budget
    batches = items = 0
    while batches < max_batches:
        handled, more = await step()
        batches += 1
        items += handled
        heartbeat()
        if not more:
            return BatchRun(batches, items, exhausted_budget=False)
        if trio.current_time() >= deadline:
            return BatchRun(batches, items, exhausted_budget=True)
        await trio.lowlevel.checkpoint()
    return BatchRun(batches, items, exhausted_budget=True)
