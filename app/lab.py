"""Orchestration: the one owner of the lab's host network, guests and consoles.

Per guest: booting -> login -> configuring -> verifying -> ready (or failed).
Guests move independently; the mesh check (each guest pings the bridge and
every other configured guest) waits until no guest is still on its way.
"""

from __future__ import annotations

import asyncio
import dataclasses
import fcntl
import ipaddress
import logging
import os
import time
from concurrent.futures import ThreadPoolExecutor
from enum import Enum
from pathlib import Path
from typing import Any, Callable, TypeVar

from . import firewall, guestnet, hostnet
from .console import Console, strip_escapes
from .errors import BridgelabError, FieldIssue, HostNetError, SpecError
from .guest import GuestProcess, tail
from .nmcli import NetConfig
from .plan import GuestPlan, LabPlan, check_new_ip
from .spec import NetworkRequest

log = logging.getLogger(__name__)
T = TypeVar("T")


class State(str, Enum):
    pending = "pending"
    booting = "booting"
    login = "login"
    configuring = "configuring"
    verifying = "verifying"
    ready = "ready"
    failed = "failed"
    stopping = "stopping"
    stopped = "stopped"


ON_THE_WAY = {State.pending, State.booting, State.login, State.configuring}


class GuestBusy(BridgelabError):
    """The guest is not in a state that allows the request (HTTP 409)."""


@dataclasses.dataclass
class GuestRuntime:
    plan: GuestPlan
    process: GuestProcess
    state: State = State.pending
    reason: str | None = None
    timestamps: dict[str, float] = dataclasses.field(default_factory=dict)
    mesh: dict[str, bool] = dataclasses.field(default_factory=dict)
    console: Console | None = None
    changed: bool | None = None  # did the last network configuration change anything?
    op_lock: asyncio.Lock = dataclasses.field(default_factory=asyncio.Lock)

    def enter(self, state: State) -> None:
        self.state = state
        self.timestamps[state.value] = time.time()
        log.info("guest %s: %s", self.plan.name, state.value)

    def fail(self, reason: str) -> None:
        if self.state in (State.stopping, State.stopped):
            return
        self.reason = reason
        self.enter(State.failed)
        log.error("guest %s failed: %s", self.plan.name, reason)

    def net_config(self) -> NetConfig:
        p = self.plan
        return NetConfig(mac=p.mac, address=p.ip, gateway=p.gateway, dns=p.dns)


