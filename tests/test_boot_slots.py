"""The lab's boot slots (lab/boot_slots.py) on a real event loop: weights by
vCPUs, first come first served, and nothing lost to a cancelled waiter."""

from __future__ import annotations

import asyncio

import pytest

from bridgelab.lab.boot_slots import BootSlot, BootSlots


async def pending(task: asyncio.Task[int]) -> bool:
    await asyncio.sleep(0.02)
    return not task.done()


def test_guests_take_as_many_slots_as_they_have_vcpus():
    async def go() -> None:
        slots = BootSlots(4)
        assert await slots.acquire(1) == 1
        assert await slots.acquire(2) == 2
        third = asyncio.create_task(slots.acquire(2))
        assert await pending(third)  # one left, two wanted
        slots.release(1)
        assert await asyncio.wait_for(third, 1) == 2 and slots.free == 0
    asyncio.run(go())


def test_a_guest_larger_than_the_lab_takes_every_slot_and_still_boots():
    async def go() -> None:
        slots = BootSlots(2)
        assert await asyncio.wait_for(slots.acquire(8), 1) == 2
        small = asyncio.create_task(slots.acquire(1))
        assert await pending(small)
        slots.release(2)
        assert await asyncio.wait_for(small, 1) == 1
    asyncio.run(go())


def test_a_large_guest_first_in_line_is_not_passed_over_by_small_ones():
    async def go() -> None:
        slots = BootSlots(2)
        await slots.acquire(1)
        large = asyncio.create_task(slots.acquire(2))
        assert await pending(large)
        small = asyncio.create_task(slots.acquire(1))
        assert await pending(small)  # one slot is free, but the large guest came first
        slots.release(1)
        assert await asyncio.wait_for(large, 1) == 2
        assert await pending(small)
        slots.release(2)
        assert await asyncio.wait_for(small, 1) == 1
    asyncio.run(go())


def test_a_waiter_cancelled_in_line_lets_the_ones_behind_it_on():
    """A guest stopped while it waits must neither keep a slot nor hold up
    the smaller guests queued behind it."""
    async def go() -> None:
        slots = BootSlots(2)
        await slots.acquire(1)
        large = asyncio.create_task(slots.acquire(2))
        small = asyncio.create_task(slots.acquire(1))
        assert await pending(large) and await pending(small)
        large.cancel()
        assert await asyncio.wait_for(small, 1) == 1
        with pytest.raises(asyncio.CancelledError):
            await large
        assert slots.free == 0 and slots.waiting == 0
    asyncio.run(go())


def test_a_boot_slot_is_taken_once_and_given_back_once():
    async def go() -> None:
        slots = BootSlots(2)
        seen: list[str] = []
        slot = BootSlot(slots, 2, lambda: seen.append("taken"))
        await slot.take()
        await slot.take()
        assert slots.free == 0 and seen == ["taken"]
        slot.give_back()
        slot.give_back()  # at the prompt, then in the boot's finally
        assert slots.free == 2
        BootSlot(slots, 1).give_back()  # never taken: nothing to give
        assert slots.free == 2
    asyncio.run(go())
