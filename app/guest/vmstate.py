"""Snapshots of one guest, as QEMU keeps them: internal snapshots in the
guest's qcow2 overlay, each holding memory, device state and the disk
together. The base image is the overlay's backing file and is never written.

Why internal snapshots rather than migration to a file plus a copy of the
disk: one file per guest holds everything, a snapshot is consistent by
construction (QEMU stops the guest, writes its RAM and device state into the
overlay and marks the disk clusters in one step), restoring into the running
process keeps the console and agent sockets, and qemu-img can list and delete
snapshots while no qemu runs. Measured on this 2-core TCG host, Debian sid
riscv64 with 1 GiB: savevm 0.38-0.44 s, loadvm in place 0.49 s, a fresh
process with -loadvm ready to run in 0.68-1.23 s (four runs).

The overlay also carries `bridgelab-base`, a disk-only snapshot taken while it
was still empty: a cold boot reverts to it, so cold boots start from the
pristine image and the guest's named snapshots survive them.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from .. import proc
from qemu.qmp.error import QMPError

from ..errors import CommandFailed, GuestError
from ..model.plan import GuestPlan
from ..model.spec import Arch
from . import gdbstub, qemu_argv

if TYPE_CHECKING:  # process.py prepares overlays with this module
    from .process import GuestProcess

log = logging.getLogger(__name__)

BASE_TAG = "bridgelab-base"
READY_TAG = "ready"


class SnapshotError(GuestError):
    """QEMU could not save, load or delete a snapshot."""


@dataclass(frozen=True)
class InternalSnapshot:
    name: str
    vm_state_size: int  # bytes of RAM and device state; 0 for a disk-only snapshot
    created: float


# ------------------------------------------------------------ the overlay, offline


def overlay_info(overlay: Path) -> dict[str, object]:
    """qemu-img's view of the overlay; -U also works while a qemu holds it."""
    out = proc.run(["qemu-img", "info", "-U", "--output=json", str(overlay)], timeout=30).stdout
    info: dict[str, object] = json.loads(out)
    return info


def list_internal(overlay: Path) -> list[InternalSnapshot]:
    if not overlay.exists():
        return []
    snaps = overlay_info(overlay).get("snapshots") or []
    assert isinstance(snaps, list)
    return [InternalSnapshot(name=s["name"], vm_state_size=int(s.get("vm-state-size", 0)),
                             created=s.get("date-sec", 0) + s.get("date-nsec", 0) / 1e9) for s in snaps]


def create_overlay(g: GuestPlan) -> None:
    """A new, empty overlay (mode 0600: it will hold the guest's memory) with
    the base snapshot that cold boots revert to."""
    g.paths.overlay.unlink(missing_ok=True)
    proc.run(qemu_argv.overlay_argv(g))
    os.chmod(g.paths.overlay, 0o600)
    proc.run(["qemu-img", "snapshot", "-c", BASE_TAG, str(g.paths.overlay)])


def repair_leaks(g: GuestPlan) -> str | None:
    """Before an overlay is used again: a qemu that was killed leaves leaked
    clusters (wasted space, no harm), which are freed here; why it cannot be
    used at all (corrupt, unreadable), or None."""
    if not g.paths.overlay.exists():
        return "no overlay yet"
    r = proc.run(["qemu-img", "check", "-q", "-r", "leaks", str(g.paths.overlay)], check=False, timeout=120)
    if r.returncode != 0:
        return f"qemu-img check: {(r.stderr or r.stdout).strip()[:300] or f'exit {r.returncode}'}"
    return None


def reusable_overlay(g: GuestPlan) -> str | None:
    """Why the existing overlay cannot be reverted and reused (None: it can)."""
    if (problem := repair_leaks(g)) is not None:
        return problem
    try:
        info = overlay_info(g.paths.overlay)
    except (CommandFailed, ValueError) as e:
        return f"unreadable overlay: {e}"
    if info.get("full-backing-filename", info.get("backing-filename")) != str(g.image.disk):
        return "the image changed"
    snaps = info.get("snapshots") or []
    assert isinstance(snaps, list)
    if BASE_TAG not in {s["name"] for s in snaps}:
        return "an overlay from before snapshots"
    return None


