"""The uplink's host side: which interface, the sysctls, and the guests' /32
routes for proxy-ARP. Firewall rules are in firewall.py.

Every sysctl changed is recorded in the ledger with its old value first, and
restored at teardown or by the next start's sweep, unless somebody else has
changed it since (then it is theirs and is left alone, with a warning).

Order matters: writing ip_forward resets per-interface settings, so it is set
first and restored last.
"""

from __future__ import annotations

import errno
import ipaddress
import logging
import os
import socket
from pathlib import Path

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from ..errors import HostNetError
from ..model.plan import LabPlan, UplinkFacts
from ..model.spec import UplinkKind
from .ledger import Ledger, RouteEntry, SysctlEntry

log = logging.getLogger(__name__)

PROC_SYS = Path("/proc/sys")
IP_FORWARD = "net/ipv4/ip_forward"


# ---------------------------------------------------------------- detection


def detect(interface: str | None) -> UplinkFacts:
    """Facts about the named interface, or the default route's."""
    with IPRoute() as ipr:
        defaults = ipr.get_default_routes(family=socket.AF_INET)
        default_oif = {r.get_attr("RTA_OIF"): r.get_attr("RTA_GATEWAY") for r in defaults}
        if interface is None:
            if not defaults:
                raise HostNetError("uplink: this host has no IPv4 default route to detect the uplink from; "
                                   "name it with uplink.interface")
            index = defaults[0].get_attr("RTA_OIF")
            found = ipr.get_links(index)
            name = found[0].get_attr("IFLA_IFNAME")
        else:
            found = ipr.link_lookup(ifname=interface)
            if not found:
                raise HostNetError(f"uplink.interface {interface} does not exist on this host")
            index, name = found[0], interface
        addrs = ipr.get_addr(index=index, family=socket.AF_INET)
    address = (ipaddress.IPv4Interface(f"{addrs[0].get_attr('IFA_ADDRESS')}/{addrs[0]['prefixlen']}")
               if addrs else None)
    gateway = default_oif.get(index)
    return UplinkFacts(interface=name, address=address,
                       gateway=ipaddress.IPv4Address(gateway) if gateway else None,
                       wireless=is_wireless(name), detected=interface is None)


def is_wireless(ifname: str, sys_class_net: Path = Path("/sys/class/net")) -> bool:
    d = sys_class_net / ifname
    return (d / "wireless").exists() or (d / "phy80211").exists()


# ---------------------------------------------------------------- sysctls


def _sysctl_file(key: str) -> Path:
    return PROC_SYS / key


def read_sysctl(key: str) -> str:
    return _sysctl_file(key).read_text().strip()


def set_sysctl(ledger: Ledger, key: str, value: str) -> bool:
    """Set a sysctl, recording its old value first. False when it already had `value`."""
    try:
        old = read_sysctl(key)
    except OSError as e:
        raise HostNetError(f"cannot read {key}: {e.strerror}") from None
    if old == value:
        return False
    ledger.add(SysctlEntry(key=key, old=old, new=value))
    try:
        _sysctl_file(key).write_text(value + "\n")
    except OSError as e:
        hint = (" (/proc/sys is read-only here; in a container, the entrypoint remounts /proc/sys/net "
                "read-write, which needs SYS_ADMIN)" if e.errno == errno.EROFS else "")
        raise HostNetError(f"cannot set {key}={value}: {e.strerror}{hint}") from None
    log.info("sysctl %s: %s -> %s", key.replace("/", "."), old, value)
    return True


def restore_sysctls(ledger: Ledger) -> list[str]:
    """Put back every recorded sysctl, newest first (ip_forward last).
    Returns `key=old value` for each one restored."""
    restored = []
    for e in reversed(ledger.of(SysctlEntry)):
        key = e.key
        try:
            now = read_sysctl(key)
        except OSError:
            now = None  # the interface is gone with its settings
        if now is not None and ledger.is_current(e):
            if now == e.new:
                _sysctl_file(key).write_text(e.old + "\n")
                restored.append(f"{key.replace('/', '.')}={e.old}")
                log.info("sysctl %s restored to %s", key.replace("/", "."), e.old)
            else:
                log.warning("sysctl %s is %s now, not the %s bridgelab set: leaving it to whoever changed it",
                            key.replace("/", "."), now, e.new)
        ledger.drop(e)
    return restored


# ---------------------------------------------------------------- routes


def _route_key(ip: ipaddress.IPv4Address) -> str:
    return f"{ip}/32"


def add_guest_route(ledger: Ledger, ip: ipaddress.IPv4Address, bridge: str) -> None:
    """proxy-ARP: the host reaches (and answers ARP on the uplink for) a guest
    through a /32 route via the bridge."""
    dst = _route_key(ip)
    if any(e.dst == dst for e in ledger.of(RouteEntry)):
        return
    with IPRoute() as ipr:
        idx = ipr.link_lookup(ifname=bridge)
        if not idx:
            raise HostNetError(f"bridge {bridge} is gone")
        try:
            ipr.route("add", dst=dst, oif=idx[0], scope=253, proto=4)  # scope link, proto static
        except NetlinkError as e:
            if e.code == errno.EEXIST:
                raise HostNetError(f"a route to {dst} already exists on this host; "
                                   f"guest address {ip} is in use") from None
            raise HostNetError(f"cannot add route {dst} dev {bridge}: {os.strerror(e.code)}") from None
    ledger.add(RouteEntry(dst=dst, oif=idx[0]))
    log.info("route %s dev %s", dst, bridge)


def remove_route(ledger: Ledger, entry: RouteEntry) -> bool:
    removed = False
    if ledger.is_current(entry):
        with IPRoute() as ipr:
            try:
                ipr.route("del", dst=entry.dst, oif=entry.oif)
                removed = True
            except NetlinkError as e:
                if e.code not in (errno.ESRCH, errno.ENODEV, errno.ENOENT):
                    raise HostNetError(f"cannot remove route {entry.dst}: {os.strerror(e.code)}") from None
    ledger.drop(entry)
    return removed


def remove_guest_route(ledger: Ledger, ip: ipaddress.IPv4Address) -> None:
    for e in [e for e in ledger.of(RouteEntry) if e.dst == _route_key(ip)]:
        remove_route(ledger, e)


# ---------------------------------------------------------------- the mode


def apply(ledger: Ledger, plan: LabPlan) -> None:
    up = plan.uplink
    if up is None:
        return
    set_sysctl(ledger, IP_FORWARD, "1")  # first: it resets per-interface settings
    if up.mode is UplinkKind.proxy_arp:
        set_sysctl(ledger, f"net/ipv4/conf/{up.interface}/proxy_arp", "1")
        set_sysctl(ledger, f"net/ipv4/conf/{plan.bridge}/proxy_arp", "1")
        # Answer guests' ARP at once rather than after up to 0.8 s (our bridge only).
        set_sysctl(ledger, f"net/ipv4/neigh/{plan.bridge}/proxy_delay", "0")
        for g in plan.guests:
            add_guest_route(ledger, g.ip.ip, plan.bridge)
    log.info("uplink %s via %s (%s)", up.mode, up.interface, up.reason)


def teardown(ledger: Ledger) -> tuple[list[str], list[str]]:
    """Routes, then sysctls (restored newest first): what was removed and restored."""
    routes = [e.dst for e in ledger.of(RouteEntry) if remove_route(ledger, e)]
    return routes, restore_sysctls(ledger)


__all__ = ["add_guest_route", "apply", "detect", "is_wireless", "read_sysctl", "remove_guest_route",
           "restore_sysctls", "set_sysctl", "teardown"]
