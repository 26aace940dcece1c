"""Drive NetworkManager inside a guest over its console (commands from nmcli.py)."""

from __future__ import annotations

import ipaddress
import logging

from . import nmcli
from .console import Console
from .errors import NetworkConfigError

log = logging.getLogger(__name__)

NMCLI_TIMEOUT = 120.0  # nmcli under TCG, first call starts D-Bus activation


def find_iface(console: Console, mac: str) -> str:
    out = console.check(nmcli.list_links_cmd())
    iface = nmcli.iface_for_mac(out, mac)
    if iface is None:
        raise NetworkConfigError(f"no interface with MAC {mac} in the guest; links seen:\n{out.strip()}")
    return iface


def configure(console: Console, cfg: nmcli.NetConfig) -> bool:
    """Create or update the bridgelab profile for cfg.mac and bring it up.
    Returns False when everything already matched (nothing was changed)."""
    with console.exclusive():
        iface = find_iface(console, cfg.mac)
        name = nmcli.profile_name(cfg.mac)
        desired = nmcli.desired_settings(cfg)
        rc, out = console.run(nmcli.show_profile_cmd(name), NMCLI_TIMEOUT)
        if rc == 10:  # nmcli: no such connection profile
            console.check(nmcli.add_cmd(name, desired), NMCLI_TIMEOUT)
            changed = True  # a new profile is never active yet: no need to ask
        elif rc == 0:
            diff = nmcli.settings_diff(nmcli.parse_terse(out), desired)
            if diff:
                console.check(nmcli.modify_cmd(name, diff), NMCLI_TIMEOUT)
            changed = bool(diff) or not _active_with(console, iface, name, cfg)
        else:
            raise NetworkConfigError(f"nmcli failed ({rc}); is NetworkManager running?\n{out.strip()}")
        if changed:
            console.check(nmcli.up_cmd(name, iface), NMCLI_TIMEOUT)
        verify(console, cfg, iface)
        log.info("%s: %s on %s %s", console.name, cfg.address, iface, "configured" if changed else "unchanged")
        return changed


def _active_with(console: Console, iface: str, name: str, cfg: nmcli.NetConfig) -> bool:
    """Is `name` the active profile on `iface`, with exactly the wanted address live?"""
    active = nmcli.parse_terse(console.check(nmcli.active_profile_cmd(iface), NMCLI_TIMEOUT))
    live = nmcli.parse_addresses(console.check(nmcli.addresses_cmd(iface)))
    return active.get("GENERAL.CONNECTION") == name and _address_ok(live, cfg)


def _address_ok(live: list[ipaddress.IPv4Interface], cfg: nmcli.NetConfig) -> bool:
    return bool(live) if cfg.side_nic else live == [cfg.address]


def verify(console: Console, cfg: nmcli.NetConfig, iface: str | None = None) -> str:
    """The address must be live on the NIC with that MAC, and be its only IPv4;
    a side NIC needs an address and must not carry a default route."""
    iface = iface or find_iface(console, cfg.mac)
    live = nmcli.parse_addresses(console.check(nmcli.addresses_cmd(iface)))
    if not _address_ok(live, cfg):
        expected = "a DHCP address" if cfg.side_nic else f"[{cfg.address}]"
        raise NetworkConfigError(f"{iface} has {[str(a) for a in live]}, expected {expected}")
    if cfg.side_nic:
        defaults = nmcli.parse_default_devices(console.check(nmcli.default_routes_cmd()))
        if iface in defaults:
            raise NetworkConfigError(f"{iface} (user-mode NIC) carries a default route: {defaults}")
    return iface


def ping_all(console: Console, targets: list[ipaddress.IPv4Address]) -> dict[str, bool]:
    if not targets:
        return {}
    out = console.check(nmcli.ping_cmd([str(t) for t in targets]), 60)
    result = nmcli.parse_ping(out)
    return {str(t): result.get(str(t), False) for t in targets}


def neighbour(console: Console, ip: ipaddress.IPv4Address) -> str:
    """The guest's ARP state for ip: 'resolved', 'failed' or 'none'."""
    return nmcli.parse_neighbour(console.check(nmcli.neighbour_cmd(str(ip))))


def route_get(console: Console, ip: ipaddress.IPv4Address) -> str | None:
    """The guest's `ip route get` for ip, or None when it has no route."""
    rc, out = console.run(nmcli.route_get_cmd(str(ip)))
    return out.strip() if rc == 0 else None
