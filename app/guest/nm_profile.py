"""The NetworkManager profile bridgelab gives a NIC, as a keyfile, and the one
guest command that puts it in place, loads it, activates it and waits for
the address. Pure: the keyfile is text built from validated values, and the
command is a fixed script that takes every value as an argument.

Why a keyfile and D-Bus rather than `nmcli connection add/modify/up`: under
TCG every nmcli process costs 0.6-0.9 s (it loads NetworkManager's whole
object model before it does anything) and `nmcli connection up` waits 2-3 s
for the activation to finish, while a `busctl` call costs about 0.1 s and
the address is what bridgelab waits for anyway (measured one call at a time
on an idle sid riscv64 guest: `nmcli connection show` 0.65 s, `nmcli
connection load` 0.84 s, `nmcli connection up` 2.8 s; `busctl call` 0.11 s
idle, 0.2-0.5 s during a boot). Where busctl is
missing (a guest without systemd), the same script uses `nmcli connection
load` and `nmcli --wait 0 connection up`.
"""

from __future__ import annotations

import ipaddress
import re
import uuid

from . import commands

PRIORITY = 100  # beats the auto-created "Wired connection 1" at boot
KEYFILE_DIR = "/etc/NetworkManager/system-connections"
# The profile's UUID follows from its MAC, so writing the same profile again
# gives the same file, and NetworkManager keeps it as the same connection.
_UUID_NAMESPACE = uuid.UUID("5c8a1c0e-6f1e-4d4b-9a57-0b7d1e1a2b3c")
# How long the script waits for NetworkManager and the device to exist, and
# then for the address to show. The guest agent starts with the boot, well
# before NetworkManager (about 30 s before it, one guest alone under TCG, and
# that stretches with the host's load), and the configuration starts as soon
# as the agent answers: the wait is that gap, with room for a busy host.
WAIT_SECONDS = 300


def profile_uuid(mac: str) -> str:
    return str(uuid.uuid5(_UUID_NAMESPACE, "bridgelab:" + mac.lower()))


def keyfile_path(mac: str) -> str:
    return f"{KEYFILE_DIR}/{commands.profile_name(mac)}.nmconnection"


def keyfile(cfg: commands.NetConfig) -> list[str]:
    """The keyfile's lines: bound to the MAC, autoconnect ahead of the auto
    profile; a static address, or on the side NIC DHCP that never takes the
    default route or DNS."""
    lines = ["# written by bridgelab", "[connection]", f"id={commands.profile_name(cfg.mac)}",
             f"uuid={profile_uuid(cfg.mac)}", "type=ethernet", "autoconnect=true",
             f"autoconnect-priority={PRIORITY}", "", "[ethernet]", f"mac-address={cfg.mac.upper()}"]
    lines += [f"mtu={cfg.mtu}"] if cfg.mtu and not cfg.side_nic else []
    lines += ["", "[ipv4]"]
    if cfg.side_nic:
        # qemu's user network answers DHCP; its default route and DNS would
        # steal the guest's traffic from the bridge, so both are refused.
        return lines + ["method=auto", "never-default=true", "ignore-auto-dns=true", "", "[ipv6]",
                        "method=disabled"]
    lines += ["method=manual", f"address1={cfg.address}"]
    lines += [f"gateway={cfg.gateway}"] if cfg.gateway else []
    lines += [f"dns={';'.join(str(d) for d in cfg.dns)};"] if cfg.dns else []
    return lines + ["", "[ipv6]", "method=auto"]


