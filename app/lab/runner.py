"""The lab runner: the one owner of the lab's host side, guests and consoles,
as a small facade over parts with one job each:

- `HostSide` (host_side.py): lock, bridge, taps, firewall, uplink; one teardown;
- `Lifecycle` (lifecycle.py): bring-up, reboot, stop, start;
- `Topology` (topology.py): add, remove, a new address, the declared state;
- `Probes` (probes.py): the mesh and the uplink, from inside the guests;
- `Exec` (exec.py): commands in a guest, by agent or console;
- `Snapshots` (snapshots.py): save, restore, list, delete; warm starts;
- `Peering` (peering.py): the other hosts of a lab with peers, and their clashes.

They share a `LabContext` (context.py). The API maps onto this class;
its views are built at the API edge (api/views.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any, Coroutine, Iterator

from ..errors import NoPeers
from .reports import ExecResult, MeshReport, UplinkProbe
from .requests import AddGuest, ExecRequest, NetworkRequest
from ..guest.process import GuestProcess
from ..model.plan import LabPlan
from .context import LabContext, ProcessFactory
from .exec import Exec
from .guest_runtime import GuestRuntime
from .host_side import HostSide
from .lifecycle import Lifecycle
from .loader import LabSource
from .peering import Peering
from .probes import Probes
from .snapshots import SnapshotInfo, Snapshots
from .topology import Topology

log = logging.getLogger(__name__)


class LabRunner:
    def __init__(self, plan: LabPlan, source: LabSource, shutdown_timeout: float = 30.0,
                 host: HostSide | None = None, process_factory: ProcessFactory = GuestProcess, cold: bool = False,
                 peer_token: str | None = None):
        """`host` and `process_factory` are seams for the in-process tests;
        `cold` boots every guest even when it has a valid ready snapshot;
        `peer_token`: what this daemon shows its peers (their token is its own)."""
        self.ctx = LabContext(plan, source, host or HostSide(plan), shutdown_timeout, process_factory, cold)
        self.started_at = time.time()
        self.peering = Peering(self.ctx, peer_token) if plan.overlay is not None else None
        if self.peering is not None:
            self.ctx.before_configure = self.peering.clear
            self.ctx.before_boot = self.peering.precheck
            self.ctx.taken_by_peers = self.peering.taken
        self.probes = Probes(self.ctx, self.peering)
        self.snapshots = Snapshots(self.ctx)
        self.lifecycle = Lifecycle(self.ctx, self.snapshots, on_first_settled=self._after_first_settled)
        self.topology = Topology(self.ctx, self.lifecycle)
        self._exec = Exec(self.ctx)
        self._background: set[asyncio.Task[None]] = set()

    # The lab as it now stands (the API's views read these).
    @property
    def plan(self) -> LabPlan:
        return self.ctx.plan

    @property
    def guests(self) -> dict[str, GuestRuntime]:
        return self.ctx.guests

    @property
    def settled(self) -> bool:
        return self.ctx.settled.is_set()

    @property
    def firewall_hints(self) -> list[str]:
        return self.ctx.host.firewall_hints

    @contextlib.contextmanager
    def hosted(self) -> Iterator[None]:
        """The host side for as long as the daemon runs: built on entry (after a
        sweep), undone on exit, whatever happened in between."""
        try:
            with self.ctx.host:
                self.topology.adopt_plan()
                yield
        finally:
            self._release_guest_files()

    def _release_guest_files(self) -> None:
        # Overlays stay for inspection (and `qemu-img check`); the next start
        # replaces them. Sockets are dead once qemu is gone.
        for g in self.ctx.plan.guests:
            for f in g.paths.sockets:
                f.unlink(missing_ok=True)
        self.ctx.pool.shutdown(wait=False, cancel_futures=True)

    def start_guests(self) -> None:
        if self.peering is not None:
            self._in_background(self.peering.run())
        self.lifecycle.start_all()

    def _in_background(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(work)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def stop(self) -> None:
        """Power every guest down in parallel, bounded; quit or kill the rest."""
        self.ctx.stopping = True
        for t in self._background:
            t.cancel()
        await self.lifecycle.stop_all()

    def _after_first_settled(self) -> None:
        if self.ctx.plan.uplink is not None:
            self._in_background(self.probes.log_uplink_selftest())

    def get(self, name: str) -> GuestRuntime:
        return self.ctx.get(name)

    def peers(self) -> Peering:
        if self.peering is None:
            raise NoPeers("this lab has no peers (see `peers` in the lab file)")
        return self.peering

    async def wait(self, names: list[str] | None, timeout: float) -> tuple[bool, list[GuestRuntime]]:
        return await self.lifecycle.wait(names, timeout)

    async def exec(self, name: str, req: ExecRequest) -> ExecResult:
        return await self._exec.exec(name, req)

    async def set_network(self, name: str, req: NetworkRequest) -> GuestRuntime:
        return await self.topology.set_network(name, req)

    async def reboot(self, name: str) -> GuestRuntime:
        return await self.lifecycle.reboot(name)

    async def stop_guest(self, name: str) -> GuestRuntime:
        return await self.lifecycle.stop_guest(name)

    async def start_guest(self, name: str) -> GuestRuntime:
        return await self.lifecycle.start_guest(name)

    async def add_guest(self, req: AddGuest) -> GuestRuntime:
        return await self.topology.add_guest(req)

    async def remove_guest(self, name: str) -> None:
        await self.topology.remove_guest(name)

    async def mesh_check(self) -> MeshReport:
        return await self.probes.mesh_check()

    async def probe_uplink(self, g: GuestRuntime) -> UplinkProbe | None:
        return await self.probes.probe_uplink(g)

    # Snapshots: `names` empty means every guest of the lab, as one consistent state.
    def list_snapshots(self, names: list[str]) -> list[SnapshotInfo]:
        return [s for g in ([self.get(n) for n in names] or self.guests.values()) for s in self.snapshots.of(g)]

    async def save_snapshot(self, names: list[str], tag: str) -> list[SnapshotInfo]:
        return await self.snapshots.save(names, tag)

    async def restore_snapshot(self, names: list[str], tag: str) -> list[GuestRuntime]:
        return await self.lifecycle.restore(names, tag)

    async def delete_snapshot(self, names: list[str], tag: str) -> None:
        await self.snapshots.delete(names, tag)


__all__ = ["LabRunner", "LabSource"]
