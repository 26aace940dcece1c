"""A guest's network, through its shell (agent or console): configuration by
the guest's own manager (nm.py for NetworkManager, networkd.py for
systemd-networkd, detected in the guest), the check that the address is
live, and the probes' ping, neighbour and route queries."""

from __future__ import annotations

import ipaddress
import logging
import time
from typing import Callable

from ..errors import NetworkConfigError
from . import commands, networkd, nm
from .shell import Shell

log = logging.getLogger(__name__)

def find_iface(shell: Shell, mac: str) -> str:
    """The NIC with that MAC."""
    return _probe(shell, mac)[0]


def configure(shell: Shell, cfg: commands.NetConfig) -> bool:
    """Give the NIC with cfg.mac its address through the guest's own network
    manager, and check it is live. False when everything already matched."""
    with shell.exclusive():
        iface, manager = _probe(shell, cfg.mac)
        live: list[ipaddress.IPv4Interface] | None = None
        if manager == commands.NETWORK_MANAGER:
            changed, live = nm.configure(shell, cfg, iface)
        elif manager == commands.NETWORKD:
            changed = networkd.configure(shell, cfg, iface)
        else:
            raise NetworkConfigError("unsupported network manager: neither NetworkManager nor systemd-networkd "
                                     "is enabled in the guest, and bridgelab configures guests through one of them")
        try:
            verify(shell, cfg, iface, settle=VERIFY_SETTLE, live=live)
        except NetworkConfigError as e:
            raise NetworkConfigError(f"after {VERIFY_SETTLE:.0f}s of {manager}: {e}") from None
        log.info("%s: %s on %s %s (%s)", shell.name, cfg.address, iface, "configured" if changed else "unchanged",
                 manager)
        return changed


def _probe(shell: Shell, mac: str) -> tuple[str, str]:
    """(the NIC with that MAC, the guest's network manager), in one round
    trip, once udev has initialized that NIC: early after a boot its driver
    may still be loading from the root filesystem, or it may still be being
    renamed (eth0 -> enp0s2). A guest without udevadm, or whose NIC does not
    show in time, is looked at anyway: then it is as good as it gets."""
    out = shell.run(commands.probe_cmd(mac), commands.NIC_WAIT_SECONDS + 30).output
    iface, manager = commands.parse_probe(out, mac)
    if iface is None:
        raise NetworkConfigError(f"no interface with MAC {mac} in the guest; links seen:\n{out.strip()}")
    return iface, manager


# How long the address may take to show: `networkctl reconfigure` returns
# before it is up, and after a reboot NetworkManager restores it only once the
# NIC's driver has loaded from the root filesystem, which can be after the
# login (seen under TCG with an initrd that holds only the root disk's modules).
VERIFY_SETTLE = 60.0


def verify(shell: Shell, cfg: commands.NetConfig, iface: str | None = None, settle: float = 0.0,
           live: list[ipaddress.IPv4Interface] | None = None) -> str:
    """The address must be live on the NIC with that MAC, and be its only IPv4;
    a side NIC needs an address and must not carry a default route. With
    `settle`, a wrong address is looked at again for up to so many seconds.
    `live`: the addresses just read (by the configuration), not read again."""
    iface = iface or find_iface(shell, cfg.mac)
    deadline = time.monotonic() + settle
    if live is None:
        live = commands.parse_addresses(shell.check(commands.addresses_cmd(iface)))
    while not commands.address_ok(live, cfg) and time.monotonic() < deadline:
        time.sleep(0.5)
        live = commands.parse_addresses(shell.check(commands.addresses_cmd(iface)))
    if not commands.address_ok(live, cfg):
        expected = "a DHCP address" if cfg.side_nic else f"[{cfg.address}]"
        raise NetworkConfigError(f"{iface} has {[str(a) for a in live]}, expected {expected}")
    if cfg.side_nic:
        defaults = commands.parse_default_devices(shell.check(commands.default_routes_cmd()))
        if iface in defaults:
            raise NetworkConfigError(f"{iface} (user-mode NIC) carries a default route: {defaults}")
    if cfg.mtu:
        _verify_mtu(shell, iface, cfg.mtu, deadline)
    return iface


def _verify_mtu(shell: Shell, iface: str, want: int, deadline: float) -> None:
    """A lowered MTU (VXLAN to peers) is live: larger frames would be lost
    silently on the way to another host."""
    mtu = shell.check(commands.mtu_cmd(iface)).strip()
    while mtu != str(want) and time.monotonic() < deadline:
        time.sleep(0.5)
        mtu = shell.check(commands.mtu_cmd(iface)).strip()
    if mtu != str(want):
        raise NetworkConfigError(f"{iface} has MTU {mtu}, expected {want} (VXLAN to the peers needs 50 bytes)")


def set_clock_and_verify(shell: Shell, cfg: commands.NetConfig, now: Callable[[], float]) -> str:
    """A guest restored from a snapshot: its clock set to the host's (it
    stood still while the snapshot lay on disk) and its address read back,
    in one command; the full `verify` if the address is not (yet) right."""
    out = shell.check(commands.clock_and_addresses_cmd(now()), 30)
    iface, live = commands.parse_links_and_addresses(out, cfg.mac)
    if iface is not None and commands.address_ok(live, cfg) and not cfg.side_nic:
        return iface
    log.info("%s: after the restore %s has %s; waiting for %s", shell.name, iface, [str(a) for a in live], cfg.address)
    return verify(shell, cfg, iface, settle=VERIFY_SETTLE)


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
