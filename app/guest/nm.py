"""NetworkManager in the guest: one profile per NIC, named after its MAC and
written as a keyfile (nm_profile.py), loaded and activated in one command."""

from __future__ import annotations

import ipaddress

from ..errors import NetworkConfigError
from . import commands, nm_profile
from .shell import Shell

# The script waits up to nm_profile.WAIT_SECONDS for NetworkManager, and as
# long again for the address; a guest this slow under load still gets there.
APPLY_TIMEOUT = 3.0 * nm_profile.WAIT_SECONDS


def configure(shell: Shell, cfg: commands.NetConfig, iface: str) -> tuple[bool, list[ipaddress.IPv4Interface]]:
    """Put the bridgelab profile for cfg.mac in place and have it active on
    `iface`. Returns (changed, the NIC's IPv4 addresses afterwards); changed
    is False when the profile was already written and active."""
    r = shell.run(nm_profile.apply_cmd(cfg, iface), APPLY_TIMEOUT)
    if r.timed_out:
        raise NetworkConfigError(f"NetworkManager did not configure {iface} within {APPLY_TIMEOUT:.0f}s")
    said = (r.output + (r.stderr or "")).strip()
    parsed = nm_profile.parse_apply(r.output) if r.exit_code == 0 else None
    if parsed is None:
        what = nm_profile.APPLY_FAILURES.get(r.exit_code or 0, f"the profile command failed ({r.exit_code})")
        raise NetworkConfigError(f"{what} for {iface}; is NetworkManager running?\n{said[-2000:]}")
    return parsed


__all__ = ["configure"]
