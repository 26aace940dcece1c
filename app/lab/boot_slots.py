"""The lab's boot slots: how many guest vCPUs boot at once.

Under TCG a booting vCPU keeps a host core busy, and the guest's clock is
the host's. With more booting vCPUs than cores each guest runs slower in
its own time: its timer ticks, RCU and systemd's job timers take a growing
share of what it gets, and the lab's total boot time grows faster than
the guest count (docs/benchmarks.md, the guest-count sweep). Booting them a
core's worth at a time gives each one the speed it has alone, and a guest
at its login prompt costs the host little.

So a cold boot's qemu starts paused, waits here for as many slots as it
has vCPUs (BRIDGELAB_BOOT_CONCURRENCY; default the host's cores), runs,
and gives them back at its login prompt, or when it fails or stops. Its
boot deadline starts when it runs. Waiters are served first come, first
served, so a guest with more vCPUs than the slots now free is not passed
over forever; one larger than the whole lab's slots takes them all.
"""

from __future__ import annotations

import asyncio
import collections
import os
from typing import Callable

from ..settings import current


def boot_concurrency() -> int:
    return current().boot_concurrency or os.cpu_count() or 1


class BootSlots:
    def __init__(self, capacity: int):
        self.capacity = max(1, capacity)
        self._free = self.capacity
        self._waiting: collections.deque[tuple[int, asyncio.Future[None]]] = collections.deque()

    @property
    def free(self) -> int:
        return self._free

    @property
    def waiting(self) -> int:
        return sum(1 for _, f in self._waiting if not f.done())

    def weight(self, vcpus: int) -> int:
        return min(max(1, vcpus), self.capacity)

    async def acquire(self, vcpus: int) -> int:
        """Wait for the slots of a guest with `vcpus` vCPUs; returns how many
        were taken (what `release` gives back)."""
        n = self.weight(vcpus)
        if not self._waiting and self._free >= n:
            self._free -= n
            return n
        granted: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiting.append((n, granted))
        try:
            await granted
        except asyncio.CancelledError:
            if granted.done() and not granted.cancelled():
                self.release(n)  # granted in the same turn of the loop as the cancel
            else:
                self._waiting.remove((n, granted))
                self._grant()  # a large waiter at the head may have held up smaller ones
            raise
        return n

    def release(self, n: int) -> None:
        self._free = min(self.capacity, self._free + n)
        self._grant()

    def _grant(self) -> None:
        while self._waiting:
            n, granted = self._waiting[0]
            if granted.done():
                self._waiting.popleft()
                continue
            if self._free < n:
                return
            self._waiting.popleft()
            self._free -= n
            granted.set_result(None)


class BootSlot:
    """One cold boot's hold on the slots: taken once before qemu runs,
    given back once (at the login prompt, or when the boot ends otherwise)."""

    def __init__(self, slots: BootSlots, vcpus: int, on_taken: Callable[[], None] = lambda: None):
        self._slots = slots
        self._vcpus = vcpus
        self._on_taken = on_taken
        self._held = 0

    async def take(self) -> None:
        if not self._held:
            self._held = await self._slots.acquire(self._vcpus)
            self._on_taken()

    def give_back(self) -> None:
        held, self._held = self._held, 0
        if held:
            self._slots.release(held)


__all__ = ["BootSlot", "BootSlots", "boot_concurrency"]
