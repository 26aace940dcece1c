"""Probes from inside the guests: the mesh (every ready guest pings the
bridge and every other guest, the peers' bridges and guests too, failures
explained) and the uplink (the guest pings the uplink's target; on failure,
the layer that drops it is found)."""

from __future__ import annotations

import asyncio
import ipaddress
import logging

from dataclasses import dataclass

from .reports import MeshPair, MeshReport, UplinkProbe
from ..errors import BridgelabError
from ..guest import network
from ..guest.shell import Shell
from ..host import uplink_diagnosis
from .context import LabContext
from .guest_runtime import GuestRuntime
from .peering import Peering, PeerView
from ..model.peering import PeerGuest
from .states import GuestState

log = logging.getLogger(__name__)
Target = tuple[str, ipaddress.IPv4Address, GuestRuntime | None]


@dataclass(frozen=True)
class RemoteTarget:
    """A peer's bridge (guest None) or one of its guests, as it declared them."""

    view: PeerView
    guest: PeerGuest | None

    @property
    def name(self) -> str:
        return f"{self.guest.name if self.guest else 'bridge'}@{self.view.address}"

    @property
    def ip(self) -> ipaddress.IPv4Address:
        decl = self.view.declaration
        assert decl is not None
        return self.guest.ip if self.guest else decl.bridge.ip


class Probes:
    def __init__(self, ctx: LabContext, peering: Peering | None = None):
        self.ctx = ctx
        self.peering = peering
        self._lock = asyncio.Lock()  # one uplink probe at a time: the evidence includes host-wide counters

    async def mesh_check(self) -> MeshReport:
        if self.peering is not None:
            await self.peering.refresh()  # the peers' guests as they are now, not as of up to 10 s ago
        guests = self.ctx.guests.values()
        sources = [g for g in guests if g.state is GuestState.ready]
        skipped = [g.plan.name for g in guests if g.state is not GuestState.ready]
        results = await asyncio.gather(*(self._mesh_from(g) for g in sources))
        pairs = [p for r in results for p in r]
        probes = [p for g in sources if (p := await self.probe_uplink(g)) is not None]
        return MeshReport(ok=bool(pairs) and all(p.ok for p in pairs) and all(p.ok for p in probes),
                          pairs=pairs, uplink=probes, skipped=skipped)

    async def probe_uplink(self, g: GuestRuntime) -> UplinkProbe | None:
        plan = self.ctx.plan
        up = plan.uplink
        if up is None or up.target is None:
            return None
        target = up.target
        ruleset = self.ctx.host.ruleset
        async with self._lock, g.exec_lock:
            shell = self.ctx.require_shell(g)
            before = await self.ctx.in_thread(uplink_diagnosis.counters, plan, ruleset)
            reached = await self.ctx.in_thread(network.ping_all, shell, [target])
            if reached.get(str(target)):
                return UplinkProbe(source=g.plan.name, target=str(target), ok=True, layer="ok",
                                   detail=f"ping answered through {up.mode} on {up.interface}")
            after = await self.ctx.in_thread(uplink_diagnosis.counters, plan, ruleset)
            ev = await self.ctx.in_thread(self._uplink_evidence, shell, target, before, after)
        layer, detail = uplink_diagnosis.diagnose(ev, plan, target, self.ctx.host.firewall_hints)
        log.warning("uplink self-test: %s cannot reach %s: %s: %s", g.plan.name, target, layer, detail)
        return UplinkProbe(source=g.plan.name, target=str(target), ok=False, layer=layer, detail=detail)

    def _uplink_evidence(self, shell: Shell, target: ipaddress.IPv4Address,
                         before: uplink_diagnosis.Counters,
                         after: uplink_diagnosis.Counters) -> uplink_diagnosis.Evidence:
        route = network.route_get(shell, target)
        hop = uplink_diagnosis.next_hop(route, target) if route is not None else target
        forwarding, proxy_arp = uplink_diagnosis.host_side(self.ctx.plan)
        return uplink_diagnosis.Evidence(
            guest_route=route, next_hop_arp=network.neighbour(shell, hop) if route is not None else "none",
            ip_forward=forwarding, host_route_dev=uplink_diagnosis.host_route_dev(target), before=before,
            after=after, host_reaches_target=uplink_diagnosis.host_reaches(target), uplink_proxy_arp=proxy_arp,
            foreign_forward_drops=tuple(uplink_diagnosis.foreign_forward_drops()))

    async def log_uplink_selftest(self) -> None:
        """Once the lab first settles: say in the log whether the uplink works."""
        up = self.ctx.plan.uplink
        if up is None:
            return
        if up.target is None:
            log.info("uplink %s on %s: no self-test target (no gateway; set uplink.target)", up.mode, up.interface)
            return
        for g in [g for g in self.ctx.guests.values() if g.state is GuestState.ready]:
            try:
                probe = await self.probe_uplink(g)
            except BridgelabError as e:  # the guest got busy or went away meanwhile
                log.info("uplink self-test from %s skipped: %s", g.plan.name, e)
                continue
            if probe is not None and probe.ok:
                log.info("uplink self-test: %s reaches %s (%s on %s)", g.plan.name, up.target, up.mode,
                         up.interface)

    async def _mesh_from(self, g: GuestRuntime) -> list[MeshPair]:
        plan = self.ctx.plan
        targets: list[Target] = [("bridge" if plan.bridge_address else "host", plan.host_address.ip, None)]
        targets += [(o.plan.name, o.plan.ip.ip, o) for o in self.ctx.guests.values() if o is not g]
        remote = self._remote_targets()
        targets += [(r.name, r.ip, None) for r in remote]
        async with g.exec_lock:
            shell = self.ctx.require_shell(g)
            rx_before = await self.ctx.in_thread(self.peering.rx_packets) if self.peering and remote else 0
            pairs = await self.ctx.in_thread(_probe_all, shell, g, targets)
        if remote:
            pairs = await self.ctx.in_thread(self._judge_remote, pairs, {r.name: r for r in remote}, rx_before)
        return pairs

    def _remote_targets(self) -> list[RemoteTarget]:
        if self.peering is None:
            return []
        views = [v for v in self.peering.views.values() if v.declaration is not None]
        return [RemoteTarget(v, guest) for v in views for guest in (None, *(v.declaration.guests
                                                                             if v.declaration else ()))]

    def _judge_remote(self, pairs: list[MeshPair], remote: dict[str, RemoteTarget], rx_before: int) -> list[MeshPair]:
        """A peer's guest that does not answer: down on its host (as the peer,
        answering now, declares it), or the underlay between the hosts (one
        verdict per peer). A peer that does not answer is the underlay's
        case first: what it declared last is stale."""
        assert self.peering is not None
        verdicts: dict[ipaddress.IPv4Address, str | None] = {}
        out = []
        for p in pairs:
            r = remote.get(p.target)
            if p.ok or r is None:
                out.append(p)
                continue
            if r.view.state == "up" and r.guest is not None and r.guest.state != GuestState.ready.value:
                out.append(p.model_copy(update={"diagnosis": "guest_down", "detail": (
                    f"guest {r.guest.name} is {r.guest.state} on peer {r.view.address} (as it last said)")}))
                continue
            if r.view.address not in verdicts:
                verdicts[r.view.address] = self.peering.underlay_verdict(r.view, rx_before)
            verdict = verdicts[r.view.address]
            out.append(p.model_copy(update={"diagnosis": "underlay", "detail": verdict}) if verdict else p)
        return out


