"""Drive NetworkManager inside a guest over its console (commands from commands.py)."""

from __future__ import annotations

import ipaddress
import logging

from ..errors import NetworkConfigError
from . import commands
from .console import Console

log = logging.getLogger(__name__)

NMCLI_TIMEOUT = 120.0  # nmcli under TCG, first call starts D-Bus activation


def find_iface(console: Console, mac: str) -> str:
    out = console.check(commands.list_links_cmd())
    iface = commands.iface_for_mac(out, mac)
    if iface is None:
        raise NetworkConfigError(f"no interface with MAC {mac} in the guest; links seen:\n{out.strip()}")
    return iface


def configure(console: Console, cfg: commands.NetConfig) -> bool:
    """Create or update the bridgelab profile for cfg.mac and bring it up.
    Returns False when everything already matched (nothing was changed)."""
    with console.exclusive():
        iface = find_iface(console, cfg.mac)
        name = commands.profile_name(cfg.mac)
        desired = commands.desired_settings(cfg)
        rc, out = console.run(commands.show_profile_cmd(name), NMCLI_TIMEOUT)
        if rc == 10:  # nmcli: no such connection profile
            console.check(commands.add_cmd(name, desired), NMCLI_TIMEOUT)
            changed = True  # a new profile is never active yet: no need to ask
        elif rc == 0:
            diff = commands.settings_diff(commands.parse_terse(out), desired)
            if diff:
                console.check(commands.modify_cmd(name, diff), NMCLI_TIMEOUT)
            changed = bool(diff) or not _active_with(console, iface, name, cfg)
        else:
            raise NetworkConfigError(f"nmcli failed ({rc}); is NetworkManager running?\n{out.strip()}")
        if changed:
            console.check(commands.up_cmd(name, iface), NMCLI_TIMEOUT)
        verify(console, cfg, iface)
        log.info("%s: %s on %s %s", console.name, cfg.address, iface, "configured" if changed else "unchanged")
        return changed


def _active_with(console: Console, iface: str, name: str, cfg: commands.NetConfig) -> bool:
    """Is `name` the active profile on `iface`, with exactly the wanted address live?"""
    active = commands.parse_terse(console.check(commands.active_profile_cmd(iface), NMCLI_TIMEOUT))
    live = commands.parse_addresses(console.check(commands.addresses_cmd(iface)))
    return active.get("GENERAL.CONNECTION") == name and _address_ok(live, cfg)


def _address_ok(live: list[ipaddress.IPv4Interface], cfg: commands.NetConfig) -> bool:
    return bool(live) if cfg.side_nic else live == [cfg.address]


def verify(console: Console, cfg: commands.NetConfig, iface: str | None = None) -> str:
    """The address must be live on the NIC with that MAC, and be its only IPv4;
    a side NIC needs an address and must not carry a default route."""
    iface = iface or find_iface(console, cfg.mac)
    live = commands.parse_addresses(console.check(commands.addresses_cmd(iface)))
    if not _address_ok(live, cfg):
        expected = "a DHCP address" if cfg.side_nic else f"[{cfg.address}]"
        raise NetworkConfigError(f"{iface} has {[str(a) for a in live]}, expected {expected}")
    if cfg.side_nic:
        defaults = commands.parse_default_devices(console.check(commands.default_routes_cmd()))
        if iface in defaults:
            raise NetworkConfigError(f"{iface} (user-mode NIC) carries a default route: {defaults}")
    return iface


def ping_all(console: Console, targets: list[ipaddress.IPv4Address]) -> dict[str, bool]:
    if not targets:
        return {}
    out = console.check(commands.ping_cmd([str(t) for t in targets]), 60)
    result = commands.parse_ping(out)
    return {str(t): result.get(str(t), False) for t in targets}


def neighbour(console: Console, ip: ipaddress.IPv4Address) -> str:
    """The guest's ARP state for ip: 'resolved', 'failed' or 'none'."""
    return commands.parse_neighbour(console.check(commands.neighbour_cmd(str(ip))))


def route_get(console: Console, ip: ipaddress.IPv4Address) -> str | None:
    """The guest's `ip route get` for ip, or None when it has no route."""
    rc, out = console.run(commands.route_get_cmd(str(ip)))
    return out.strip() if rc == 0 else None
