"""Guest lifecycle: bring-up, reboot, stop and start.

Per guest: booting -> login -> configuring -> verifying -> ready (or failed).
Guests move independently; the mesh check (each guest pings the bridge and
every other configured guest) waits until no guest is still on its way.
"""

from __future__ import annotations

import asyncio
import functools
import ipaddress
import logging
import time
from typing import Callable

from ..errors import BridgelabError, ConsoleClosed, GuestBusy, GuestError
from ..guest import network, vmstate
from ..guest.agent import GuestAgent
from ..guest.console import Console
from ..guest.session import RELOGIN_TIMEOUT
from ..guest.shell import GuestShell, Power
from .configure import EarlyConfiguration, configure_in_turn
from .boot_slots import BootSlot
from .context import LabContext
from .guest_runtime import GuestRuntime
from .snapshots import Snapshots
from .states import SETTLED, GuestState
from .turns import Turn

log = logging.getLogger(__name__)
REBOOT_ASK_TIMEOUT = 120.0  # a console the guest logged out is logged into again first
# A login (from the user name typed to a prepared shell) has RELOGIN_TIMEOUT,
# paced by the load; the boot to the prompt has the guest's own boot_timeout.


class Lifecycle:
    def __init__(self, ctx: LabContext, snapshots: Snapshots, on_first_settled: Callable[[], None] = lambda: None):
        self.ctx = ctx
        self.snapshots = snapshots
        self._on_first_settled = on_first_settled
        self._announced = False

    def start_all(self) -> None:
        for g in self.ctx.guests.values():
            if g.plan.name in self.ctx.stopped_by_request:
                g.enter(GuestState.stopped)
            else:
                self.launch(g)
        self.ctx.check_settled()

    def launch(self, g: GuestRuntime, fresh: bool = True) -> None:
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
                g.fail(reason)
                self.ctx.check_settled()
                return
            await asyncio.sleep(0.5)

    async def _bring_up(self, g: GuestRuntime, fresh: bool = True) -> None:
        try:
            await self.ctx.before_boot(g)
            tag, why = await self.ctx.in_thread(self.snapshots.warm_start, g) if fresh else (None, "")
            if tag is not None:
                log.info("guest %s: warm start from %s", g.plan.name, why)
                if not await self._warm(g, tag):
                    await self._cold(g, fresh=True)
            else:
                if why:
                    log.info("guest %s: cold boot (%s)", g.plan.name, why)
                await self._cold(g, fresh)
        except asyncio.CancelledError:
            raise
        except BridgelabError as e:
            await self._fail(g, e)
        except Exception as e:  # a bug must still not take the other guests down
            log.exception("guest %s", g.plan.name)
            await self._fail(g, e)
        if g.state is GuestState.configuring:
            g.enter(GuestState.verifying)  # configured; the mesh waits for the others
        self.ctx.check_settled()
        if g.state is GuestState.verifying:
            await self.ctx.settled.wait()
            await self.verify_mesh(g, keep_ready=g.restored_from is None)
        # After a cold boot only: a restored guest's console logs in at its
        # first use, so nothing takes its CPU just when a test run starts on it.
        if g.restored_from is None and self._owe_login(g):
            await self.log_in_later(g)

    async def _start_qemu(self, g: GuestRuntime, fresh: bool, extra: tuple[str, ...] = ()) -> None:
        """qemu started paused, its console read from the first byte, then running."""
        loop = asyncio.get_running_loop()
        await self.ctx.in_thread(g.process.prepare, fresh)
        g.process.spawn(extra)
        g.stage("qemu_started")
        await g.process.wait_sockets()
        g.agent = GuestAgent(g.plan.paths.agent_sock)

        def on_stage(stage: str) -> None:
            loop.call_soon_threadsafe(g.stage, stage)
        g.console = await self.ctx.in_thread(Console.connect_unix, g.plan.paths.console_sock, g.plan.name,
                                             g.plan.paths.dir / "transcript.log", on_stage)
        g.shell = GuestShell(g.console, g.agent)

    async def _cold(self, g: GuestRuntime, fresh: bool) -> None:
        """Boot to the login prompt while the agent configures the guest.
        When the agent has by then, the console is left at the prompt and
        logged into after `ready` (log_in_later): the login is 5 s of PAM
        and shell start-up under TCG that nothing before `ready` needs.
        Else the console logs in (the agent may still win meanwhile), and
        configures the guest when the agent did not."""
        g.restored_from = None
        await self._start_qemu(g, fresh)
        slot = BootSlot(self.ctx.boot_slots, g.plan.cpus, lambda: g.stage("boot_slot"))
        turn = Turn(self.ctx.configure_slots, lambda: g.stage("turn"))
        early: EarlyConfiguration | None = None
        try:
            await slot.take()  # qemu waits paused; the boot deadline starts when it runs
            await g.process.resume()
            early = EarlyConfiguration(self.ctx, g)
            await self._boot_to_prompt(g)
            slot.give_back()
            changed = await early.at_prompt()
            if changed is None:
                await self._log_in(g, turn)
                changed = await early.result()
            g.enter(GuestState.configuring)
            if changed is None:
                assert g.shell is not None
                changed = await configure_in_turn(self.ctx, g.shell, g, turn)
                g.stage("configured")
        except BaseException:
            if early is not None:
                early.abandon()
            raise
        finally:
            slot.give_back()
            turn.end()
        g.changed = changed

    async def _warm(self, g: GuestRuntime, tag: str) -> bool:
        """Restore the guest's snapshot into a fresh qemu; False (after one
        log line, with qemu gone) when that failed and it must boot cold.
        The snapshot holds the guest's address live: the peers are heard
        first (a clash fails the guest, it does not boot it cold)."""
        await self.ctx.before_configure(g)
        try:
            await self._start_qemu(g, fresh=False, extra=("-loadvm", tag))
            await vmstate.rearm_timers(g.process)
            await g.process.resume()
            g.restored_from = tag
            g.stage("restored")
            await self.snapshots.settle(g)
        except BridgelabError as e:
            log.warning("guest %s: warm start failed, booting cold: %s", g.plan.name, e)
            await self._discard(g)
            return False
        self._restored(g)
        g.changed = False
        return True

    @staticmethod
    def _restored(g: GuestRuntime) -> None:
        """A restored guest passed the checks a login and a configuration would."""
        if g.state is GuestState.booting:
            g.enter(GuestState.login)
        g.enter(GuestState.configuring)

    async def _discard(self, g: GuestRuntime) -> None:
        """Throw away a failed warm start: qemu, console and agent; the guest stays booting."""
        old, g.process = g.process, self.ctx.new_process(g.plan)
        self._close_channels(g)
        await old.shutdown(0)
        g.stages.clear()
        g.restored_from = None

    @staticmethod
    def _close_channels(g: GuestRuntime) -> None:
        """The console and agent connections of a qemu that is going away."""
        for channel in (g.console, g.agent):
            if channel is not None:
                channel.close()
        g.console, g.agent, g.shell = None, None, None

    async def restore(self, names: list[str], tag: str) -> list[GuestRuntime]:
        """Put running guests back to a snapshot: console session, clock and
        address as after a warm start. The mesh is not pinged again (the
        neighbours ran on, and were told where the guest is): a reset
        between test cases stays within a second; POST /mesh checks it."""
        guests = await self.snapshots.restore(names, tag)

        async def settle(g: GuestRuntime) -> None:
            try:
                await self.snapshots.settle(g)
            except BridgelabError as e:
                g.fail_from(e)
                return
            self._restored(g)
            g.enter(GuestState.verifying)
            g.enter(GuestState.ready)
        await asyncio.gather(*(settle(g) for g in guests if g.state is GuestState.booting))
        return guests

    @staticmethod
    async def _fail(g: GuestRuntime, e: BaseException) -> None:
        """A console that closes is usually qemu exiting: give qemu a moment to
        be reaped, so the reason is its own words, not the console's EOF."""
        if isinstance(e, ConsoleClosed) and g.process.exit_reason() is None:
            await g.process.wait_exit(1.0)
        g.fail_from(e)

    async def _boot_to_prompt(self, g: GuestRuntime) -> None:
        loop = asyncio.get_running_loop()
        assert g.console is not None

        def prompt_seen() -> None:
            loop.call_soon_threadsafe(self._first_prompt, g)
        await self.ctx.in_thread(g.console.wait_for_login_prompt, g.plan.login.user, g.plan.login.password,
                                 g.plan.boot_timeout, 8.0, prompt_seen)

    async def _log_in(self, g: GuestRuntime, turn: Turn) -> None:
        """Log in at the prompt once the guest has its turn (turns.py):
        login(1)'s timer starts only when the user name is typed."""
        assert g.console is not None
        await turn.take()
        await self.ctx.in_thread(g.console.login, g.plan.login.user, g.plan.login.password, RELOGIN_TIMEOUT)
        g.stage("logged_in")

    async def _login(self, g: GuestRuntime, turn: Turn) -> None:
        await self._boot_to_prompt(g)
        await self._log_in(g, turn)

    @staticmethod
    def _owe_login(g: GuestRuntime) -> bool:
        """True for a ready guest whose console was left at its login prompt
        (its agent configured it), which then owes a console login: from now
        until it is done, snapshots and reboots wait (`console_settled`
        cleared), so none catches a login half-done."""
        if g.console is None or not g.console.at_login_prompt or g.state is not GuestState.ready:
            return False
        g.console_settled.clear()
        return True

    async def log_in_later(self, g: GuestRuntime) -> None:
        """The console login a guest owes (`_owe_login`), in its turn, after
        `ready`. A refused password fails the guest, as it would have before
        `ready`."""
        assert g.console is not None
        turn = Turn(self.ctx.configure_slots)
        try:
            await turn.take()
            await self.ctx.in_thread(g.console.finish_login, RELOGIN_TIMEOUT)
            g.stage("logged_in")  # by this call, or by a console command that came first
        except BridgelabError as e:
            if g.state is GuestState.ready:
                await self._fail(g, e)
        finally:
            turn.end()
            g.console_settled.set()

    @staticmethod
    def _first_prompt(g: GuestRuntime) -> None:
        g.stage("login_prompt")
        if g.state is GuestState.booting:
            g.enter(GuestState.login)

    def _peers(self, g: GuestRuntime) -> list[ipaddress.IPv4Address]:
        others = [o.plan.ip.ip for o in self.ctx.guests.values()
                  if o is not g and o.state in (GuestState.verifying, GuestState.ready)]
        return [self.ctx.plan.host_address.ip, *others]

    async def verify_mesh(self, g: GuestRuntime, keep_ready: bool = False) -> None:
        """The guest pings the bridge and its peers; ready when all answer.
        `keep_ready`: a guest that booted cold first has its ready snapshot
        taken, before it is ready, so no request meets the pause (its peers'
        pings, 5 s each, outlast it)."""
        if g.state is not GuestState.verifying:
            g.enter(GuestState.verifying)
        assert g.shell is not None
        try:
            g.mesh = await self.ctx.in_thread(network.ping_all, g.shell, self._peers(g))
        except BridgelabError as e:
            g.fail_from(e)
            return
        unreachable = [ip for ip, ok in g.mesh.items() if not ok]
        if unreachable:
            g.fail(f"cannot reach {', '.join(unreachable)} from {g.plan.ip.ip}")
        else:
            g.stage("mesh_verified")
            g.shell.reprobe_agent()
            if keep_ready:
                await self.snapshots.keep_ready(g)
            g.enter(GuestState.ready)
        self._announce_once()

    def _announce_once(self) -> None:
        """One clear line when the lab first settles, for people reading logs."""
        if self._announced or any(g.state not in SETTLED for g in self.ctx.guests.values()):
            return
        self._announced = True
        parts = [f"{g.plan.name} {g.plan.ip.ip}" if g.state is GuestState.ready
                 else f"{g.plan.name} {g.state.value.upper()}" + (f" ({g.reason})" if g.reason else "")
                 for g in self.ctx.guests.values()]
        log.info("lab %s ready: %s (API: GET /guests)", self.ctx.plan.name, ", ".join(parts))
        self._on_first_settled()

    async def reboot(self, name: str) -> GuestRuntime:
        """Reboot through the guest's own shell, log in again, and check that
        NetworkManager restored the address by itself (no reconfiguration)."""
        g = self.ctx.get(name)
        async with self.ctx.operating(g):
            shell = self.ctx.require_shell(g)
            await g.console_settled.wait()  # a login under way is not cut by the reboot
            g.stages.clear()
            g.enter(GuestState.booting)
            try:
                if not await self.ctx.in_thread(shell.power, Power.reboot, REBOOT_ASK_TIMEOUT):
                    raise GuestError(f"{name}: neither the guest agent nor the console took the reboot")
                turn = Turn(self.ctx.configure_slots, lambda: g.stage("turn"))
                try:
                    await self._login(g, turn)
                finally:
                    turn.end()
                g.enter(GuestState.configuring)
                await self.ctx.in_thread(functools.partial(network.verify, settle=network.VERIFY_SETTLE),
                                         shell, g.net_config())
                g.stage("configured")
            except BridgelabError as e:
                g.fail_from(e)
                return g
            await self.verify_mesh(g)
            return g

    async def stop_guest(self, name: str) -> GuestRuntime:
        g = self.ctx.get(name)
        async with self.ctx.operating(g):
            await self.stop_one(g)
            self.ctx.stopped_by_request.add(name)
            self.ctx.persist()
            return g

    async def start_guest(self, name: str) -> GuestRuntime:
        """Boot a stopped (or failed) guest again, on the disk it had."""
        g = self.ctx.get(name)
        async with self.ctx.operating(g):
            if g.state not in (GuestState.stopped, GuestState.failed):
                raise GuestBusy(f"guest {name} is {g.state.value}; only a stopped or failed guest can start")
            await self.stop_one(g)
            self.ctx.stopped_by_request.discard(name)
            self.ctx.persist()
            g.process = self.ctx.new_process(g.plan)
            self.launch(g, fresh=False)
            return g

    async def stop_all(self) -> None:
        """Power every guest down in parallel, bounded; quit or kill the rest."""
        await asyncio.gather(*(self.stop_one(g) for g in self.ctx.guests.values()))
        self.ctx.settled.set()

    async def stop_one(self, g: GuestRuntime) -> None:
        if g.state is GuestState.stopped:
            return
        g.enter(GuestState.stopping)
        current = asyncio.current_task()
        for t in g.tasks:
            if t is not current:
                t.cancel()
        if g.process.exited() is None and g.process.popen is not None:
            t0 = time.monotonic()
            asked = await self._ask_poweroff(g)
            # A guest that never reached a shell has nothing worth a long wait
            # (its overlay is discarded), and riscv64 `virt` cannot hear ACPI.
            timeout = max(self.ctx.shutdown_timeout - (time.monotonic() - t0), 5.0)
            await g.process.shutdown(timeout if asked else min(5.0, timeout))
        else:
            await g.process.close_qmp()
        self._close_channels(g)
        g.enter(GuestState.stopped)
        self.ctx.check_settled()

    async def _ask_poweroff(self, g: GuestRuntime) -> bool:
        """The guest's own shell is the surest clean poweroff: riscv64 `virt`
        has no ACPI button, so QMP system_powerdown alone may not be heard. A
        console the guest logged out is logged into again, within half of the
        shutdown budget."""
        if g.shell is None:
            return False
        return await self.ctx.in_thread(g.shell.power, Power.poweroff, self.ctx.shutdown_timeout / 2)

    async def wait(self, names: list[str] | None, timeout: float) -> tuple[bool, list[GuestRuntime]]:
        """Long-poll until the named guests (or all) are ready, failed or stopped."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            targets = [self.ctx.get(n) for n in names] if names else list(self.ctx.guests.values())
            settled = all(g.state in SETTLED for g in targets)
            remaining = deadline - loop.time()
            if settled or remaining <= 0:
                return settled, targets
            change = self.ctx.change
            try:
                await asyncio.wait_for(change.wait(), remaining)
            except asyncio.TimeoutError:
                pass


__all__ = ["Lifecycle"]
