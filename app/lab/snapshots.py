"""Snapshots of running guests, for one guest or the whole lab: save,
restore, list, delete; the `ready` snapshot kept for warm starts; and what a
restored guest needs before it is verified like any other.

QEMU keeps the snapshots inside each guest's overlay (guest/vmstate.py);
this module keeps beside it, in `snapshots.json` (mode 0600), what each one
is valid for (guest/snapshot_key.py) and how long it took to save.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, AsyncIterator

from ..errors import BridgelabError, CommandFailed, GuestBusy, UnknownSnapshot
from ..guest import network, snapshot_key, vmstate
from ..guest.shell import Shell
from ..guest.vmstate import READY_TAG
from .configure import AGENT_PING_TIMEOUT
from .context import LabContext
from .guest_runtime import GuestRuntime
from .states import GuestState

log = logging.getLogger(__name__)
RESUME_TIMEOUT = 120.0  # a restored guest whose session ended logs in again within this


@dataclass(frozen=True)
class SnapshotInfo:
    guest: str
    name: str
    size: int  # bytes of memory and device state in the overlay
    created: float
    save_seconds: float | None
    valid_for: dict[str, str]
    invalid: str | None  # what changed since it was taken; None while it can be restored


# ------------------------------------------------------------ snapshots.json


def _meta_path(g: GuestRuntime) -> Path:
    return g.plan.paths.dir / "snapshots.json"


def _read_meta(g: GuestRuntime) -> dict[str, Any]:
    try:
        data = json.loads(_meta_path(g).read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _write_meta(g: GuestRuntime, meta: dict[str, Any]) -> None:
    path = _meta_path(g)
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(meta, f, indent=1)
    os.replace(tmp, path)


# ------------------------------------------------------------ the runner's part


class Snapshots:
    def __init__(self, ctx: LabContext):
        self.ctx = ctx

    def of(self, g: GuestRuntime) -> list[SnapshotInfo]:
        try:
            return self._read(g)
        except (CommandFailed, ValueError) as e:
            log.warning("guest %s: cannot list snapshots: %s", g.plan.name, e)
            return []

    def _read(self, g: GuestRuntime) -> list[SnapshotInfo]:
        internal = [s for s in vmstate.list_internal(g.plan.paths.overlay) if s.name != vmstate.BASE_TAG]
        if not internal:
            return []
        meta = _read_meta(g)
        now = snapshot_key.key(g.plan)
        out = []
        for s in internal:
            m = meta.get(s.name, {})
            saved = m.get("key", {})
            invalid = "taken outside bridgelab" if not saved else snapshot_key.mismatch(saved, now)
            out.append(SnapshotInfo(guest=g.plan.name, name=s.name, size=s.vm_state_size, created=s.created,
                                    save_seconds=m.get("save_seconds"), valid_for=saved, invalid=invalid))
        return out

    def find(self, g: GuestRuntime, tag: str) -> SnapshotInfo:
        for s in self.of(g):
            if s.name == tag:
                return s
        raise UnknownSnapshot(f"guest {g.plan.name} has no snapshot {tag!r}")

    # ---- save

    async def save(self, names: list[str], tag: str) -> list[SnapshotInfo]:
        """One consistent state for several guests: all are paused before
        the first is saved and resumed after the last."""
        guests = self._targets(names)
        async with self._holding(guests):
            for g in guests:
                self._require_running(g)
            await asyncio.gather(*(vmstate.pause(g.process) for g in guests))
            try:
                await asyncio.gather(*(self._save_one(g, tag) for g in guests))
            finally:
                await asyncio.gather(*(vmstate.run(g.process) for g in guests), return_exceptions=True)
        return [self.find(g, tag) for g in guests]

    async def _save_one(self, g: GuestRuntime, tag: str) -> None:
        seconds = await vmstate.save(g.process, tag)
        meta = _read_meta(g)
        meta[tag] = {"key": snapshot_key.key(g.plan), "save_seconds": round(seconds, 3)}
        await self.ctx.in_thread(_write_meta, g, meta)
        log.info("guest %s: snapshot %r saved in %.2fs", g.plan.name, tag, seconds)

    async def keep_ready(self, g: GuestRuntime) -> None:
        """The warm-start snapshot of a guest verified after a cold boot, just
        before it is ready. A failure (a full disk) is logged; the lab goes on."""
        if not self.ctx.plan.warm_start:
            return
        try:
            await self._save_one(g, READY_TAG)
        except (BridgelabError, OSError) as e:
            log.warning("guest %s: no warm-start snapshot (%s); the next start boots it cold", g.plan.name, e)

    # ---- restore

    def warm_start(self, g: GuestRuntime) -> tuple[str | None, str]:
        """(READY_TAG, why) when this guest can start warm, else (None, why it boots cold)."""
        if not self.ctx.plan.warm_start:
            return None, "warm_start is off in the lab file"
        if self.ctx.cold:
            return None, "serve --cold"
        try:
            snap = next((s for s in self._read(g) if s.name == READY_TAG), None)
        except (CommandFailed, ValueError) as e:
            return None, f"its overlay is unreadable, so a new one is made: {str(e)[:300]}"
        if snap is None:
            return None, "no ready snapshot yet"
        if snap.invalid:
            return None, f"its ready snapshot is not valid for it: {snap.invalid}"
        return READY_TAG, f"ready snapshot of {time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(snap.created))}"

    async def restore(self, names: list[str], tag: str) -> list[GuestRuntime]:
        """Load `tag` into the running guests (the lifecycle then verifies
        them like a boot). The other guests keep running untouched."""
        guests = self._targets(names)
        for g in guests:
            snap = self.find(g, tag)
            if snap.invalid:
                raise GuestBusy(f"guest {g.plan.name}: snapshot {tag!r} is not valid for it now: {snap.invalid}")
        async with self._holding(guests):
            for g in guests:
                self._require_running(g)
            await asyncio.gather(*(self._load(g, tag) for g in guests), return_exceptions=True)
        return guests

    async def _load(self, g: GuestRuntime, tag: str) -> None:
        g.stages.clear()
        g.mesh = {}
        g.enter(GuestState.booting)
        t0 = time.monotonic()
        try:
            await vmstate.load(g.process, tag)
            t1 = time.monotonic()
            await vmstate.rearm_timers(g.process)
            await vmstate.run(g.process)
            log.info("guest %s: snapshot %r loaded in %.2fs (+%.2fs timers)", g.plan.name, tag, t1 - t0,
                     time.monotonic() - t1)
        except BridgelabError as e:
            g.fail_from(e)
            return
        g.restored_from = tag
        g.stage("restored")

    async def settle(self, g: GuestRuntime) -> None:
        """What a guest just restored needs before it is verified: a known
        console session, the host's time, neighbours told where it is, and
        its address read back. Clock and address go in one command over the
        console just taken over: under TCG that is about 0.2 s, where the
        agent's exec-and-poll takes about 1 s. A guest saved at its login
        prompt (its agent made it ready) is left there and settled through
        its agent: its console logs in at its first use."""
        assert g.console is not None and g.shell is not None
        console, shell = g.console, g.shell
        t0 = time.monotonic()
        at_shell, _ = await asyncio.gather(
            self.ctx.in_thread(console.resume, g.plan.login.user, g.plan.login.password, RESUME_TIMEOUT, False),
            vmstate.announce(g.process))
        t1 = time.monotonic()
        via: Shell = shell.console
        if not at_shell:
            agent = await self.ctx.in_thread(shell.agent_answers, AGENT_PING_TIMEOUT)
            if agent is not None:
                via = agent
            else:  # no agent to settle it through: log in now
                await self.ctx.in_thread(console.login, g.plan.login.user, g.plan.login.password, RESUME_TIMEOUT)
                at_shell = True
        if at_shell:
            g.stage("logged_in")
        await self.ctx.in_thread(network.set_clock_and_verify, via, g.net_config(), time.time)
        g.stage("configured")
        shell.reprobe_agent()
        log.info("guest %s: restored guest settled in %.2fs (console %.2fs, clock and address %.2fs via %s)",
                 g.plan.name, time.monotonic() - t0, t1 - t0, time.monotonic() - t1, via.via.value)

    # ---- delete

    async def delete(self, names: list[str], tag: str) -> None:
        guests = self._targets(names)
        for g in guests:
            self.find(g, tag)
        for g in guests:
            if g.process.exited() is None and g.process.qmp is not None:
                await vmstate.delete(g.process, tag)
            else:
                await self.ctx.in_thread(vmstate.delete_offline, g.plan, tag)
            meta = _read_meta(g)
            meta.pop(tag, None)
            await self.ctx.in_thread(_write_meta, g, meta)

    # ---- helpers

    def _targets(self, names: list[str]) -> list[GuestRuntime]:
        return [self.ctx.get(n) for n in names] if names else list(self.ctx.guests.values())

    @staticmethod
    def _require_running(g: GuestRuntime) -> None:
        if g.state is not GuestState.ready or g.process.qmp is None:
            raise GuestBusy(f"guest {g.plan.name} is {g.state.value}; snapshots are taken and restored "
                            f"while it is ready")

    @contextlib.asynccontextmanager
    async def _holding(self, guests: list[GuestRuntime]) -> AsyncIterator[None]:
        """No other change and no exec while the guests' state is saved or replaced."""
        async with contextlib.AsyncExitStack() as stack:
            for g in guests:
                await stack.enter_async_context(self.ctx.operating(g))
                await stack.enter_async_context(g.exec_lock)
            for g in guests:  # a console login after `ready` is never saved half-done
                await g.console_settled.wait()
            yield


__all__ = ["SnapshotInfo", "Snapshots"]
