"""Host network objects (bridge, taps) via pyroute2, plus the ledger.

Everything bridgelab creates on the host is written to a ledger file first
thing after creation. Teardown removes exactly the ledger's objects; a run
that was killed is swept from the ledger at the next start. An object is only
ever removed when its name, kind and ifindex (and the boot and network
namespace) still match the record, so a look-alike created by somebody else
is never touched.
"""

from __future__ import annotations

import errno
import ipaddress
import json
import logging
import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from .errors import HostNetError

log = logging.getLogger(__name__)


def boot_id() -> str:
    return Path("/proc/sys/kernel/random/boot_id").read_text().strip()


def netns_id() -> int:
    return os.stat("/proc/thread-self/ns/net").st_ino


def proc_start_time(pid: int) -> int | None:
    """Start time in clock ticks since boot (field 22 of /proc/PID/stat):
    with the PID it identifies a process even after PID reuse."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat.rsplit(")", 1)[1].split()[19])


class Ledger:
    """A JSON list of created objects, rewritten atomically on every change."""

    def __init__(self, path: Path):
        self.path = path
        self.entries: list[dict[str, Any]] = []
        if path.exists():
            try:
                self.entries = json.loads(path.read_text())["entries"]
            except (ValueError, KeyError, TypeError) as e:
                raise HostNetError(f"ledger {path} is corrupt ({e}); inspect and remove it by hand") from None

    def _save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        with open(tmp, "w") as f:
            json.dump({"entries": self.entries}, f, indent=1)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)

    def add(self, entry: dict[str, Any]) -> None:
        self.entries.append({**entry, "boot_id": boot_id(), "netns": netns_id(), "time": time.time()})
        self._save()

    def drop(self, entry: dict[str, Any]) -> None:
        self.entries = [e for e in self.entries if e is not entry]
        self._save()

    def links(self) -> list[dict[str, Any]]:
        return [e for e in self.entries if e["kind"] == "link"]

    def find_link(self, ifname: str) -> dict[str, Any] | None:
        return next((e for e in self.links() if e["ifname"] == ifname), None)

    def is_current(self, e: dict[str, Any]) -> bool:
        return e.get("boot_id") == boot_id() and e.get("netns") == netns_id()


@dataclass(frozen=True)
class LinkState:
    index: int
    kind: str | None
    master: int | None
    up: bool
    addresses: tuple[str, ...]


class HostNet:
    """Bridge and taps in the current network namespace."""

    def __init__(self, ledger: Ledger, owner: str):
        self.ledger = ledger
        self.owner = owner  # shown as the links' alias, for humans reading `ip link`
        self.ipr = IPRoute()

    def close(self) -> None:
        self.ipr.close()

    # ------------------------------------------------------------ queries

    def link(self, ifname: str) -> LinkState | None:
        try:
            idx = self.ipr.link_lookup(ifname=ifname)
        except NetlinkError:
            return None
        if not idx:
            return None
        msg = self.ipr.get_links(idx[0])[0]
        info = msg.get_attr("IFLA_LINKINFO")
        kind = info.get_attr("IFLA_INFO_KIND") if info else None
        addrs = tuple(f"{a.get_attr('IFA_ADDRESS')}/{a['prefixlen']}"
                      for a in self.ipr.get_addr(index=idx[0], family=2))
        return LinkState(index=idx[0], kind=kind, master=msg.get_attr("IFLA_MASTER"),
                         up=bool(msg["flags"] & 1), addresses=addrs)

    def _owned(self, ifname: str, state: LinkState) -> bool:
        e = self.ledger.find_link(ifname)
        return e is not None and self.ledger.is_current(e) and e["ifindex"] == state.index

    # ------------------------------------------------------------ ensure

    def _create(self, ifname: str, expected_kind: str, **kwargs: Any) -> LinkState:
        try:
            self.ipr.link("add", ifname=ifname, **kwargs)
        except NetlinkError as e:
            raise HostNetError(f"cannot create {expected_kind} {ifname}: {os.strerror(e.code)}") from None
        except OSError as e:  # the tap path opens /dev/net/tun
            hint = "; is /dev/net/tun present (modprobe tun)?" if e.errno == errno.ENOENT else ""
            raise HostNetError(f"cannot create tap {ifname}: {e.strerror}{hint}") from None
        state = self.link(ifname)
        assert state is not None
        self.ledger.add({"kind": "link", "ifname": ifname, "ifindex": state.index, "link_kind": expected_kind})
        self.ipr.link("set", index=state.index, ifalias=self.owner)
        log.info("created %s %s (ifindex %d)", expected_kind, ifname, state.index)
        return state

    def _existing(self, ifname: str, kind: str) -> LinkState | None:
        state = self.link(ifname)
        if state is None:
            return None
        if not self._owned(ifname, state):
            raise HostNetError(f"{ifname} already exists and bridgelab did not create it; "
                               f"remove it or choose another name (never modifying what it does not own)")
        if state.kind != kind:
            raise HostNetError(f"{ifname} is a {state.kind}, expected a {kind}")
        return state

    def ensure_bridge(self, ifname: str, address: ipaddress.IPv4Interface, mac: str) -> LinkState:
        state = self._existing(ifname, "bridge")
        if state is None:
            try:
                # Bridged guest<->guest frames must not go through iptables:
                # Docker's FORWARD DROP would otherwise cut the lab in two.
                state = self._create(ifname, "bridge", kind="bridge", address=mac, br_stp_state=0,
                                     br_nf_call_iptables=0, br_nf_call_ip6tables=0, br_nf_call_arptables=0)
            except HostNetError:
                if self.link(ifname) is not None:
                    raise
                state = self._create(ifname, "bridge", kind="bridge", address=mac, br_stp_state=0)
        if str(address) not in state.addresses:
            try:
                self.ipr.addr("add", index=state.index, address=str(address.ip), prefixlen=address.network.prefixlen)
            except NetlinkError as e:
                if e.code != errno.EEXIST:
                    raise HostNetError(f"cannot add {address} to {ifname}: {os.strerror(e.code)}") from None
        if not state.up:
            self.ipr.link("set", index=state.index, state="up")
        return self.link(ifname)  # type: ignore[return-value]

    def ensure_tap(self, ifname: str, bridge: LinkState) -> LinkState:
        state = self._existing(ifname, "tun")
        if state is None:
            state = self._create(ifname, "tun", kind="tuntap", mode="tap")
        if state.master != bridge.index or not state.up:
            self.ipr.link("set", index=state.index, master=bridge.index, state="up")
        return state

    # ------------------------------------------------------------ removal

    def remove_link(self, entry: dict[str, Any]) -> bool:
        """Delete a ledger link if it is still the one we made. True if deleted."""
        deleted = False
        state = self.link(entry["ifname"])
        if (state is not None and self.ledger.is_current(entry) and state.index == entry["ifindex"]
                and state.kind == entry["link_kind"]):
            try:
                self.ipr.link("del", index=state.index)
                deleted = True
                log.info("removed %s %s", entry["link_kind"], entry["ifname"])
            except NetlinkError as e:
                if e.code != errno.ENODEV:
                    raise HostNetError(f"cannot remove {entry['ifname']}: {os.strerror(e.code)}") from None
        elif state is not None:
            log.warning("not removing %s: it is no longer the object bridgelab created", entry["ifname"])
        self.ledger.drop(entry)
        return deleted

    def teardown(self) -> list[str]:
        """Remove every link in the ledger, taps before bridges."""
        removed = []
        for e in sorted(self.ledger.links(), key=lambda e: e["link_kind"] == "bridge"):
            if self.remove_link(e):
                removed.append(e["ifname"])
        return removed


def kill_recorded_processes(ledger: Ledger, grace: float = 5.0) -> list[int]:
    """Kill processes a killed run left behind (qemu), if PID and start time match."""
    killed = []
    for e in [e for e in ledger.entries if e["kind"] == "process"]:
        pid = e["pid"]
        if ledger.is_current(e) and proc_start_time(pid) == e["start_time"]:
            os.kill(pid, signal.SIGTERM)
            deadline = time.monotonic() + grace
            while proc_start_time(pid) == e["start_time"] and time.monotonic() < deadline:
                time.sleep(0.05)
            if proc_start_time(pid) == e["start_time"]:
                os.kill(pid, signal.SIGKILL)
            killed.append(pid)
            log.info("killed leftover process %d (%s)", pid, e.get("what", ""))
        ledger.drop(e)
    return killed


def sweep(ledger: Ledger, owner: str) -> tuple[list[int], list[str]]:
    """Undo whatever a previous run recorded and did not clean up."""
    if not ledger.entries:
        return [], []
    killed = kill_recorded_processes(ledger)
    net = HostNet(ledger, owner)
    try:
        removed = net.teardown()
    finally:
        net.close()
    if killed or removed:
        log.warning("swept a previous run: killed %s, removed %s", killed, removed)
    return killed, removed


def apply(net: HostNet, bridge: str, address: ipaddress.IPv4Interface, bridge_mac: str,
          taps: Iterable[str]) -> dict[str, LinkState]:
    """Converge the bridge and its taps; returns the state of each link."""
    br = net.ensure_bridge(bridge, address, bridge_mac)
    states = {bridge: br}
    for tap in taps:
        states[tap] = net.ensure_tap(tap, br)
    return states
