"""The polling offset rule (issue 13), on trio's MockClock: confirm to Telegram only what was handled.

The offset is the lowest update id handed over and not handled, one past the last when all are
handled; ids recorded as handled are passed over in batch order; completions of ids this
watermark never saw (an earlier intake's hand-overs) do not move it.
"""

from __future__ import annotations

import pytest
import trio
import trio.testing

from atlas.telegram.watermark import HandledWatermark


def test_the_offset_is_the_lowest_update_not_yet_handled() -> None:
    mark = HandledWatermark()
    assert mark.offset is None  # nothing yet: Telegram starts from what it last had confirmed
    for update_id in (10, 11, 12, 13):
        mark.handed_over(update_id)
    assert (mark.offset, mark.unhandled) == (10, 4)
    mark.handled(12)
    mark.handled(11)
    assert mark.offset == 10  # 11 and 12 are done, but 10 is not: nothing may be confirmed
    assert mark.knows(11) and mark.knows(12) and not mark.knows(14)
    mark.handled(10)
    assert mark.offset == 13  # past 10, 11, 12 at once
    mark.handled(13)
    assert (mark.offset, mark.unhandled) == (14, 0)
    assert mark.knows(12)  # confirmed: below the offset
    mark.handled(13)  # a second report changes nothing
    assert mark.offset == 14


def test_completions_of_updates_it_never_saw_do_not_move_the_offset() -> None:
    mark = HandledWatermark()
    mark.handled(50)  # an earlier intake handed 50 over; this one has not seen it yet
    assert mark.offset is None and not mark.knows(40)
    mark.handed_over(40)
    mark.handled(50)
    assert mark.offset == 40


def test_recorded_updates_are_passed_over_in_batch_order() -> None:
    mark = HandledWatermark()
    mark.handed_over(5)
    mark.passed_over(6)  # a predecessor handled 6 (recorded); 5 was not handled
    mark.handed_over(7)
    assert mark.offset == 5 and mark.knows(6)
    mark.handled(5)
    assert mark.offset == 7
    mark.handled(7)
    mark.passed_over(8)
    assert mark.offset == 9


async def test_wait_moved_wakes_when_the_lowest_finishes_not_for_a_higher_one(
    autojump_clock: trio.testing.MockClock,
) -> None:
    mark = HandledWatermark()
    for update_id in (1, 2, 3):
        mark.handed_over(update_id)
    woke: list[tuple[float, bool]] = []
    start = trio.current_time()

    async def waiter() -> None:
        moved = await mark.wait_moved(1, within=10.0)
        woke.append((trio.current_time() - start, moved))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(waiter)
        await trio.sleep(1.0)
        mark.handled(3)  # a higher one: the offset stays at 1
        await trio.sleep(1.0)
        assert woke == []
        mark.handled(1)  # the lowest: the offset moves to 2
    assert woke == [(pytest.approx(2.0), True)]
    # Nothing moves within the bound: False after exactly ``within`` seconds.
    began = trio.current_time()
    assert await mark.wait_moved(2, within=0.25) is False
    assert trio.current_time() - began == pytest.approx(0.25)
    assert await mark.wait_moved(1, within=0.25) is True  # already moved: at once
