"""A guest's turn at the lab's bring-up slots (lab/turns.py), on a real
asyncio semaphore."""

from __future__ import annotations

import asyncio

from bridgelab.lab.turns import Turn


def test_a_guest_holds_one_slot_however_often_it_asks():
    async def go() -> None:
        slots = asyncio.Semaphore(2)
        taken: list[str] = []
        a = Turn(slots, lambda: taken.append("a"))
        await asyncio.gather(a.take(), a.take())  # its login and its agent at once
        await a.take()
        assert a.held and taken == ["a"]
        b = Turn(slots)
        await asyncio.wait_for(b.take(), 1)  # the second slot is still free
        a.end()
        a.end()
        b.end()
        assert not slots.locked() and slots._value == 2  # nothing released twice
    asyncio.run(go())


def test_the_next_guest_waits_until_a_turn_ends():
    async def go() -> None:
        slots = asyncio.Semaphore(1)
        first, second = Turn(slots), Turn(slots)
        await first.take()
        waiting = asyncio.create_task(second.take())
        await asyncio.sleep(0.05)
        assert not waiting.done() and not second.held
        first.end()
        await asyncio.wait_for(waiting, 1)
        assert second.held
        second.end()
    asyncio.run(go())


def test_a_turn_that_ends_while_waiting_leaves_the_slot_free():
    """A guest that fails (or is stopped) while it waits for a slot must not
    keep the slot it would have got: the lab would lose one for good."""
    async def go() -> None:
        slots = asyncio.Semaphore(1)
        holder, gone, later = Turn(slots), Turn(slots), Turn(slots)
        await holder.take()
        waiting = asyncio.create_task(gone.take())
        await asyncio.sleep(0.05)
        gone.end()
        holder.end()
        await asyncio.wait_for(waiting, 1)
        assert not gone.held
        await asyncio.wait_for(later.take(), 1)
        cancelled = Turn(slots)
        task = asyncio.create_task(cancelled.take())
        await asyncio.sleep(0.05)
        task.cancel()
        later.end()
        await asyncio.wait_for(Turn(slots).take(), 1)
    asyncio.run(go())