def revert_to_base(g: GuestPlan) -> None:
    proc.run(["qemu-img", "snapshot", "-a", BASE_TAG, str(g.paths.overlay)])


def delete_offline(g: GuestPlan, tag: str) -> None:
    proc.run(["qemu-img", "snapshot", "-d", tag, str(g.paths.overlay)])


# ------------------------------------------------------------ a running qemu


async def _hmp(process: "GuestProcess", line: str) -> str:
    """HMP through QMP: savevm/loadvm/delvm report failure only as text."""
    out = await _qmp(process, "human-monitor-command", {"command-line": line})
    return out if isinstance(out, str) else ""


async def _qmp(process: "GuestProcess", cmd: str, args: dict[str, object] | None = None) -> object:
    try:
        return await process.execute(cmd, args)
    except (QMPError, OSError, EOFError) as e:
        raise SnapshotError(f"{process.plan.name}: QMP {cmd}: {e}") from None


def _failed(output: str) -> bool:
    return "rror" in output  # "Error: ..." on every failure of these commands


async def pause(process: "GuestProcess") -> None:
    await _qmp(process, "stop")


async def run(process: "GuestProcess") -> None:
    await _qmp(process, "cont")


async def save(process: "GuestProcess", tag: str) -> float:
    """Save memory, devices and disk under `tag` (replacing one of that name);
    returns the seconds it took. The guest is paused meanwhile and resumes
    only if it was running."""
    t0 = time.monotonic()
    out = await _hmp(process, f"savevm {tag}")
    if _failed(out):
        raise SnapshotError(f"{process.plan.name}: savevm {tag}: {out.strip()}")
    return time.monotonic() - t0


async def load(process: "GuestProcess", tag: str) -> None:
    """Load `tag` into the running process, leaving the CPUs stopped."""
    await _qmp(process, "stop")
    out = await _hmp(process, f"loadvm {tag}")
    if _failed(out):
        raise SnapshotError(f"{process.plan.name}: loadvm {tag}: {out.strip()}")


async def delete(process: "GuestProcess", tag: str) -> None:
    out = await _hmp(process, f"delvm {tag}")
    if _failed(out):
        raise SnapshotError(f"{process.plan.name}: delvm {tag}: {out.strip()}")


async def rearm_timers(process: "GuestProcess") -> None:
    """After a load, before the CPUs run: riscv64 guests on QEMU < 10.2 need
    one timer interrupt to re-arm their timer (see gdbstub.py). Other
    architectures migrate their timers. Harmless where it is not needed: the
    guest's timer handler finds nothing due and programs the next event."""
    if process.plan.arch is not Arch.riscv64:
        return
    sock = process.plan.paths.dir / "gdb.sock"
    sock.unlink(missing_ok=True)
    await _hmp(process, f"gdbserver unix:{sock},server=on,wait=off")
    try:
        await asyncio.to_thread(gdbstub.raise_supervisor_timer, sock)
    except OSError as e:
        raise SnapshotError(f"{process.plan.name}: gdbstub: {e}") from None
    finally:
        await _hmp(process, "gdbserver none")
        sock.unlink(missing_ok=True)


async def announce(process: "GuestProcess") -> None:
    """Neighbours learn where the guest's MACs are now (gratuitous ARP/RARP)."""
    await _qmp(process, "announce-self", {"initial": 50, "max": 550, "rounds": 3, "step": 100})


__all__ = ["BASE_TAG", "InternalSnapshot", "READY_TAG", "SnapshotError", "announce", "create_overlay", "delete",
           "delete_offline", "list_internal", "load", "overlay_info", "pause", "rearm_timers", "repair_leaks",
           "reusable_overlay", "revert_to_base", "run", "save"]