class LabRunner:
    def __init__(self, plan: LabPlan, shutdown_timeout: float = 30.0):
        self.plan = plan
        self.shutdown_timeout = shutdown_timeout
        self.ledger: hostnet.Ledger | None = None  # opened once the lab is locked
        self.guests: dict[str, GuestRuntime] = {}
        self.started_at = time.time()
        self._lock_fd: int | None = None
        self._pool = ThreadPoolExecutor(max_workers=max(8, 3 * len(plan.guests)), thread_name_prefix="console")
        self._settled = asyncio.Event()
        self._announced = False
        self._tasks: list[asyncio.Task[None]] = []

    # ------------------------------------------------------------ host side (sync)

    def lock(self) -> None:
        """One daemon per lab: an flock on the state directory."""
        self.plan.state_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.plan.state_dir / "lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise HostNetError(f"another bridgelab owns lab {self.plan.name} ({self.plan.state_dir})") from None
        self._lock_fd = fd
        self.ledger = hostnet.Ledger(self.plan.state_dir / "ledger.json")

    def setup_host(self) -> None:
        assert self.ledger is not None, "lock() first"
        firewall.remove_recorded(self.ledger)
        hostnet.sweep(self.ledger, self._owner())
        net = hostnet.HostNet(self.ledger, self._owner())
        try:
            hostnet.apply(net, self.plan.bridge, self.plan.bridge_address, self.plan.bridge_mac,
                          [g.tap for g in self.plan.guests])
            firewall.allow_bridged(self.ledger, self.plan.bridge, self._owner())
        except BaseException:
            firewall.remove_recorded(self.ledger)
            net.teardown()
            raise
        finally:
            net.close()
        for g in self.plan.guests:
            self.guests[g.name] = GuestRuntime(plan=g, process=GuestProcess(g, self.ledger))

    def teardown_host(self) -> None:
        if self.ledger is None:
            return
        hostnet.kill_recorded_processes(self.ledger)
        firewall.remove_recorded(self.ledger)
        net = hostnet.HostNet(self.ledger, self._owner())
        try:
            net.teardown()
        finally:
            net.close()
        if not self.ledger.entries:
            self.ledger.path.unlink(missing_ok=True)
        # Overlays stay for inspection (and `qemu-img check`); the next start
        # replaces them. Sockets are dead once qemu is gone.
        for g in self.plan.guests:
            for f in (g.paths.console_sock, g.paths.qmp_sock):
                f.unlink(missing_ok=True)
        self._pool.shutdown(wait=False, cancel_futures=True)

    def _owner(self) -> str:
        return f"bridgelab lab={self.plan.name}"

    # ------------------------------------------------------------ guests (async)

    async def _in_thread(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)

    def start_guests(self) -> None:
        self._tasks = [asyncio.create_task(self._bring_up(g), name=f"up-{n}") for n, g in self.guests.items()]
        self._tasks += [asyncio.create_task(self._watch(g), name=f"watch-{n}") for n, g in self.guests.items()]

    async def _watch(self, g: GuestRuntime) -> None:
        """A qemu that dies on its own fails its guest, with qemu's own words."""
        while g.state not in (State.stopping, State.stopped):
            reason = g.process.exit_reason()
            if reason is not None:
                if g.state is not State.failed:
                    g.fail(reason)
                    self._check_settled()
                return
            await asyncio.sleep(0.5)

    async def _bring_up(self, g: GuestRuntime) -> None:
        g.enter(State.booting)
        try:
            await self._in_thread(g.process.prepare)
            g.process.spawn()
            await g.process.wait_sockets()
            g.console = await self._in_thread(Console.connect_unix, g.plan.paths.console_sock, g.plan.name,
                                              g.plan.paths.dir / "transcript.log")
            await self._login(g)
            g.enter(State.configuring)
            g.changed = await self._in_thread(guestnet.configure, g.console, g.net_config())
            g.timestamps["configured"] = time.time()
        except BridgelabError as e:
            self._fail_from(g, e)
        except Exception as e:  # a bug must still not take the other guests down
            log.exception("guest %s", g.plan.name)
            self._fail_from(g, e)
        if g.state is State.configuring:
            g.enter(State.verifying)  # configured; the mesh waits for the others
        self._check_settled()
        if g.state is State.verifying:
            await self._settled.wait()
            await self._verify_mesh(g)

    async def _login(self, g: GuestRuntime) -> None:
        loop = asyncio.get_running_loop()
        assert g.console is not None

        def prompt_seen() -> None:
            loop.call_soon_threadsafe(self._first_prompt, g)
        await self._in_thread(g.console.login, g.plan.login.user, g.plan.login.password,
                              g.plan.boot_timeout, 8.0, prompt_seen)

    @staticmethod
    def _first_prompt(g: GuestRuntime) -> None:
        if g.state is State.booting:
            g.enter(State.login)

    def _fail_from(self, g: GuestRuntime, e: BaseException) -> None:
        g.fail(g.process.exit_reason() or str(e) or type(e).__name__)

    def _check_settled(self) -> None:
        if not any(g.state in ON_THE_WAY for g in self.guests.values()):
            self._settled.set()

    def _peers(self, g: GuestRuntime) -> list[ipaddress.IPv4Address]:
        others = [o.plan.ip.ip for o in self.guests.values()
                  if o is not g and o.state in (State.verifying, State.ready)]
        return [self.plan.bridge_address.ip, *others]

    async def _verify_mesh(self, g: GuestRuntime) -> None:
        if g.state is not State.verifying:
            g.enter(State.verifying)
        assert g.console is not None
        try:
            g.mesh = await self._in_thread(guestnet.ping_all, g.console, self._peers(g))
        except BridgelabError as e:
            self._fail_from(g, e)
            return
        unreachable = [ip for ip, ok in g.mesh.items() if not ok]
        if unreachable:
            g.fail(f"cannot reach {', '.join(unreachable)} from {g.plan.ip.ip}")
        else:
            g.enter(State.ready)
        self._announce_once()

    def _announce_once(self) -> None:
        """One clear line when the lab first settles, for people reading logs."""
        if self._announced or any(g.state not in (State.ready, State.failed) for g in self.guests.values()):
            return
        self._announced = True
        parts = [f"{g.plan.name} {g.plan.ip.ip}" if g.state is State.ready else f"{g.plan.name} FAILED ({g.reason})"
                 for g in self.guests.values()]
        log.info("lab %s ready: %s (API: GET /guests)", self.plan.name, ", ".join(parts))

    async def wait_settled(self) -> None:
        await self._settled.wait()

    # ------------------------------------------------------------ API operations

    def get(self, name: str) -> GuestRuntime:
        g = self.guests.get(name)
        if g is None:
            raise KeyError(name)
        return g

    def _require_shell(self, g: GuestRuntime) -> Console:
        if g.state is not State.ready or g.console is None:
            raise GuestBusy(f"guest {g.plan.name} is {g.state.value}; it must be ready")
        return g.console

    async def set_network(self, name: str, req: NetworkRequest) -> GuestRuntime:
        g = self.get(name)
        bridge_net = self.plan.bridge_address.network
        issues = [FieldIssue("ip", p) for p in check_new_ip(self.plan, name, req.ip)]
        if req.gateway is not None and req.gateway not in bridge_net:
            issues.append(FieldIssue("gateway", f"gateway {req.gateway} is not on {bridge_net}"))
        if issues:
            raise SpecError(issues)
        if g.op_lock.locked():
            raise GuestBusy(f"guest {name} is busy with another request")
        async with g.op_lock:
            self._require_shell(g)
            # Reserve the address in the plan before the first await, so two
            # concurrent requests can never pick the same IP.
            new = dataclasses.replace(g.plan, ip=ipaddress.IPv4Interface(f"{req.ip}/{bridge_net.prefixlen}"),
                                      gateway=req.gateway or self.plan.bridge_address.ip, dns=tuple(req.dns))
            self._replace_plan(new)
            g.enter(State.configuring)
            try:
                g.changed = await self._in_thread(guestnet.configure, g.console, g.net_config())
            except BridgelabError as e:
                self._fail_from(g, e)
                return g
            await self._verify_mesh(g)
            return g

    async def reboot(self, name: str) -> GuestRuntime:
        """Reboot through the guest's own shell, log in again, and check that
        NetworkManager restored the address by itself (no reconfiguration)."""
        g = self.get(name)
        if g.op_lock.locked():
            raise GuestBusy(f"guest {name} is busy with another request")
        async with g.op_lock:
            console = self._require_shell(g)
            g.enter(State.booting)
            try:
                await self._in_thread(console.send_and_forget, "systemctl reboot")
                await self._login(g)
                g.enter(State.configuring)
                await self._in_thread(guestnet.verify, console, g.net_config())
            except BridgelabError as e:
                self._fail_from(g, e)
                return g
            await self._verify_mesh(g)
            return g

    def _replace_plan(self, new: GuestPlan) -> None:
        g = self.guests[new.name]
        g.plan = new
        self.plan = dataclasses.replace(self.plan, guests=tuple(new if p.name == new.name else p
                                                                for p in self.plan.guests))

    # ------------------------------------------------------------ shutdown

    async def stop(self) -> None:
        """Power every guest down in parallel, bounded; quit or kill the rest."""
        for g in self.guests.values():
            if g.state is not State.stopped:
                g.enter(State.stopping)
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*(self._stop_one(g) for g in self.guests.values()))
        self._settled.set()

    async def _stop_one(self, g: GuestRuntime) -> None:
        if g.process.exited() is None and g.process.popen is not None:
            asked = await self._ask_poweroff(g)
            # A guest that never reached a shell has nothing worth a long wait
            # (its overlay is discarded), and riscv64 `virt` cannot hear ACPI.
            await g.process.shutdown(self.shutdown_timeout if asked else min(5.0, self.shutdown_timeout))
        if g.console is not None:
            g.console.close()
        g.enter(State.stopped)

    async def _ask_poweroff(self, g: GuestRuntime) -> bool:
        """A logged-in shell is the fastest clean poweroff: riscv64 `virt` has no
        ACPI button, so QMP system_powerdown alone may not be heard."""
        if g.console is None:
            return False
        return await self._in_thread(g.console.try_send_and_forget, "systemctl poweroff")

    # ------------------------------------------------------------ views

    def view(self, g: GuestRuntime) -> dict[str, Any]:
        p = g.plan
        return {
            "name": p.name, "state": g.state.value, "arch": p.arch.value, "accel": p.accel,
            "ip": str(p.ip.ip), "prefix": p.ip.network.prefixlen, "gateway": str(p.gateway),
            "dns": [str(d) for d in p.dns], "mac": p.mac, "tap": p.tap, "pid": g.process.pid,
            "timestamps": dict(g.timestamps), "reason": g.reason, "mesh": dict(g.mesh), "changed": g.changed,
            "console_tail": console_tail(p.paths.console_log),
        }

    def summary(self) -> dict[str, Any]:
        states: dict[str, int] = {}
        for g in self.guests.values():
            states[g.state.value] = states.get(g.state.value, 0) + 1
        return {"lab": self.plan.name, "bridge": self.plan.bridge, "address": str(self.plan.bridge_address),
                "started_at": self.started_at, "settled": self._settled.is_set(), "states": states}


def console_tail(path: Path, lines: int = 15) -> str:
    text = strip_escapes(tail(path, 8192))
    kept = [ln for ln in text.splitlines() if ln.strip()]
    return "\n".join(kept[-lines:])


__all__ = ["GuestBusy", "GuestRuntime", "LabRunner", "State", "console_tail"]
