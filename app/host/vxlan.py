"""The lab's VXLAN port: the kernel's own VXLAN device as one more port of
the lab bridge, so that the bridges of several hosts are one L2 segment.

Head-end replication: one all-zeros FDB entry per peer sends broadcast and
unknown frames (ARP) to every peer; the device learns where each guest's MAC
lives from the frames that come back, as a bridge does. No multicast group:
underlays (clouds, CI runners, Wi-Fi) rarely carry multicast.

The device is ledgered like the taps (links.HostNet); its FDB entries die
with it, so they are not. Detection (`detect`) is read-only: the underlay's
interface, this host's address on it, its MTU, and the peers by address.
"""

from __future__ import annotations

import errno
import ipaddress
import logging
import os
import socket
from typing import Any, Iterable

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from ..errors import HostNetError
from ..model.plan import OverlayPlan, UnderlayFacts
from ..model.spec import Peers
from .links import HostNet, LinkState

log = logging.getLogger(__name__)

ALL_ZEROS = "00:00:00:00:00:00"
AF_BRIDGE = 7


# ---------------------------------------------------------------- detection


def resolve_peers(hosts: Iterable[ipaddress.IPv4Address | str]) -> list[ipaddress.IPv4Address]:
    """Addresses as given; every A record of a name, in a stable order."""
    out: list[ipaddress.IPv4Address] = []
    for host in hosts:
        if isinstance(host, ipaddress.IPv4Address):
            out.append(host)
            continue
        try:
            infos = socket.getaddrinfo(host, None, socket.AF_INET, socket.SOCK_DGRAM)
        except socket.gaierror as e:
            raise HostNetError(f"peer {host}: cannot resolve it ({e.strerror})") from None
        out += sorted({ipaddress.IPv4Address(i[4][0]) for i in infos})
    return list(dict.fromkeys(out))


def own_addresses(ipr: IPRoute) -> set[ipaddress.IPv4Address]:
    return {ipaddress.IPv4Address(a.get_attr("IFA_ADDRESS")) for a in ipr.get_addr(family=socket.AF_INET)}


def other_hosts(hosts: Iterable[ipaddress.IPv4Address | str]) -> tuple[ipaddress.IPv4Address, ...]:
    """The peers as addresses, this host's own left out (one DNS name lists every node)."""
    resolved = resolve_peers(hosts)
    with IPRoute() as ipr:
        mine = own_addresses(ipr)
    return tuple(p for p in resolved if p not in mine)


def detect(peers: Peers) -> UnderlayFacts:
    """Where the peers are reached from: the named interface, or the one the
    route to the first peer leaves by, with the source address it picks."""
    others = other_hosts(peers.hosts)
    with IPRoute() as ipr:
        index, local = _underlay(ipr, peers.interface, others)
        link = ipr.get_links(index)[0]
        name, mtu = link.get_attr("IFLA_IFNAME"), link.get_attr("IFLA_MTU")
        if local is None:
            addrs = ipr.get_addr(index=index, family=socket.AF_INET)
            if not addrs:
                raise HostNetError(f"the underlay interface {name} has no IPv4 address")
            local = ipaddress.IPv4Address(addrs[0].get_attr("IFA_ADDRESS"))
    return UnderlayFacts(interface=name, local=local, mtu=mtu, peers=others)


def _underlay(ipr: IPRoute, interface: str | None,
              peers: tuple[ipaddress.IPv4Address, ...]) -> tuple[int, ipaddress.IPv4Address | None]:
    if interface is not None:
        found = ipr.link_lookup(ifname=interface)
        if not found:
            raise HostNetError(f"peers.interface {interface} does not exist on this host")
        return found[0], None
    if not peers:
        raise HostNetError("no peer is another host (every address is this host's own): name the underlay "
                           "with peers.interface")
    try:
        route = ipr.route("get", dst=str(peers[0]))[0]
    except NetlinkError as e:
        raise HostNetError(f"no route to peer {peers[0]}: {os.strerror(e.code)}") from None
    src = route.get_attr("RTA_PREFSRC")
    return route.get_attr("RTA_OIF"), ipaddress.IPv4Address(src) if src else None


# ---------------------------------------------------------------- the device


def ensure(net: HostNet, overlay: OverlayPlan, bridge: LinkState) -> LinkState:
    """The VXLAN port, created if missing, attached, up, with one flood entry per peer."""
    state = net.existing(overlay.device, "vxlan")
    if state is None:
        state = _create(net, overlay)
    net.ipr.link("set", index=state.index, master=bridge.index, state="up", ifalias=net.owner)
    sync_flood_entries(net.ipr, state.index, overlay.peers)
    return state


