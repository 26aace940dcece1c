"""Orchestration: the one owner of the lab's host network, guests and consoles.

Per guest: booting -> login -> configuring -> verifying -> ready (or failed).
Guests move independently; the mesh check (each guest pings the bridge and
every other configured guest) waits until no guest is still on its way.
Guests can be added, removed, stopped and started while the lab runs; each
change is written to the declared state, which the next start resumes from.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import ipaddress
import logging
import shutil
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, AsyncIterator, Callable, TypeVar

from ..api.schemas import (
    AddGuest,
    ExecRequest,
    ExecResult,
    FailedGuest,
    GuestView,
    MeshPair,
    MeshReport,
    NetworkRequest,
    UplinkProbe,
    WaitResult,
)
from ..errors import (
    BridgelabError,
    ConsoleTimeout,
    FieldIssue,
    GuestBusy,
    HostNetError,
    ImageError,
    SpecError,
    UnknownGuest,
)
from ..guest import network
from ..guest.agent import AgentUnavailable, GuestAgent
from ..guest.commands import NetConfig, side_nic
from ..guest.console import Console, quote, strip_escapes
from ..guest.process import GuestProcess, tail
from ..host import firewall, links, undo, uplink, uplink_diagnosis
from ..host.lablock import LabLock
from .states import ON_THE_WAY, SETTLED, GuestState, check_transition
from ..model import declared
from ..model.images import Image, resolve_image
from ..model.plan import GuestPlan, HostFacts, LabPlan, check_new_ip, make_plan
from ..model.spec import Lab, own_net_problems, parse_lab_data

log = logging.getLogger(__name__)
T = TypeVar("T")


AGENT_PROBE_TIMEOUT = 1.0
AGENT_REPROBE_AFTER = 60.0  # a guest without an agent costs one probe per minute, not one per exec


@dataclasses.dataclass
class GuestRuntime:
    plan: GuestPlan
    process: GuestProcess
    on_change: Callable[[], None] = lambda: None
    state: GuestState = GuestState.pending
    reason: str | None = None
    timestamps: dict[str, float] = dataclasses.field(default_factory=dict)
    stages: dict[str, float] = dataclasses.field(default_factory=dict)
    mesh: dict[str, bool] = dataclasses.field(default_factory=dict)
    console: Console | None = None
    changed: bool | None = None  # did the last network configuration change anything?
    op_lock: asyncio.Lock = dataclasses.field(default_factory=asyncio.Lock)  # network, reboot, stop, start
    exec_lock: asyncio.Lock = dataclasses.field(default_factory=asyncio.Lock)  # exec requests queue here
    tasks: list[asyncio.Task[None]] = dataclasses.field(default_factory=list)
    agent: GuestAgent | None = None
    agent_probed: float = 0.0  # monotonic time of the last failed probe

    def enter(self, state: GuestState) -> None:
        check_transition(self.plan.name, self.state, state)
        self.state = state
        self.timestamps[state.value] = time.time()
        log.info("guest %s: %s", self.plan.name, state.value)
        self.on_change()

    def stage(self, name: str) -> None:
        """Record a boot stage the first time it is seen in this boot. Firmware
        starts a boot: anything seen before it (a reboot's shutdown noise) is
        from the previous one."""
        if name == "firmware":
            for old in [s for s in self.stages if s != "qemu_started"]:
                del self.stages[old]
        if name not in self.stages:
            self.stages[name] = time.time()
            self.on_change()

    def fail(self, reason: str) -> None:
        """The first cause is kept: a bring-up step that fails after qemu died
        reports what qemu said, not the console's EOF."""
        if self.state in (GuestState.failed, GuestState.stopping, GuestState.stopped):
            return
        self.reason = reason
        self.enter(GuestState.failed)
        log.error("guest %s failed: %s", self.plan.name, reason)

    def net_config(self) -> NetConfig:
        p = self.plan
        return NetConfig(mac=p.mac, address=p.ip, gateway=p.gateway, dns=p.dns)


@dataclasses.dataclass(frozen=True)
class LabSource:
    """Where the lab came from: needed to re-plan when guests are added."""

    spec: Lab
    images: dict[str, Image]
    host: HostFacts
    base_dir: Path  # relative image paths in the lab file resolve from here
    source_hash: str  # of the lab file text; the declared state is tied to it
    stopped: frozenset[str] = frozenset()


class LabRunner:
    def __init__(self, plan: LabPlan, source: LabSource, shutdown_timeout: float = 30.0):
        self.plan = plan
        self.source = source
        self.spec = declared.freeze(source.spec, plan)
        self.stopped_by_request: set[str] = set(source.stopped)
        self.shutdown_timeout = shutdown_timeout
        self.ledger: links.Ledger | None = None  # opened once the lab is locked
        self.guests: dict[str, GuestRuntime] = {}
        self.started_at = time.time()
        self._lock = LabLock(plan.name, plan.state_dir)
        # Consoles block in threads; exec runs in parallel across guests.
        self._pool = ThreadPoolExecutor(max_workers=64, thread_name_prefix="console")
        self._settled = asyncio.Event()
        self._change = asyncio.Event()
        self._topology = asyncio.Lock()  # add/remove: one at a time
        self._announced = False
        self._stopping = False
        self.firewall_hints: list[str] = []
        self.ruleset = firewall.Ruleset(firewall.lab_tag(plan.name))
        self._probe_lock = asyncio.Lock()
        self._background: set[asyncio.Task[None]] = set()

    # ------------------------------------------------------------ host side (sync)

    def lock(self) -> None:
        """One daemon per lab (see lablock); the ledger is read under the lock."""
        self._lock.acquire()
        self.ledger = links.Ledger(self.plan.state_dir / "ledger.json")

    def setup_host(self) -> None:
        assert self.ledger is not None, "lock() first"
        self._sweep()
        net = links.HostNet(self.ledger, self._owner())
        try:
            links.apply(net, self.plan.bridge, self.plan.bridge_address, self.plan.bridge_mac,
                          [g.tap for g in self.plan.guests])
            self.ruleset = firewall.apply(self.ledger, self.plan)
            uplink.apply(self.ledger, self.plan)
            self._warn_host_firewalls()
        except BaseException:
            undo.undo_recorded(self.ledger)
            raise
        finally:
            net.close()
        for g in self.plan.guests:
            self.guests[g.name] = self._runtime(g)
        self._persist()
        self._forget_undeclared_guests()

    def _forget_undeclared_guests(self) -> None:
        """State of guests no longer declared (a removal cut short by a kill)."""
        declared_dirs = {g.paths.dir for g in self.plan.guests}
        guests_dir = self.plan.state_dir / "guests"
        for d in sorted(guests_dir.iterdir()) if guests_dir.is_dir() else []:
            if d.is_dir() and d not in declared_dirs:
                shutil.rmtree(d, ignore_errors=True)
                log.info("removed the state of guest %s, which is no longer declared", d.name)

    def _runtime(self, g: GuestPlan) -> GuestRuntime:
        assert self.ledger is not None
        return GuestRuntime(plan=g, process=GuestProcess(g, self.ledger), on_change=self._notify)

    def _sweep(self) -> None:
        """What a killed run left: its processes, rules, routes, sysctls, links.
        (firewall.apply also sweeps rules by tag, in case the ledger was lost.)"""
        assert self.ledger is not None
        if undone := undo.undo_recorded(self.ledger):
            log.warning("swept what an earlier run of lab %s left: %s", self.plan.name, "; ".join(undone.lines()))

    def _warn_host_firewalls(self) -> None:
        self.firewall_hints = firewall.firewall_hints(list(self.ruleset.managers), self.plan)
        for hint in self.firewall_hints:
            log.warning("a host firewall may drop lab traffic; if the self-test fails at netfilter: %s", hint)

    def teardown_host(self) -> None:
        if self.ledger is None:
            return
        undo.undo_recorded(self.ledger)
        if not self.ledger.entries:
            self.ledger.path.unlink(missing_ok=True)
        # Overlays stay for inspection (and `qemu-img check`); the next start
        # replaces them. Sockets are dead once qemu is gone.
        for g in self.plan.guests:
            for f in (g.paths.console_sock, g.paths.qmp_sock, g.paths.agent_sock):
                f.unlink(missing_ok=True)
        self._pool.shutdown(wait=False, cancel_futures=True)
        self._lock.release()

    def _owner(self) -> str:
        return firewall.lab_tag(self.plan.name)  # links carry the rules' tag as their alias

    def _add_tap(self, tap: str) -> None:
        assert self.ledger is not None
        net = links.HostNet(self.ledger, self._owner())
        try:
            bridge = net.link(self.plan.bridge)
            if bridge is None:
                raise HostNetError(f"bridge {self.plan.bridge} is gone")
            net.ensure_tap(tap, bridge)
        finally:
            net.close()

    def _move_route(self, old: ipaddress.IPv4Address | None, new: ipaddress.IPv4Address | None) -> None:
        """proxy-arp: the /32 route follows a guest's address."""
        assert self.ledger is not None
        if old is not None:
            uplink.remove_guest_route(self.ledger, old)
        if new is not None:
            uplink.add_guest_route(self.ledger, new, self.plan.bridge)

    def _remove_tap(self, tap: str) -> None:
        assert self.ledger is not None
        entry = self.ledger.find_link(tap)
        if entry is None:
            return
        net = links.HostNet(self.ledger, self._owner())
        try:
            net.remove_link(entry)
        finally:
            net.close()

    def _persist(self) -> None:
        declared.save(self.plan.state_dir, self.source.source_hash, self.spec, self.stopped_by_request)

    # ------------------------------------------------------------ guests (async)

    def _notify(self) -> None:
        """Wake every long-poll waiter; each re-checks its own condition."""
        self._change.set()
        self._change = asyncio.Event()

    async def _in_thread(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)

    def start_guests(self) -> None:
        for g in self.guests.values():
            if g.plan.name in self.stopped_by_request:
                g.enter(GuestState.stopped)
            else:
                self._launch(g)
        self._check_settled()

    def _launch(self, g: GuestRuntime, fresh: bool = True) -> None:
        """Booting from this moment (a response sent right after says so)."""
        g.reason = None
        g.stages.clear()
        g.mesh = {}
        g.enter(GuestState.booting)
        g.tasks = [asyncio.create_task(self._bring_up(g, fresh), name=f"up-{g.plan.name}"),
                   asyncio.create_task(self._watch(g), name=f"watch-{g.plan.name}")]

    async def _watch(self, g: GuestRuntime) -> None:
        """A qemu that dies on its own fails its guest, with qemu's own words."""
        while g.state not in (GuestState.stopping, GuestState.stopped):
            reason = g.process.exit_reason()
            if reason is not None:
                if g.state is not GuestState.failed:
                    g.fail(reason)
                    self._check_settled()
                return
            await asyncio.sleep(0.5)

    async def _bring_up(self, g: GuestRuntime, fresh: bool = True) -> None:
        loop = asyncio.get_running_loop()
        try:
            await self._in_thread(g.process.prepare, fresh)
            g.process.spawn()
            g.stage("qemu_started")
            await g.process.wait_sockets()
            g.agent = GuestAgent(g.plan.paths.agent_sock)
            g.agent_probed = 0.0

            def on_stage(stage: str) -> None:
                loop.call_soon_threadsafe(g.stage, stage)
            g.console = await self._in_thread(Console.connect_unix, g.plan.paths.console_sock, g.plan.name,
                                              g.plan.paths.dir / "transcript.log", on_stage)
            await g.process.resume()
            await self._login(g)
            g.enter(GuestState.configuring)
            g.changed = await self._in_thread(network.configure, g.console, g.net_config())
            if g.plan.user_nic is not None:
                await self._in_thread(network.configure, g.console, side_nic(g.plan.user_nic.mac))
            g.stage("configured")
        except asyncio.CancelledError:
            raise
        except BridgelabError as e:
            self._fail_from(g, e)
        except Exception as e:  # a bug must still not take the other guests down
            log.exception("guest %s", g.plan.name)
            self._fail_from(g, e)
        if g.state is GuestState.configuring:
            g.enter(GuestState.verifying)  # configured; the mesh waits for the others
        self._check_settled()
        if g.state is GuestState.verifying:
            await self._settled.wait()
            await self._verify_mesh(g)

    async def _login(self, g: GuestRuntime) -> None:
        loop = asyncio.get_running_loop()
        assert g.console is not None

        def prompt_seen() -> None:
            loop.call_soon_threadsafe(self._first_prompt, g)
        await self._in_thread(g.console.login, g.plan.login.user, g.plan.login.password,
                              g.plan.boot_timeout, 8.0, prompt_seen)
        g.stage("logged_in")

    @staticmethod
    def _first_prompt(g: GuestRuntime) -> None:
        g.stage("login_prompt")
        if g.state is GuestState.booting:
            g.enter(GuestState.login)

    def _fail_from(self, g: GuestRuntime, e: BaseException) -> None:
        g.fail(g.process.exit_reason() or str(e) or type(e).__name__)

    def _check_settled(self) -> None:
        if not any(g.state in ON_THE_WAY for g in self.guests.values()):
            self._settled.set()

    def _peers(self, g: GuestRuntime) -> list[ipaddress.IPv4Address]:
        others = [o.plan.ip.ip for o in self.guests.values()
                  if o is not g and o.state in (GuestState.verifying, GuestState.ready)]
        return [self.plan.host_address.ip, *others]

    async def _verify_mesh(self, g: GuestRuntime) -> None:
        if g.state is not GuestState.verifying:
            g.enter(GuestState.verifying)
        assert g.console is not None
        try:
            g.mesh = await self._in_thread(network.ping_all, g.console, self._peers(g))
        except BridgelabError as e:
            self._fail_from(g, e)
            return
        unreachable = [ip for ip, ok in g.mesh.items() if not ok]
        if unreachable:
            g.fail(f"cannot reach {', '.join(unreachable)} from {g.plan.ip.ip}")
        else:
            g.stage("mesh_verified")
            g.enter(GuestState.ready)
        self._announce_once()

    def _announce_once(self) -> None:
        """One clear line when the lab first settles, for people reading logs."""
        if self._announced or any(g.state not in SETTLED for g in self.guests.values()):
            return
        self._announced = True
        parts = [f"{g.plan.name} {g.plan.ip.ip}" if g.state is GuestState.ready
                 else f"{g.plan.name} {g.state.value.upper()}" + (f" ({g.reason})" if g.reason else "")
                 for g in self.guests.values()]
        log.info("lab %s ready: %s (API: GET /guests)", self.plan.name, ", ".join(parts))
        if self.plan.uplink is not None:
            task = asyncio.create_task(self._log_uplink_selftest())
            self._background.add(task)
            task.add_done_callback(self._background.discard)

    async def _log_uplink_selftest(self) -> None:
        up = self.plan.uplink
        assert up is not None
        if up.target is None:
            log.info("uplink %s on %s: no self-test target (no gateway; set uplink.target)", up.mode, up.interface)
            return
        for g in [g for g in self.guests.values() if g.state is GuestState.ready]:
            try:
                probe = await self.probe_uplink(g)
            except BridgelabError as e:  # the guest got busy or went away meanwhile
                log.info("uplink self-test from %s skipped: %s", g.plan.name, e)
                continue
            if probe is not None and probe.ok:
                log.info("uplink self-test: %s reaches %s (%s on %s)", g.plan.name, up.target, up.mode,
                         up.interface)

    # ------------------------------------------------------------ API operations

    def get(self, name: str) -> GuestRuntime:
        g = self.guests.get(name)
        if g is None:
            raise UnknownGuest(f"no guest named {name!r}")
        return g

    @contextlib.asynccontextmanager
    async def _operating(self, g: GuestRuntime) -> AsyncIterator[None]:
        """One change at a time per guest: a second request gets 409, not a queue."""
        if g.op_lock.locked():
            raise GuestBusy(f"guest {g.plan.name} is busy with another request")
        async with g.op_lock:
            yield

    def _require_shell(self, g: GuestRuntime) -> Console:
        if g.state is not GuestState.ready or g.console is None:
            raise GuestBusy(f"guest {g.plan.name} is {g.state.value}; it must be ready")
        return g.console

    async def wait(self, names: list[str] | None, timeout: float) -> WaitResult:
        """Long-poll until the named guests (or all) are ready, failed or stopped."""
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            targets = [self.get(n) for n in names] if names else list(self.guests.values())
            settled = all(g.state in SETTLED for g in targets)
            remaining = deadline - asyncio.get_running_loop().time()
            if settled or remaining <= 0:
                break
            change = self._change
            try:
                await asyncio.wait_for(change.wait(), remaining)
            except asyncio.TimeoutError:
                pass
        return WaitResult(
            settled=settled, ready=[g.plan.name for g in targets if g.state is GuestState.ready],
            failed=[FailedGuest(name=g.plan.name, reason=g.reason, console_tail=console_tail(g.plan.paths.console_log))
                    for g in targets if g.state is GuestState.failed],
            guests=[self.view(g) for g in targets])

    async def exec(self, name: str, req: ExecRequest) -> ExecResult:
        """Run argv in the guest: through qemu-guest-agent when it answers, else
        through the console. Queued per guest; guests run in parallel."""
        g = self.get(name)
        async with g.exec_lock:
            console = self._require_shell(g)
            if g.op_lock.locked():
                raise GuestBusy(f"guest {name} is busy with a network change, reboot or stop")
            if await self._agent_usable(g):
                try:
                    return await self._exec_agent(g, req)
                except AgentUnavailable as e:
                    log.warning("%s: guest agent gone (%s); using the console", name, e)
                    g.agent_probed = time.monotonic()
            return await self._exec_console(console, req)

    async def _agent_usable(self, g: GuestRuntime) -> bool:
        recently_failed = g.agent_probed and time.monotonic() - g.agent_probed < AGENT_REPROBE_AFTER
        if g.agent is None or recently_failed:
            return False
        if await self._in_thread(g.agent.ping, AGENT_PROBE_TIMEOUT):
            return True
        g.agent_probed = time.monotonic()
        return False

    async def _exec_agent(self, g: GuestRuntime, req: ExecRequest) -> ExecResult:
        assert g.agent is not None
        t0 = time.monotonic()
        r = await self._in_thread(g.agent.run, list(req.argv), req.timeout, req.max_output)
        return ExecResult(exit_code=r.exit_code, output=r.stdout.decode(errors="replace"),
                          stderr=r.stderr.decode(errors="replace"), timed_out=r.timed_out, truncated=r.truncated,
                          duration=time.monotonic() - t0, via="agent")

    async def _exec_console(self, console: Console, req: ExecRequest) -> ExecResult:
        command = " ".join(quote(a) for a in req.argv)
        t0 = time.monotonic()
        try:
            rc, out = await self._in_thread(console.run, command, req.timeout, req.max_output)
        except ConsoleTimeout:
            return ExecResult(exit_code=None, output="", stderr=None, timed_out=True, truncated=False,
                              duration=time.monotonic() - t0, via="console")
        raw = out.encode()
        truncated = len(raw) > req.max_output
        if truncated:
            out = raw[:req.max_output].decode(errors="ignore")
        return ExecResult(exit_code=rc, output=out, stderr=None, timed_out=False, truncated=truncated,
                          duration=time.monotonic() - t0, via="console")

    async def set_network(self, name: str, req: NetworkRequest) -> GuestRuntime:
        g = self.get(name)
        subnet = self.plan.subnet
        prefix = req.prefix or subnet.prefixlen
        gateway = req.gateway or self.plan.default_gateway
        issues = [FieldIssue("ip", p) for p in check_new_ip(self.plan, name, req.ip)]
        if req.gateway is not None and req.gateway not in subnet:
            issues.append(FieldIssue("gateway", f"gateway {req.gateway} is not on {subnet}"))
        elif not issues and gateway is not None:
            issues += [FieldIssue(f, m) for f, m in own_net_problems(req.ip, prefix, gateway)]
        if issues:
            raise SpecError(issues)
        async with self._operating(g):
            self._require_shell(g)
            # Reserve the address in the plan before the first await, so two
            # concurrent requests can never pick the same IP.
            old_ip = g.plan.ip.ip
            new = dataclasses.replace(g.plan, ip=ipaddress.IPv4Interface(f"{req.ip}/{prefix}"),
                                      gateway=gateway, dns=tuple(req.dns))
            self._replace_plan(new)
            if self.plan.proxy_arp and old_ip != req.ip:
                await self._in_thread(self._move_route, old_ip, req.ip)
            g.enter(GuestState.configuring)
            try:
                g.changed = await self._in_thread(network.configure, g.console, g.net_config())
            except BridgelabError as e:
                self._fail_from(g, e)
                return g
            await self._verify_mesh(g)
            return g

    async def reboot(self, name: str) -> GuestRuntime:
        """Reboot through the guest's own shell, log in again, and check that
        NetworkManager restored the address by itself (no reconfiguration)."""
        g = self.get(name)
        async with self._operating(g):
            console = self._require_shell(g)
            g.stages.clear()
            g.enter(GuestState.booting)
            try:
                await self._in_thread(console.send_and_forget, "systemctl reboot")
                await self._login(g)
                g.enter(GuestState.configuring)
                await self._in_thread(network.verify, console, g.net_config())
                g.stage("configured")
            except BridgelabError as e:
                self._fail_from(g, e)
                return g
            await self._verify_mesh(g)
            return g

    async def stop_guest(self, name: str) -> GuestRuntime:
        g = self.get(name)
        async with self._operating(g):
            if g.state is not GuestState.stopped:
                await self._stop_one(g)
            self.stopped_by_request.add(name)
            self._persist()
            return g

    async def start_guest(self, name: str) -> GuestRuntime:
        """Boot a stopped (or failed) guest again, on the disk it had."""
        g = self.get(name)
        async with self._operating(g):
            if g.state not in (GuestState.stopped, GuestState.failed):
                raise GuestBusy(f"guest {name} is {g.state.value}; only a stopped or failed guest can start")
            if g.state is GuestState.failed:
                await self._stop_one(g)
            self.stopped_by_request.discard(name)
            self._persist()
            assert self.ledger is not None
            g.process = GuestProcess(g.plan, self.ledger)
            self._launch(g, fresh=False)
            return g

    async def add_guest(self, req: AddGuest) -> GuestRuntime:
        """Plan the new guest against the declared lab, create its tap, boot it."""
        async with self._topology:
            if self._stopping:
                raise GuestBusy("the lab is shutting down")
            if req.name in self.guests:
                raise GuestBusy(f"a guest named {req.name!r} already exists")
            data = declared.to_data(self.spec)
            data["guests"].append(req.model_dump(mode="json", exclude_none=True))
            try:
                lab = parse_lab_data(data)
            except SpecError as e:
                raise SpecError([_rebase(i, len(data["guests"]) - 1) for i in e.issues]) from None
            images = dict(self.source.images)
            if req.image not in images:
                try:
                    images[req.image] = await self._in_thread(resolve_image, req.image, self.source.base_dir)
                except ImageError as e:
                    raise SpecError([FieldIssue("image", str(e))]) from None
            try:
                plan = make_plan(lab, images, self.source.host, self.plan.state_dir)
            except SpecError as e:
                raise SpecError([_rebase(i, len(data["guests"]) - 1) for i in e.issues]) from None
            new = next(p for p in plan.guests if p.name == req.name)
            await self._in_thread(self._add_tap, new.tap)
            if self.plan.proxy_arp:
                await self._in_thread(self._move_route, None, new.ip.ip)
            self.plan = dataclasses.replace(self.plan, guests=(*self.plan.guests, new))
            self.source = dataclasses.replace(self.source, images=images)
            self.spec = declared.freeze(lab, self.plan)
            g = self._runtime(new)
            self.guests[new.name] = g
            self._persist()
            log.info("added guest %s (%s, tap %s)", new.name, new.ip, new.tap)
            self._launch(g)
            return g

    async def remove_guest(self, name: str) -> None:
        """Forget the guest in the declared state first, then power it down and
        remove its tap and its state: a daemon killed halfway comes back
        without it, and the next start sweeps what the removal left."""
        async with self._topology:
            g = self.get(name)
            async with self._operating(g):
                self.plan = dataclasses.replace(self.plan, guests=tuple(p for p in self.plan.guests
                                                                        if p.name != name))
                self.spec = self.spec.model_copy(update={"guests": [s for s in self.spec.guests
                                                                    if s.name != name]})
                self.stopped_by_request.discard(name)
                self._persist()
                await self._stop_one(g)
                await self._in_thread(self._remove_tap, g.plan.tap)
                if self.plan.proxy_arp:
                    await self._in_thread(self._move_route, g.plan.ip.ip, None)
                del self.guests[name]
                shutil.rmtree(g.plan.paths.dir, ignore_errors=True)
                log.info("removed guest %s", name)
                self._notify()

    async def mesh_check(self) -> MeshReport:
        """Every ready guest pings the bridge and every other guest; failures
        are explained (guest down, no ARP, ARP but no ICMP, not configured)."""
        sources = [g for g in self.guests.values() if g.state is GuestState.ready]
        skipped = [g.plan.name for g in self.guests.values() if g.state is not GuestState.ready]
        results = await asyncio.gather(*(self._mesh_from(g) for g in sources))
        pairs = [p for r in results for p in r]
        probes = [p for g in sources if (p := await self.probe_uplink(g)) is not None]
        return MeshReport(ok=bool(pairs) and all(p.ok for p in pairs) and all(p.ok for p in probes),
                          pairs=pairs, uplink=probes, skipped=skipped)

    async def probe_uplink(self, g: GuestRuntime) -> UplinkProbe | None:
        """The guest pings the uplink's target; on failure, find the layer.
        One probe at a time: the evidence includes host-wide rule counters."""
        up = self.plan.uplink
        if up is None or up.target is None:
            return None
        target = up.target
        async with self._probe_lock, g.exec_lock:
            console = self._require_shell(g)
            before = await self._in_thread(uplink_diagnosis.counters, self.plan, self.ruleset)
            reached = await self._in_thread(network.ping_all, console, [target])
            if reached.get(str(target)):
                return UplinkProbe(source=g.plan.name, target=str(target), ok=True, layer="ok",
                                   detail=f"ping answered through {up.mode} on {up.interface}")
            after = await self._in_thread(uplink_diagnosis.counters, self.plan, self.ruleset)
            ev = await self._in_thread(self._uplink_evidence, console, target, before, after)
        layer, detail = uplink_diagnosis.diagnose(ev, self.plan, target, self.firewall_hints)
        log.warning("uplink self-test: %s cannot reach %s: %s: %s", g.plan.name, target, layer, detail)
        return UplinkProbe(source=g.plan.name, target=str(target), ok=False, layer=layer, detail=detail)

    def _uplink_evidence(self, console: Console, target: ipaddress.IPv4Address,
                         before: uplink_diagnosis.Counters,
                         after: uplink_diagnosis.Counters) -> uplink_diagnosis.Evidence:
        route = network.route_get(console, target)
        hop = uplink_diagnosis.next_hop(route, target) if route is not None else target
        forwarding, proxy_arp = uplink_diagnosis.host_side(self.plan)
        return uplink_diagnosis.Evidence(
            guest_route=route, next_hop_arp=network.neighbour(console, hop) if route is not None else "none",
            ip_forward=forwarding, host_route_dev=uplink_diagnosis.host_route_dev(target), before=before, after=after,
            host_reaches_target=uplink_diagnosis.host_reaches(target), uplink_proxy_arp=proxy_arp,
            foreign_forward_drops=tuple(uplink_diagnosis.foreign_forward_drops()))

    async def _mesh_from(self, g: GuestRuntime) -> list[MeshPair]:
        targets: list[tuple[str, ipaddress.IPv4Address, GuestRuntime | None]] = [
            ("bridge" if self.plan.bridge_address else "host", self.plan.host_address.ip, None)]
        targets += [(o.plan.name, o.plan.ip.ip, o) for o in self.guests.values() if o is not g]
        async with g.exec_lock:
            console = self._require_shell(g)
            return await self._in_thread(self._probe_all, console, g, targets)

    def _probe_all(self, console: Console, g: GuestRuntime,
                   targets: list[tuple[str, ipaddress.IPv4Address, GuestRuntime | None]]) -> list[MeshPair]:
        def pair(name: str, ip: ipaddress.IPv4Address, ok: bool, diagnosis: str, detail: str) -> MeshPair:
            return MeshPair(source=g.plan.name, target=name, target_ip=str(ip), ok=ok,
                            diagnosis=diagnosis, detail=detail)  # type: ignore[arg-type]
        try:
            network.verify(console, g.net_config())
        except BridgelabError as e:
            return [pair(n, ip, False, "source_not_configured", str(e)) for n, ip, _ in targets]
        reached = network.ping_all(console, [ip for _, ip, _ in targets])
        out = []
        for name, ip, other in targets:
            if reached.get(str(ip)):
                out.append(pair(name, ip, True, "ok", "ping answered"))
                continue
            if other is not None and (other.process.exited() is not None or other.state in (GuestState.stopped,
                                                                                             GuestState.stopping)):
                out.append(pair(name, ip, False, "guest_down", f"guest {name} is {other.state.value}"))
                continue
            neigh = network.neighbour(console, ip)
            if neigh == "resolved":
                out.append(pair(name, ip, False, "arp_no_icmp",
                                "ARP resolved but no ICMP reply: a firewall on the path or in the target drops it"))
            elif other is not None and other.state is not GuestState.ready:
                out.append(pair(name, ip, False, "address_not_configured",
                                f"no ARP reply; guest {name} is {other.state.value}, its address may not be up"))
            else:
                out.append(pair(name, ip, False, "no_arp",
                                "no ARP reply: L2 problem (tap not on the bridge, link down, wrong address)"))
        return out

    def _replace_plan(self, new: GuestPlan) -> None:
        g = self.guests[new.name]
        g.plan = new
        self.plan = dataclasses.replace(self.plan, guests=tuple(new if p.name == new.name else p
                                                                for p in self.plan.guests))
        self.spec = declared.freeze(self.spec, self.plan)
        self._persist()

    # ------------------------------------------------------------ shutdown

    async def stop(self) -> None:
        """Power every guest down in parallel, bounded; quit or kill the rest."""
        self._stopping = True
        for t in self._background:
            t.cancel()
        await asyncio.gather(*(self._stop_one(g) for g in self.guests.values()))
        self._settled.set()

    async def _stop_one(self, g: GuestRuntime) -> None:
        if g.state is GuestState.stopped:
            return
        g.enter(GuestState.stopping)
        current = asyncio.current_task()
        for t in g.tasks:
            if t is not current:
                t.cancel()
        if g.process.exited() is None and g.process.popen is not None:
            asked = await self._ask_poweroff(g)
            # A guest that never reached a shell has nothing worth a long wait
            # (its overlay is discarded), and riscv64 `virt` cannot hear ACPI.
            await g.process.shutdown(self.shutdown_timeout if asked else min(5.0, self.shutdown_timeout))
        else:
            await g.process.close_qmp()
        if g.console is not None:
            g.console.close()
            g.console = None
        if g.agent is not None:
            g.agent.close()
            g.agent = None
        g.enter(GuestState.stopped)
        self._check_settled()

    async def _ask_poweroff(self, g: GuestRuntime) -> bool:
        """A logged-in shell is the fastest clean poweroff: riscv64 `virt` has no
        ACPI button, so QMP system_powerdown alone may not be heard."""
        if g.console is None:
            return False
        return await self._in_thread(g.console.try_send_and_forget, "systemctl poweroff")

    # ------------------------------------------------------------ views

    def view(self, g: GuestRuntime) -> GuestView:
        p = g.plan
        return GuestView(
            name=p.name, state=g.state, arch=p.arch, accel=p.accel,
            ip=str(p.ip.ip), prefix=p.ip.network.prefixlen, gateway=str(p.gateway) if p.gateway else None,
            dns=[str(d) for d in p.dns], mac=p.mac, tap=p.tap, pid=g.process.pid,
            timestamps=dict(g.timestamps), stages=dict(g.stages), reason=g.reason, mesh=dict(g.mesh),
            changed=g.changed, console_tail=console_tail(p.paths.console_log),
            ssh=f"127.0.0.1:{p.user_nic.ssh_port}" if p.user_nic else None)

    def summary(self) -> dict[str, Any]:
        states: dict[str, int] = {}
        for g in self.guests.values():
            states[g.state.value] = states.get(g.state.value, 0) + 1
        up = self.plan.uplink
        uplink_view = None if up is None else {
            "mode": up.mode, "interface": up.interface, "reason": up.reason,
            "lan": str(up.lan) if up.lan else None, "gateway": str(up.gateway) if up.gateway else None,
            "target": str(up.target) if up.target else None, "firewall_hints": self.firewall_hints}
        return {"lab": self.plan.name, "bridge": self.plan.bridge, "address": str(self.plan.host_address),
                "uplink": uplink_view,
                "started_at": self.started_at, "settled": self._settled.is_set(), "states": states}


def _rebase(issue: FieldIssue, index: int) -> FieldIssue:
    """Issues about the added guest, reported against the request body's fields."""
    prefix = f"guests[{index}]"
    if issue.path == prefix or issue.path.startswith(prefix + "."):
        return FieldIssue(issue.path[len(prefix):].lstrip("."), issue.message)
    return issue


def console_tail(path: Path, lines: int = 15, limit: int = 8192) -> str:
    text = strip_escapes(tail(path, limit))
    kept = [ln for ln in text.splitlines() if ln.strip()]
    return "\n".join(kept[-lines:])


__all__ = ["GuestBusy", "GuestRuntime", "LabRunner", "LabSource", "console_tail"]
