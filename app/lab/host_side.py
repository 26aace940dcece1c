"""The lab's host side as one context manager: the lock, then the bridge,
taps, firewall and uplink; on exit, everything the ledger records, in
host/undo's one order (the same order the start-up sweep and cleanup use)."""

from __future__ import annotations

import ipaddress
import logging
from types import TracebackType

from ..errors import HostNetError
from ..host import firewall, links, undo, uplink, vxlan
from ..host.ledger import Ledger
from ..host.lablock import LabLock
from ..model.plan import LabPlan, OverlayPlan

log = logging.getLogger(__name__)


class HostSide:
    """`with HostSide(plan):` locks the lab, sweeps, builds; leaving undoes it all.
    A build that fails halfway is undone and the lock released before the
    exception leaves `with`."""

    def __init__(self, plan: LabPlan):
        self._plan = plan
        self.name = plan.name
        self.bridge = plan.bridge
        self.proxy_arp = plan.proxy_arp
        self.ledger_path = plan.state_dir / "ledger.json"
        self.owner = firewall.lab_tag(plan.name)  # links carry the rules' tag as their alias
        self.ledger: Ledger | None = None  # opened once the lab is locked
        self.ruleset = firewall.Ruleset(self.owner)
        self.firewall_hints: list[str] = []
        self._lock = LabLock(plan.name, plan.state_dir)

    def __enter__(self) -> HostSide:
        self.lock()
        try:
            self.setup(self._plan)
        except BaseException:
            self.teardown()
            raise
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.teardown()

    def lock(self) -> None:
        """One daemon per lab (see lablock); the ledger is read under the lock."""
        self._lock.acquire()
        self.ledger = Ledger(self.ledger_path)

    def setup(self, plan: LabPlan) -> None:
        """Sweep what a killed run left, then build; a failure halfway undoes it."""
        ledger = self._ledger()
        if undone := undo.undo_recorded(ledger):
            log.warning("swept what an earlier run of lab %s left: %s", self.name, "; ".join(undone.lines()))
        net = links.HostNet(ledger, self.owner)
        try:
            states = links.apply(net, plan.bridge, plan.bridge_address, plan.bridge_mac, [g.tap for g in plan.guests])
            if plan.overlay is not None:
                vxlan.ensure(net, plan.overlay, states[plan.bridge])
                log.info("VXLAN %s: VNI %d, UDP %d from %s on %s to %s; %s", plan.overlay.device, plan.overlay.vni,
                         plan.overlay.port, plan.overlay.local, plan.overlay.interface,
                         ", ".join(map(str, plan.overlay.peers)) or "(no peer yet)", plan.overlay.mtu_reason)
            self.ruleset = firewall.apply(ledger, plan)  # also sweeps rules by tag, in case the ledger was lost
            uplink.apply(ledger, plan)
            self._warn_host_firewalls(plan)
        except BaseException:
            undo.undo_recorded(ledger)
            raise
        finally:
            net.close()

    def _warn_host_firewalls(self, plan: LabPlan) -> None:
        self.firewall_hints = firewall.firewall_hints(list(self.ruleset.managers), plan)
        for hint in self.firewall_hints:
            log.warning("a host firewall may drop lab traffic; if the self-test fails at netfilter: %s", hint)

    def teardown(self) -> None:
        if self.ledger is not None:
            undo.undo_recorded(self.ledger)
            if not self.ledger.entries:
                self.ledger.path.unlink(missing_ok=True)
        self._lock.release()

    def _ledger(self) -> Ledger:
        if self.ledger is None:
            raise HostNetError(f"lab {self.name}: the host side is used before the lab is locked")
        return self.ledger

    def add_tap(self, tap: str) -> None:
        net = links.HostNet(self._ledger(), self.owner)
        try:
            bridge = net.link(self.bridge)
            if bridge is None:
                raise HostNetError(f"bridge {self.bridge} is gone")
            net.ensure_tap(tap, bridge)
        finally:
            net.close()

    def remove_tap(self, tap: str) -> None:
        ledger = self._ledger()
        entry = ledger.find_link(tap)
        if entry is None:
            return
        net = links.HostNet(ledger, self.owner)
        try:
            net.remove_link(entry)
        finally:
            net.close()

    def set_peers(self, overlay: OverlayPlan) -> None:
        """The VXLAN port's flood list and the firewall's accept rules follow
        a new list of peers (a DNS name that lists other nodes now)."""
        vxlan.set_peers(overlay.device, overlay.peers)
        self.ruleset = firewall.refresh_vxlan_chain(self.ruleset, overlay)

    def move_route(self, old: ipaddress.IPv4Address | None, new: ipaddress.IPv4Address | None) -> None:
        """proxy-arp: the /32 route follows a guest's address (no-op otherwise)."""
        if not self.proxy_arp:
            return
        ledger = self._ledger()
        if old is not None:
            uplink.remove_guest_route(ledger, old)
        if new is not None:
            uplink.add_guest_route(ledger, new, self.bridge)


__all__ = ["HostSide"]
