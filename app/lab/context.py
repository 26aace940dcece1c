"""What the parts of a running lab share: the plan as it now stands, the
guests, the declared state, the console thread pool and the change events."""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from typing import Any, AsyncIterator, Awaitable, Callable, TypeVar

from ..errors import GuestBusy, UnknownGuest
from ..guest.shell import GuestShell
from ..guest.process import GuestProcess
from ..host.ledger import Ledger
from ..model import declared
from ..model.plan import GuestPlan, LabPlan
from ..model.spec import Lab
from ..settings import current
from .boot_slots import BootSlots, boot_concurrency
from .guest_runtime import GuestRuntime
from .host_side import HostSide
from .loader import LabSource
from .states import HAS_SHELL, ON_THE_WAY

log = logging.getLogger(__name__)
T = TypeVar("T")
ProcessFactory = Callable[[GuestPlan, Ledger], GuestProcess]  # tests hand in a fake qemu


def configure_concurrency() -> int:
    return current().configure_concurrency or os.cpu_count() or 1


async def _nothing_to_wait_for(g: GuestRuntime) -> None:
    return None


class LabContext:
    def __init__(self, plan: LabPlan, source: LabSource, host: HostSide, shutdown_timeout: float,
                 process_factory: ProcessFactory = GuestProcess, cold: bool = False):
        self.plan = plan
        self.cold = cold  # serve --cold: boot every guest, whatever snapshots it has
        self._process_factory = process_factory
        self.source = source
        self.spec: Lab = declared.freeze(source.spec, plan)
        self.stopped_by_request: set[str] = set(source.stopped)
        self.host = host
        self.shutdown_timeout = shutdown_timeout
        self.guests: dict[str, GuestRuntime] = {}
        # Consoles block in threads; exec runs in parallel across guests.
        self.pool = ThreadPoolExecutor(max_workers=64, thread_name_prefix="console")
        self.settled = asyncio.Event()
        self.change = asyncio.Event()
        self.generation = 0
        self.stopping = False
        self.configure_slots = asyncio.Semaphore(configure_concurrency())
        self.boot_slots = BootSlots(boot_concurrency())
        # Awaited before a guest is configured with its address (or, restored,
        # made ready with it): the peers' clashes (peering.py), when there are peers.
        self.before_configure: Callable[[GuestRuntime], Awaitable[None]] = _nothing_to_wait_for
        self.before_boot: Callable[[GuestRuntime], Awaitable[None]] = _nothing_to_wait_for
        # What peer hosts already hold of a name, address and MAC (runtime changes).
        self.taken_by_peers: Callable[[str, ipaddress.IPv4Address, str | None], list[tuple[str, str]]] = \
            lambda *_: []

    def notify(self) -> None:
        """Wake every long-poll waiter; each re-checks its own condition. The
        generation tells the API's views they are out of date."""
        self.generation += 1
        self.change.set()
        self.change = asyncio.Event()

    async def in_thread(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self.pool, fn, *args)

    def new_process(self, g: GuestPlan) -> GuestProcess:
        assert self.host.ledger is not None, "the host side is set up first"
        return self._process_factory(g, self.host.ledger)

    def runtime(self, g: GuestPlan) -> GuestRuntime:
        return GuestRuntime(plan=g, process=self.new_process(g), on_change=self.notify)

    def persist(self) -> None:
        declared.save(self.plan.state_dir, self.source.source_hash, self.spec, self.stopped_by_request)

    def get(self, name: str) -> GuestRuntime:
        g = self.guests.get(name)
        if g is None:
            raise UnknownGuest(f"no guest named {name!r}")
        return g

    def check_settled(self) -> None:
        if not any(g.state in ON_THE_WAY for g in self.guests.values()):
            self.settled.set()

    @staticmethod
    @contextlib.asynccontextmanager
    async def operating(g: GuestRuntime) -> AsyncIterator[None]:
        """One change at a time per guest: a second request gets 409, not a queue."""
        if g.op_lock.locked():
            raise GuestBusy(f"guest {g.plan.name} is busy with another request")
        async with g.op_lock:
            yield

    @staticmethod
    def require_shell(g: GuestRuntime) -> GuestShell:
        if g.state not in HAS_SHELL or g.shell is None:
            raise GuestBusy(f"guest {g.plan.name} is {g.state.value}; it must be ready")
        return g.shell


__all__ = ["LabContext"]