# The script. Arguments: keyfile path, profile id, uuid, device, the address
# line to wait for (" inet A/P " or " inet " for DHCP), seconds to wait, then
# the keyfile's lines. It prints changed=0|1 and, after a "---" line, the
# device's IPv4 addresses. Exit 3: the file could not be written; 4:
# NetworkManager or the device did not show in time; 5: NetworkManager
# refused the file; 6: the activation was refused.
_APPLY = r'''
f=$1 id=$2 uuid=$3 dev=$4 want=$5 wait=$6; shift 6
nm=org.freedesktop.NetworkManager; root=/org/freedesktop/NetworkManager
changed=0
if [ "$(cat "$f" 2>/dev/null)" != "$(printf '%s\n' "$@")" ]; then
  (umask 077; mkdir -p "${f%/*}" && printf '%s\n' "$@" > "$f.tmp" && mv -f "$f.tmp" "$f") || exit 3
  changed=1
fi
unq() { v=$2; v=${v#\"}; echo "${v%\"}"; }
n=0; tries=$((wait * 5))
if command -v busctl >/dev/null 2>&1; then
  me=$uuid
  until out=$(busctl call $nm $root $nm GetDeviceByIpIface s "$dev" 2>&1); do
    n=$((n + 1)); [ $n -gt $tries ] && { echo "NetworkManager: $out"; exit 4; }; sleep 0.2
  done
  devpath=$(unq $out)
  active() {
    a=$(unq $(busctl get-property $nm "$devpath" $nm.Device ActiveConnection))
    [ "$a" = / ] || unq $(busctl get-property $nm "$a" $nm.Connection.Active Uuid 2>/dev/null)
  }
  load() {
    out=$(busctl call $nm $root/Settings $nm.Settings LoadConnections as 1 "$f" 2>&1)
    [ "$out" = "bas true 0" ] || { echo "NetworkManager did not load $f: $out"; return 1; }
  }
  activate() {
    out=$(busctl call $nm $root/Settings $nm.Settings GetConnectionByUuid s "$uuid" 2>&1) &&
      out=$(busctl call $nm $root $nm ActivateConnection ooo "$(unq $out)" "$devpath" / 2>&1) ||
      { echo "$out"; return 1; }
  }
else
  me=$id
  until out=$(nmcli -g GENERAL.CONNECTION device show "$dev" 2>&1); do
    n=$((n + 1)); [ $n -gt $tries ] && { echo "NetworkManager: $out"; exit 4; }; sleep 0.2
  done
  active() { nmcli -g GENERAL.CONNECTION device show "$dev"; }
  load() { nmcli connection load "$f"; }
  activate() { nmcli --wait 0 connection up "$id" ifname "$dev" >/dev/null; }
fi
before=$(active)
load || exit 5
cur=$before
if [ -z "$before" ] && [ $changed = 1 ]; then
  # A free NIC: NetworkManager's autoconnect takes the new profile by itself,
  # and activating it on top would start it twice (the second activation
  # takes the address away again just after the first one put it there).
  n=0
  until [ "$cur" = "$me" ] || [ $n -ge 15 ]; do sleep 0.2; n=$((n + 1)); cur=$(active); done
fi
if [ "$cur" != "$me" ] || { [ "$before" = "$me" ] && [ $changed = 1 ]; }; then
  activate || exit 6
  changed=1
fi
n=0
until ip -o -4 addr show dev "$dev" | grep -qF -- "$want"; do
  n=$((n + 1)); [ $n -gt $((wait * 10)) ] && break; sleep 0.1
done
echo "changed=$changed"; echo ---; ip -o -4 addr show dev "$dev"
'''


def apply_cmd(cfg: commands.NetConfig, iface: str, wait: int = WAIT_SECONDS) -> commands.Argv:
    want = " inet " if cfg.side_nic else f" inet {cfg.address} "
    return ["sh", "-c", _APPLY, "nm-apply", keyfile_path(cfg.mac), commands.profile_name(cfg.mac),
            profile_uuid(cfg.mac), iface, want, str(int(wait)), *keyfile(cfg)]


# Which of the script's exits means what, for the error a user reads.
APPLY_FAILURES = {
    3: "could not write the profile",
    4: "NetworkManager (or the NIC in it) did not show up",
    5: "NetworkManager did not load the profile",
    6: "NetworkManager refused to activate the profile",
}

_CHANGED = re.compile(r"^changed=([01])$", re.MULTILINE)


def parse_apply(output: str) -> tuple[bool, list[ipaddress.IPv4Interface]] | None:
    """(changed, the device's IPv4 addresses) from the script's output; None
    when the output is not the script's."""
    head, sep, addresses = output.partition("\n---\n")
    found = _CHANGED.findall(head)
    if not found or not sep:
        return None
    return found[-1] == "1", commands.parse_addresses(addresses)


__all__ = ["APPLY_FAILURES", "apply_cmd", "keyfile", "keyfile_path", "parse_apply", "profile_uuid"]
