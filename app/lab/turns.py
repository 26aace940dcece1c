"""A guest's turn at the lab's login slots.

A console login is the costly part of a bring-up inside the guest (PAM, the
shell's start-up) and it runs against a timer: login(1) gives up after 60 s.
With 16 guests on 2 cores, 16 logins at once each get an eighth of a core
and time out; a few at a time finish each in seconds. So a guest takes one
slot (`LabContext.configure_slots`, BRIDGELAB_CONFIGURE_CONCURRENCY, default
one per core) before it types its user name, and holds it while it is
configured through that console. Booting, the mesh check and a
configuration through the guest agent take no slot: nothing in them has a
timer that the load can trip, and the agent may wait a long time for the
guest's network manager to start.
"""

from __future__ import annotations

import asyncio
from typing import Callable


class Turn:
    def __init__(self, slots: asyncio.Semaphore, on_taken: Callable[[], None] = lambda: None):
        self._slots = slots
        self._on_taken = on_taken  # the guest's "turn" stage
        self._lock = asyncio.Lock()  # the login and the agent may ask at once
        self._held = False
        self._over = False

    @property
    def held(self) -> bool:
        return self._held

    async def take(self) -> None:
        """Wait for a slot, once; later calls (and calls after `end`) return at once."""
        async with self._lock:
            if not self._held and not self._over:
                await self._slots.acquire()
                if self._over:  # ended while waiting: the slot is not ours to keep
                    self._slots.release()
                    return
                self._held = True
                self._on_taken()

    def end(self) -> None:
        """The guest is configured, or gave up: its slot goes to the next one."""
        self._over = True
        if self._held:
            self._held = False
            self._slots.release()


__all__ = ["Turn"]