def _probe_all(shell: Shell, g: GuestRuntime, targets: list[Target]) -> list[MeshPair]:
    def pair(name: str, ip: ipaddress.IPv4Address, ok: bool, diagnosis: str, detail: str) -> MeshPair:
        return MeshPair(source=g.plan.name, target=name, target_ip=str(ip), ok=ok,
                        diagnosis=diagnosis, detail=detail)
    try:
        network.verify(shell, g.net_config())
    except BridgelabError as e:
        return [pair(n, ip, False, "source_not_configured", str(e)) for n, ip, _ in targets]
    reached = network.ping_all(shell, [ip for _, ip, _ in targets])
    out = []
    for name, ip, other in targets:
        if reached.get(str(ip)):
            out.append(pair(name, ip, True, "ok", "ping answered"))
        elif other is not None and (other.process.exited() is not None
                                    or other.state in (GuestState.stopped, GuestState.stopping)):
            out.append(pair(name, ip, False, "guest_down", f"guest {name} is {other.state.value}"))
        elif network.neighbour(shell, ip) == "resolved":
            out.append(pair(name, ip, False, "arp_no_icmp",
                            "ARP resolved but no ICMP reply: a firewall on the path or in the target drops it"))
        elif other is not None and other.state is not GuestState.ready:
            out.append(pair(name, ip, False, "address_not_configured",
                            f"no ARP reply; guest {name} is {other.state.value}, its address may not be up"))
        else:
            out.append(pair(name, ip, False, "no_arp",
                            "no ARP reply: L2 problem (tap not on the bridge, link down, wrong address)"))
    return out


__all__ = ["Probes"]
