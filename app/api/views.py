"""What the API shows of the running lab: guests, the lab summary, /wait's
result and console tails, built from the runner's state at the edge."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..guest.session import readable
from ..guest.process import tail
from ..lab.guest_runtime import GuestRuntime
from ..lab.runner import LabRunner
from ..lab.snapshots import SnapshotInfo
from ..lab.states import SETTLED, GuestState
from ..lab import peering
from ..model.peering import Declaration
from .schemas import FailedGuest, GuestReadiness, GuestView, PeerView, Readiness, SnapshotView, WaitResult


def tail_lines(text: str, lines: int = 15) -> str:
    """The last non-blank lines of a console's readable text."""
    kept = [ln for ln in text.splitlines() if ln.strip()]
    return "\n".join(kept[-lines:])


def console_tail(path: Path, lines: int = 15, limit: int = 8192) -> str:
    return tail_lines(readable(tail(path, limit)), lines)


def guest_view(g: GuestRuntime, tail: str | None = None) -> GuestView:
    """`tail`: the console's tail when the caller has it (view_cache.py keeps
    it from the console pump; the page's feed shows the live console and
    passes ""), else it is read from the console log."""
    p = g.plan
    return GuestView(
        name=p.name, state=g.state, arch=p.arch, accel=p.accel,
        ip=str(p.ip.ip), prefix=p.ip.network.prefixlen, gateway=str(p.gateway) if p.gateway else None,
        dns=[str(d) for d in p.dns], mac=p.mac, tap=p.tap, pid=g.process.pid,
        timestamps=dict(g.timestamps), stages=dict(g.stages), reason=g.reason, mesh=dict(g.mesh),
        changed=g.changed, console_tail=console_tail(p.paths.console_log) if tail is None else tail,
        ssh=f"127.0.0.1:{p.user_nic.ssh_port}" if p.user_nic else None, user=p.image.login.user)


def snapshot_view(s: SnapshotInfo) -> SnapshotView:
    return SnapshotView(guest=s.guest, name=s.name, size=s.size, created=s.created, save_seconds=s.save_seconds,
                        valid=s.invalid is None, invalid_because=s.invalid, valid_for=s.valid_for)


def wait_result(settled: bool, targets: list[GuestRuntime]) -> WaitResult:
    return WaitResult(
        settled=settled, ready=[g.plan.name for g in targets if g.state is GuestState.ready],
        failed=[FailedGuest(name=g.plan.name, reason=g.reason, console_tail=console_tail(g.plan.paths.console_log))
                for g in targets if g.state is GuestState.failed],
        guests=[guest_view(g) for g in targets])


def readiness(guests: list[GuestRuntime]) -> Readiness:
    """The lab is ready when every guest is: a failed or stopped one keeps it
    not ready, so a healthcheck on this never reports a lab that lost a guest."""
    def named(*states: GuestState) -> list[str]:
        return [g.plan.name for g in guests if g.state in states]
    return Readiness(ready=all(g.state is GuestState.ready for g in guests),
                     waiting=[g.plan.name for g in guests if g.state not in SETTLED],
                     failed=named(GuestState.failed), stopped=named(GuestState.stopped),
                     guests=[GuestReadiness(name=g.plan.name, state=g.state, reason=g.reason) for g in guests])


def summary(runner: LabRunner) -> dict[str, Any]:
    states: dict[str, int] = {}
    for g in runner.guests.values():
        states[g.state.value] = states.get(g.state.value, 0) + 1
    plan = runner.plan
    up = plan.uplink
    uplink_view = None if up is None else {
        "mode": up.mode, "interface": up.interface, "reason": up.reason,
        "lan": str(up.lan) if up.lan else None, "gateway": str(up.gateway) if up.gateway else None,
        "target": str(up.target) if up.target else None, "firewall_hints": runner.firewall_hints}
    return {"lab": plan.name, "bridge": plan.bridge, "address": str(plan.host_address), "uplink": uplink_view,
            "started_at": runner.started_at, "settled": runner.settled, "states": states}


__all__ = ["console_tail", "guest_view", "peer_view", "readiness", "summary", "tail_lines", "wait_result"]


def peer_view(v: peering.PeerView, mine: Declaration) -> PeerView:
    """`mine`: this host's declaration, built once for all the peers shown."""
    found = [c.message for c in peering.clashes(mine, v.declaration)] if v.declaration else []
    return PeerView(address=str(v.address), state=v.state, detail=v.detail, seen=v.seen,
                    declaration=v.declaration, clashes=found)
