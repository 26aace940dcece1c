"""NetworkManager in the guest: one profile per NIC, named after its MAC
(commands from commands.py)."""

from __future__ import annotations

from ..errors import NetworkConfigError
from . import commands
from .shell import Shell

NMCLI_TIMEOUT = 120.0  # nmcli under TCG, first call starts D-Bus activation


def configure(shell: Shell, cfg: commands.NetConfig, iface: str) -> bool:
    """Create or update the bridgelab profile for cfg.mac and bring it up.
    Returns False when everything already matched (nothing was changed)."""
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
    return changed


def _active_with(shell: Shell, iface: str, name: str, cfg: commands.NetConfig) -> bool:
    """Is `name` the active profile on `iface`, with exactly the wanted address live?"""
    active = commands.parse_terse(shell.check(commands.active_profile_cmd(iface), NMCLI_TIMEOUT))
    live = commands.parse_addresses(shell.check(commands.addresses_cmd(iface)))
    return active.get("GENERAL.CONNECTION") == name and commands.address_ok(live, cfg)


__all__ = ["configure"]
