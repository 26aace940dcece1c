"""Host network objects (bridge, taps) via pyroute2, and the processes a
killed run left, both as recorded in the ledger (ledger.py). An object is only
ever removed when its name, kind and ifindex (and the boot and network
namespace) still match the record, so a look-alike created by somebody else
is never touched.
"""

from __future__ import annotations

import dataclasses
import errno
import ipaddress
import logging
import os
import signal
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from ..errors import HostNetError
from .ledger import Ledger, LinkEntry, ProcessEntry
from .netlink_batch import LinkBatch, LinkSet
from .tuntap import create_tap

log = logging.getLogger(__name__)


def _stat(pid: int) -> list[str] | None:
    """Fields 3.. of /proc/PID/stat (after the command name, which may hold spaces)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None


def proc_start_time(pid: int) -> int | None:
    """Start time in clock ticks since boot (field 22 of /proc/PID/stat):
    with the PID it identifies a process even after PID reuse."""
    fields = _stat(pid)
    return int(fields[19]) if fields else None


def is_running(pid: int, start_time: int) -> bool:
    """The recorded process still exists and has not exited (a zombie only
    waits for its parent to reap it)."""
    fields = _stat(pid)
    return fields is not None and int(fields[19]) == start_time and fields[0] != "Z"


@dataclass(frozen=True)
class LinkState:
    index: int
    kind: str | None
    master: int | None
    up: bool
    addresses: tuple[str, ...]


class HostNet:
    """Bridge and taps in the current network namespace."""

    def __init__(self, ledger: Ledger, owner: str = ""):
        self.ledger = ledger
        self.owner = owner  # set as the alias of links it creates, for humans reading `ip link`
        self.ipr = IPRoute()
        self.batch = LinkBatch()

    def close(self) -> None:
        self.ipr.close()
        self.batch.close()

    # ------------------------------------------------------------ queries

    def _state(self, msg: Any, with_addresses: bool) -> LinkState:
        info = msg.get_attr("IFLA_LINKINFO")
        kind = info.get_attr("IFLA_INFO_KIND") if info else None
        addrs: tuple[str, ...] = ()
        if with_addresses:
            addrs = tuple(f"{a.get_attr('IFA_ADDRESS')}/{a['prefixlen']}"
                          for a in self.ipr.get_addr(index=msg["index"], family=2))
        return LinkState(index=msg["index"], kind=kind, master=msg.get_attr("IFLA_MASTER"),
                         up=bool(msg["flags"] & 1), addresses=addrs)

    def link(self, ifname: str, with_addresses: bool = False) -> LinkState | None:
        try:
            msg = self.ipr.link("get", ifname=ifname)[0]
        except NetlinkError as e:
            if e.code in (errno.ENODEV, errno.ENOENT):
                return None
            raise
        return self._state(msg, with_addresses)

    def snapshot(self) -> dict[str, LinkState]:
        """Every link, in one netlink dump (cheaper than one query per tap)."""
        return {m.get_attr("IFLA_IFNAME"): self._state(m, False) for m in self.ipr.get_links()}

    def _owned(self, ifname: str, state: LinkState) -> bool:
        e = self.ledger.find_link(ifname)
        return e is not None and self.ledger.is_current(e) and e.ifindex == state.index

    # ------------------------------------------------------------ ensure

    def create_link(self, ifname: str, kind: str, **kwargs: Any) -> LinkState:
        """A link made through netlink, ledgered at once."""
        try:
            self.ipr.link("add", ifname=ifname, kind=kind, **kwargs)
        except NetlinkError as e:
            raise HostNetError(f"cannot create {kind} {ifname}: {os.strerror(e.code)}") from None
        return self._created(ifname, kind)

    def _create_tap(self, ifname: str) -> LinkState:
        create_tap(ifname)  # /dev/net/tun: no netlink round trip, an existing name refused
        return self._created(ifname, "tun")

    def _created(self, ifname: str, kind: str) -> LinkState:
        """Ledger a link just made; SIOCGIFINDEX gives its index without another netlink round trip."""
        state = LinkState(index=socket.if_nametoindex(ifname), kind=kind, master=None, up=False, addresses=())
        self.ledger.add(LinkEntry(ifname=ifname, ifindex=state.index, link_kind=kind))
        log.info("created %s %s (ifindex %d)", kind, ifname, state.index)
        return state

    def existing(self, ifname: str, kind: str, with_addresses: bool = False,
                  known: dict[str, LinkState] | None = None) -> LinkState | None:
        state = known.get(ifname) if known is not None else self.link(ifname, with_addresses)
        if state is None:
            return None
        if not self._owned(ifname, state):
            raise HostNetError(f"{ifname} already exists and bridgelab did not create it; "
                               f"remove it or choose another name (never modifying what it does not own)")
        if state.kind != kind:
            raise HostNetError(f"{ifname} is a {state.kind}, expected a {kind}")
        return state

    def ensure_bridge(self, ifname: str, address: ipaddress.IPv4Interface | None, mac: str) -> LinkState:
        state = self.existing(ifname, "bridge", with_addresses=True)
        if state is None:
            # Guest<->guest frames crossing iptables on Docker hosts are handled
            # in firewall.py: a per-bridge nf_call_iptables=0 cannot override
            # the global br_netfilter sysctl.
            state = self.create_link(ifname, "bridge", address=mac, br_stp_state=0)
        if address is not None and str(address) not in state.addresses:
            try:
                self.ipr.addr("add", index=state.index, address=str(address.ip), prefixlen=address.network.prefixlen)
            except NetlinkError as e:
                if e.code != errno.EEXIST:
                    raise HostNetError(f"cannot add {address} to {ifname}: {os.strerror(e.code)}") from None
            state = dataclasses.replace(state, addresses=(*state.addresses, str(address)))
        if not state.up:
            self.ipr.link("set", index=state.index, state="up", ifalias=self.owner)
            state = dataclasses.replace(state, up=True)
        return state

    def ensure_taps(self, ifnames: Iterable[str], bridge: LinkState,
                    known: dict[str, LinkState] | None = None) -> dict[str, LinkState]:
        """Every tap created if missing, then attached, up and labelled for
        humans reading `ip link`: those that need it all in one netlink batch."""
        states = {}
        for ifname in ifnames:
            state = self.existing(ifname, "tun", known=known)
            states[ifname] = state if state is not None else self._create_tap(ifname)
        todo = [name for name, st in states.items() if st.master != bridge.index or not st.up]
        self.batch.set_links([LinkSet(name, states[name].index, bridge.index, self.owner) for name in todo])
        for name in todo:
            states[name] = dataclasses.replace(states[name], master=bridge.index, up=True)
        return states

    def ensure_tap(self, ifname: str, bridge: LinkState, known: dict[str, LinkState] | None = None) -> LinkState:
        return self.ensure_taps([ifname], bridge, known)[ifname]

    # ------------------------------------------------------------ removal

    def remove_link(self, entry: LinkEntry) -> bool:
        """Delete a ledger link if it is still the one we made. True if deleted."""
        deleted = False
        state = self.link(entry.ifname)
        if (state is not None and self.ledger.is_current(entry) and state.index == entry.ifindex
                and state.kind == entry.link_kind):
            try:
                self.ipr.link("del", index=state.index)
                deleted = True
                log.info("removed %s %s", entry.link_kind, entry.ifname)
            except NetlinkError as e:
                if e.code != errno.ENODEV:
                    raise HostNetError(f"cannot remove {entry.ifname}: {os.strerror(e.code)}") from None
        elif state is not None:
            log.warning("not removing %s: it is no longer the object bridgelab created", entry.ifname)
        self.ledger.drop(entry)
        return deleted

    def teardown(self) -> list[str]:
        """Remove every link in the ledger, taps before bridges."""
        removed = []
        for e in sorted(self.ledger.of(LinkEntry), key=lambda e: e.link_kind == "bridge"):
            if self.remove_link(e):
                removed.append(e.ifname)
        return removed


def kill_recorded_processes(ledger: Ledger, grace: float = 5.0) -> list[str]:
    """Kill processes a killed run left behind (qemu), if PID and start time
    match. All are asked (SIGTERM) at once, then each gets the same grace."""
    alive = []
    for e in ledger.of(ProcessEntry):
        if ledger.is_current(e) and is_running(e.pid, e.start_time):
            os.kill(e.pid, signal.SIGTERM)
            alive.append(e)
        else:
            ledger.drop(e)
    deadline = time.monotonic() + grace
    while any(is_running(e.pid, e.start_time) for e in alive) and time.monotonic() < deadline:
        time.sleep(0.05)
    killed = []
    for e in alive:
        if is_running(e.pid, e.start_time):
            os.kill(e.pid, signal.SIGKILL)
        killed.append(f"{e.what} (pid {e.pid})")
        log.info("killed leftover process %d (%s)", e.pid, e.what)
        ledger.drop(e)
    return killed


def apply(net: HostNet, bridge: str, address: ipaddress.IPv4Interface | None, bridge_mac: str,
          taps: Iterable[str]) -> dict[str, LinkState]:
    """Converge the bridge and its taps; returns the state of each link."""
    br = net.ensure_bridge(bridge, address, bridge_mac)
    return {bridge: br, **net.ensure_taps(taps, br, net.snapshot())}
