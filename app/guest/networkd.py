"""systemd-networkd in the guest: one `.network` file per NIC, matched by its
MAC (commands from commands.py). Cloud images often run networkd instead of
NetworkManager."""

from __future__ import annotations

from . import commands
from .shell import Shell

NETWORKCTL_TIMEOUT = 60.0


def configure(shell: Shell, cfg: commands.NetConfig, iface: str) -> bool:
    """Write the file when it differs, then have networkd apply it. Returns
    False when the file was already right and the address already live."""
    path = commands.networkd_path(cfg.mac)
    lines = commands.networkd_unit(cfg)
    current = shell.check(commands.read_file_cmd(path))
    changed = current != "\n".join(lines) + "\n"
    if changed:
        shell.check(commands.write_file_cmd(path, lines))
    live = commands.parse_addresses(shell.check(commands.addresses_cmd(iface)))
    if not changed and commands.address_ok(live, cfg):
        return False
    # `networkctl reconfigure` returns before the address is up: the caller's
    # check (network.verify with its settle time) waits for it.
    for argv in commands.networkd_apply_cmds(iface):
        shell.check(argv, NETWORKCTL_TIMEOUT)
    return True


__all__ = ["configure"]