def _create(net: HostNet, overlay: OverlayPlan) -> LinkState:
    try:
        underlay = socket.if_nametoindex(overlay.interface)
    except OSError:
        raise HostNetError(f"the underlay interface {overlay.interface} is gone") from None
    try:
        return net.create_link(overlay.device, "vxlan", vxlan_id=overlay.vni, vxlan_local=str(overlay.local),
                               vxlan_port=overlay.port, vxlan_link=underlay, vxlan_learning=1, mtu=overlay.mtu)
    except HostNetError:
        if _port_taken(net.ipr, overlay):
            raise HostNetError(f"another VXLAN device already uses VNI {overlay.vni} on UDP port {overlay.port} "
                               "here: give this lab another peers.vni (the same on every peer)") from None
        raise


def _port_taken(ipr: IPRoute, overlay: OverlayPlan) -> bool:
    for msg in ipr.get_links():
        data = _vxlan_data(msg)
        if data is not None and data.get_attr("IFLA_VXLAN_ID") == overlay.vni and \
                data.get_attr("IFLA_VXLAN_PORT") == overlay.port:
            return True
    return False


def _vxlan_data(msg: Any) -> Any:
    info = msg.get_attr("IFLA_LINKINFO")
    if info is None or info.get_attr("IFLA_INFO_KIND") != "vxlan":
        return None
    return info.get_attr("IFLA_INFO_DATA")


def flood_entries(ipr: IPRoute, index: int) -> set[ipaddress.IPv4Address]:
    """The peers the device floods to: its all-zeros FDB entries."""
    found = set()
    for msg in ipr.get_neighbours(family=AF_BRIDGE, ifindex=index):
        dst = msg.get_attr("NDA_DST")
        if msg.get_attr("NDA_LLADDR") == ALL_ZEROS and dst:
            found.add(ipaddress.IPv4Address(dst))
    return found


def sync_flood_entries(ipr: IPRoute, index: int, peers: Iterable[ipaddress.IPv4Address]) -> None:
    """Exactly one flood entry per peer: missing ones appended, stale ones removed."""
    want = set(peers)
    have = flood_entries(ipr, index)
    for peer in sorted(want - have):
        _fdb(ipr, "append", index, peer)
    for peer in sorted(have - want):
        _fdb(ipr, "del", index, peer)
    if want != have:
        log.info("VXLAN flood list: %s", ", ".join(map(str, sorted(want))) or "(no peer)")


def _fdb(ipr: IPRoute, command: str, index: int, peer: ipaddress.IPv4Address) -> None:
    try:
        ipr.fdb(command, ifindex=index, lladdr=ALL_ZEROS, dst=str(peer))
    except NetlinkError as e:
        if not (command == "del" and e.code == errno.ENOENT):
            raise HostNetError(f"cannot {command} the VXLAN flood entry for peer {peer}: "
                               f"{os.strerror(e.code)}") from None


def learned(ifname: str) -> dict[str, ipaddress.IPv4Address]:
    """MAC -> the peer it was last seen behind, as the device learned it."""
    found: dict[str, ipaddress.IPv4Address] = {}
    with IPRoute() as ipr:
        index = ipr.link_lookup(ifname=ifname)
        if not index:
            return found
        for msg in ipr.get_neighbours(family=AF_BRIDGE, ifindex=index[0]):
            mac, dst = msg.get_attr("NDA_LLADDR"), msg.get_attr("NDA_DST")
            if mac and dst and mac != ALL_ZEROS:
                found[mac] = ipaddress.IPv4Address(dst)
    return found


def counters(ifname: str) -> dict[str, int]:
    """rx/tx packets and rx errors of the VXLAN port (the underlay's health, seen from here)."""
    with IPRoute() as ipr:
        try:
            stats = ipr.link("get", ifname=ifname)[0].get_attr("IFLA_STATS64")
        except NetlinkError:
            return {}
    return {k: stats[k] for k in ("rx_packets", "tx_packets", "rx_errors", "tx_errors", "tx_dropped")}


def set_peers(ifname: str, peers: Iterable[ipaddress.IPv4Address]) -> None:
    """The flood list of the lab's VXLAN port, when the peers changed."""
    with IPRoute() as ipr:
        index = ipr.link_lookup(ifname=ifname)
        if not index:
            raise HostNetError(f"the VXLAN port {ifname} is gone")
        sync_flood_entries(ipr, index[0], peers)


__all__ = ["counters", "detect", "ensure", "flood_entries", "learned", "other_hosts", "resolve_peers", "set_peers",
           "sync_flood_entries"]
