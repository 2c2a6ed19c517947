"""The storage loop: asyncpg's own asyncio loop in a thread, and the one handoff to and from trio.

What ``db.run`` relies on: results and errors come back unchanged; cancelling the trio caller
cancels the asyncio task and returns only after that task has really ended (a call in a cancelled
scope never starts it); the loop is a real
uvloop loop in another thread (not trio-asyncio's); a closed loop refuses calls with a clear error.
"""

from __future__ import annotations

import asyncio
import contextvars
import threading

import pytest
import trio
import uvloop

from atlas.storage.loop import StorageLoop, StorageLoopClosed

_marker: contextvars.ContextVar[str] = contextvars.ContextVar("marker", default="unset")


async def test_results_errors_thread_and_loop_kind() -> None:
    loop = await StorageLoop.start()
    try:

        async def where() -> tuple[str, str, str]:
            running = asyncio.get_running_loop()
            await asyncio.sleep(0)
            return threading.current_thread().name, type(running).__module__, _marker.get()

        async def fails() -> None:
            await asyncio.sleep(0)
            raise KeyError("from the storage loop")

        _marker.set("set in trio")
        thread, loop_module, seen = await loop.call(where)
        assert thread == "atlas-storage" != threading.current_thread().name
        assert loop_module == uvloop.Loop.__module__  # asyncpg's loop is uvloop, not trio-asyncio's
        assert seen == "set in trio"  # the caller's context flows into the task
        with pytest.raises(KeyError, match="from the storage loop"):
            await loop.call(fails)
        assert loop.calls == 2
    finally:
        await loop.close()


async def test_cancelling_the_caller_waits_for_the_task_to_end() -> None:
    loop = await StorageLoop.start()
    events: list[str] = []
    try:
        started = trio.Event()
        token = trio.lowlevel.current_trio_token()

        async def slow_to_unwind() -> None:
            token.run_sync_soon(started.set)
            try:
                await asyncio.sleep(30)
            except asyncio.CancelledError:
                events.append("task cancelled")
                await asyncio.sleep(0.2)  # the rollback a real unit does on cancellation
                events.append("task ended")
                raise

        with trio.move_on_after(5) as scope:
            async with trio.open_nursery() as nursery:

                async def caller() -> None:
                    try:
                        await loop.call(slow_to_unwind)
                    except trio.Cancelled:
                        events.append("caller cancelled")
                        raise

                nursery.start_soon(caller)
                await started.wait()
                nursery.cancel_scope.cancel()
        assert not scope.cancelled_caught
        assert events == ["task cancelled", "task ended", "caller cancelled"]
    finally:
        await loop.close()


async def test_a_call_in_a_cancelled_scope_never_runs_the_coroutine() -> None:
    loop = await StorageLoop.start()
    ran: list[bool] = []
    try:

        async def unit() -> None:
            ran.append(True)

        with trio.CancelScope() as scope:
            scope.cancel()
            await loop.call(unit)
        assert scope.cancelled_caught
        assert ran == []
        await loop.call(unit)  # the loop is still fine afterwards
        assert ran == [True]
    finally:
        await loop.close()


async def test_a_closed_loop_refuses_calls() -> None:
    loop = await StorageLoop.start()
    await loop.close()
    assert not loop.running

    async def anything() -> None:
        return None

    with pytest.raises(StorageLoopClosed, match="not running"):
        await loop.call(anything)
    await loop.close()  # closing twice is harmless
