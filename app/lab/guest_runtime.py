"""One guest while the lab runs: its plan, qemu, console, agent and state."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from typing import Callable

from ..guest.agent import GuestAgent
from ..guest.commands import NetConfig
from ..guest.console import Console
from ..guest.shell import GuestShell
from ..guest.process import GuestProcess
from ..model.plan import GuestPlan
from .states import GuestState, check_transition

log = logging.getLogger(__name__)
BEFORE_FIRMWARE = frozenset({"qemu_started", "boot_slot"})  # the stages of this boot that come before it


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
    shell: GuestShell | None = None  # everything the lab runs in the guest goes through it
    restored_from: str | None = None  # the snapshot this boot came from; None after a cold boot
    # Set while no console login is pending: a guest its agent made ready
    # logs in on its console after `ready` (lifecycle.py); a snapshot waits.
    console_settled: asyncio.Event = dataclasses.field(default_factory=asyncio.Event)

    def __post_init__(self) -> None:
        self.console_settled.set()

    def enter(self, state: GuestState) -> None:
        check_transition(self.plan.name, self.state, state)
        self.state = state
        self.timestamps[state.value] = time.time()
        log.info("guest %s: %s", self.plan.name, state.value)
        self.on_change()

    def stage(self, name: str) -> None:
        """Record a boot stage the first time it is seen in this boot. Firmware
        starts a boot: anything else seen before it (a reboot's shutdown
        noise) is from the previous one."""
        if name == "firmware":
            for old in [s for s in self.stages if s not in BEFORE_FIRMWARE]:
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

    def fail_from(self, e: BaseException) -> None:
        self.fail(self.process.exit_reason() or str(e) or type(e).__name__)

    def net_config(self) -> NetConfig:
        p = self.plan
        return NetConfig(mac=p.mac, address=p.ip, gateway=p.gateway, dns=p.dns, mtu=p.mtu)


__all__ = ["GuestRuntime"]
