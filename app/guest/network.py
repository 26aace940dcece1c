"""Drive NetworkManager inside a guest through its shell (agent or console;
commands from commands.py)."""

from __future__ import annotations

import ipaddress
import logging

from ..errors import NetworkConfigError
from . import commands
from .shell import Shell

log = logging.getLogger(__name__)

NMCLI_TIMEOUT = 120.0  # nmcli under TCG, first call starts D-Bus activation


def find_iface(shell: Shell, mac: str) -> str:
    out = shell.check(commands.list_links_cmd())
    iface = commands.iface_for_mac(out, mac)
    if iface is None:
        raise NetworkConfigError(f"no interface with MAC {mac} in the guest; links seen:\n{out.strip()}")
    return iface


def configure(shell: Shell, cfg: commands.NetConfig) -> bool:
    """Create or update the bridgelab profile for cfg.mac and bring it up.
    Returns False when everything already matched (nothing was changed)."""
    with shell.exclusive():
        iface = find_iface(shell, cfg.mac)
        name = commands.profile_name(cfg.mac)
        desired = commands.desired_settings(cfg)
        shown = shell.run(commands.show_profile_cmd(name), NMCLI_TIMEOUT)
        rc, out = shown.exit_code, shown.output
        if shown.timed_out:
            raise NetworkConfigError(f"nmcli did not answer within {NMCLI_TIMEOUT:.0f}s; is NetworkManager running?")
        if rc == 10:  # nmcli: no such connection profile
            shell.check(commands.add_cmd(name, desired), NMCLI_TIMEOUT)
            changed = True  # a new profile is never active yet: no need to ask
        elif rc == 0:
            diff = commands.settings_diff(commands.parse_terse(out), desired)
            if diff:
                shell.check(commands.modify_cmd(name, diff), NMCLI_TIMEOUT)
            changed = bool(diff) or not _active_with(shell, iface, name, cfg)
        else:
            raise NetworkConfigError(f"nmcli failed ({rc}); is NetworkManager running?\n"
                                     f"{(out + (shown.stderr or '')).strip()}")
        if changed:
            shell.check(commands.up_cmd(name, iface), NMCLI_TIMEOUT)
        verify(shell, cfg, iface)
        log.info("%s: %s on %s %s", shell.name, cfg.address, iface, "configured" if changed else "unchanged")
        return changed


def _active_with(shell: Shell, iface: str, name: str, cfg: commands.NetConfig) -> bool:
    """Is `name` the active profile on `iface`, with exactly the wanted address live?"""
    active = commands.parse_terse(shell.check(commands.active_profile_cmd(iface), NMCLI_TIMEOUT))
    live = commands.parse_addresses(shell.check(commands.addresses_cmd(iface)))
    return active.get("GENERAL.CONNECTION") == name and _address_ok(live, cfg)


def _address_ok(live: list[ipaddress.IPv4Interface], cfg: commands.NetConfig) -> bool:
    return bool(live) if cfg.side_nic else live == [cfg.address]


def verify(shell: Shell, cfg: commands.NetConfig, iface: str | None = None) -> str:
    """The address must be live on the NIC with that MAC, and be its only IPv4;
    a side NIC needs an address and must not carry a default route."""
    iface = iface or find_iface(shell, cfg.mac)
    live = commands.parse_addresses(shell.check(commands.addresses_cmd(iface)))
    if not _address_ok(live, cfg):
        expected = "a DHCP address" if cfg.side_nic else f"[{cfg.address}]"
        raise NetworkConfigError(f"{iface} has {[str(a) for a in live]}, expected {expected}")
    if cfg.side_nic:
        defaults = commands.parse_default_devices(shell.check(commands.default_routes_cmd()))
        if iface in defaults:
            raise NetworkConfigError(f"{iface} (user-mode NIC) carries a default route: {defaults}")
    return iface


def ping_all(shell: Shell, targets: list[ipaddress.IPv4Address]) -> dict[str, bool]:
    if not targets:
        return {}
    out = shell.check(commands.ping_cmd([str(t) for t in targets]), 60)
    result = commands.parse_ping(out)
    return {str(t): result.get(str(t), False) for t in targets}


def neighbour(shell: Shell, ip: ipaddress.IPv4Address) -> str:
    """The guest's ARP state for ip: 'resolved', 'failed' or 'none'."""
    return commands.parse_neighbour(shell.check(commands.neighbour_cmd(str(ip))))


def route_get(shell: Shell, ip: ipaddress.IPv4Address) -> str | None:
    """The guest's `ip route get` for ip, or None when it has no route."""
    r = shell.run(commands.route_get_cmd(str(ip)))
    return r.output.strip() if r.exit_code == 0 else None
