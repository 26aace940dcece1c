"""The commands bridgelab runs in a guest (NetworkManager, ip, ping) and the
parsers of their output. Pure: each command is an argv list, never shell
text; the shell backend that runs it (guest/shell.py) quotes every element,
and the values themselves were validated (IPs, MACs) before they got here.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

Argv = list[str]

_LINK = re.compile(r"^\d+:\s+([^:@\s]+)(?:@\S+)?:\s.*?link/ether\s+([0-9a-fA-F:]{17})", re.MULTILINE)
_INET = re.compile(r"\binet\s+(\d+\.\d+\.\d+\.\d+/\d+)")
_PING = re.compile(r"^(ok|fail) (\S+)$", re.MULTILINE)


@dataclass(frozen=True)
class NetConfig:
    mac: str
    address: ipaddress.IPv4Interface | None  # None: DHCP (the user-mode NIC)
    gateway: ipaddress.IPv4Address | None
    dns: tuple[ipaddress.IPv4Address, ...] = ()
    mtu: int | None = None  # None: left as the guest has it

    @property
    def side_nic(self) -> bool:
        """A DHCP NIC that must never own the default route or DNS."""
        return self.address is None


def side_nic(mac: str) -> NetConfig:
    return NetConfig(mac=mac, address=None, gateway=None)


def profile_name(mac: str) -> str:
    """One deterministic profile per NIC, named after the MAC it is bound to."""
    return "bridgelab-" + mac.lower().replace(":", "")


def iface_for_mac(ip_link_output: str, mac: str) -> str | None:
    mac = mac.lower()
    for name, link_mac in _LINK.findall(ip_link_output):
        if link_mac.lower() == mac:
            return str(name)
    return None


# udev may still be renaming the NIC (eth0 -> enp0s2, predictable names) when
# the getty is up: seen on Debian amd64 under TCG once its initrd stopped
# loading virtio_net; and after a reboot the NIC's driver may load from the
# root disk only after the login. So the NIC with the MAC is waited for until
# udev has initialized it (renamed it if it is to be, and the network manager
# can see it: NetworkManager ignores a device udev has not), at most this long.
# Not `udevadm settle`: that waits for udev's whole queue, which under TCG is
# still busy with the coldplug well after the login prompt (measured 7.6 s of
# a 12 s configuration on Debian sid riscv64, two guests on two cores).
NIC_WAIT_SECONDS = 300  # as nm_profile.WAIT_SECONDS: the agent may ask early in a boot
_WAIT_FOR_NIC = (
    'n=0; until i=$(ip -o link show | grep -i -- "link/ether $1 " | cut -d: -f2 | cut -d@ -f1 | tr -d " ") && '
    '[ -n "$i" ] && { ! command -v udevadm >/dev/null || '
    'udevadm info -q property -p "/sys/class/net/$i" 2>/dev/null | grep -q "^USEC_INITIALIZED="; }; do '
    'n=$((n + 1)); [ $n -ge $(($2 * 2)) ] && break; sleep 0.5; done')


# The people's console (hvc0, see terminal.py) gets its getty here, once its
# driver has loaded: systemd's getty generator adds one only when hvc0
# exists at boot, and virtio_console often loads later, from the root disk.
# No systemd, or no hvc0: nothing to do. --no-block: the login does not wait.
_TERMINAL_GETTY = ('if [ -e /sys/class/tty/hvc0 ] && command -v systemctl >/dev/null; then '
                   'systemctl start --no-block serial-getty@hvc0.service 2>/dev/null; fi')


def probe_cmd(mac: str) -> Argv:
    """One round trip before a configuration: the NIC with `mac` waited for
    (see NIC_WAIT_SECONDS; hvc0 given its getty meanwhile), then the links,
    then which network manager the guest runs."""
    return ["sh", "-c", f'{_TERMINAL_GETTY}; {_WAIT_FOR_NIC}; ip -o link show; echo ---; {_DETECT}', "sh",
            mac.lower(), str(NIC_WAIT_SECONDS)]


def parse_probe(output: str, mac: str) -> tuple[str | None, str]:
    """(the NIC with `mac` or None, the network manager) from probe_cmd's output."""
    links, _, manager = output.partition("\n---\n")
    return iface_for_mac(links, mac), parse_manager(manager)


def addresses_cmd(iface: str) -> Argv:
    return ["ip", "-o", "-4", "addr", "show", "dev", iface]


def parse_addresses(output: str) -> list[ipaddress.IPv4Interface]:
    return [ipaddress.IPv4Interface(a) for a in _INET.findall(output)]


def mtu_cmd(iface: str) -> Argv:
    return ["sh", "-c", 'cat "/sys/class/net/$1/mtu"', "mtu", iface]


def clock_and_addresses_cmd(epoch: float) -> Argv:
    """Set the clock to the host's, then list links and IPv4 addresses, in
    one round trip: what a guest restored from a snapshot is checked with."""
    return ["sh", "-c", 'date -u -s "@$1" >/dev/null && ip -o link show && echo --- && ip -o -4 addr show',
            "sh", f"{epoch:.3f}"]


def parse_links_and_addresses(output: str, mac: str) -> tuple[str | None, list[ipaddress.IPv4Interface]]:
    """(the NIC with `mac`, its IPv4 addresses) from clock_and_addresses_cmd's output."""
    links, _, addrs = output.partition("\n---\n")
    iface = iface_for_mac(links, mac)
    if iface is None:
        return None, []
    own = [ln for ln in addrs.splitlines() if ln.split(":", 1)[-1].split()[:1] == [iface]]
    return iface, parse_addresses("\n".join(own))


def address_ok(live: list[ipaddress.IPv4Interface], cfg: NetConfig) -> bool:
    """The NIC carries exactly the wanted address (a side NIC: any DHCP one)."""
    return bool(live) if cfg.side_nic else live == [cfg.address]


# ---------------------------------------------------------------- which manager

NETWORK_MANAGER = "NetworkManager"
NETWORKD = "systemd-networkd"
# The first of the two that runs or is enabled; "none" when neither. An
# enabled one not running yet whose start job is queued (the guest agent
# asks early in a boot) is waited for, at most $2 seconds, by joining that
# job: `systemctl start` on a unit with a queued start job waits for that
# job, without polling, where a loop of `systemctl is-active` took CPU from
# the boot it waited for (networkctl needs networkd up). Without a queued
# job nothing is started: a manager somebody stopped stays stopped (the
# configuration then says the manager did not show).
_DETECT = ('for u in NetworkManager systemd-networkd; do '
           'if systemctl is-active -q "$u" 2>/dev/null || [ "$(systemctl is-enabled "$u" 2>/dev/null)" = enabled ]; '
           'then if ! systemctl is-active -q "$u" 2>/dev/null && '
           '[ -n "$(systemctl show -p Job --value "$u" 2>/dev/null)" ]; then '
           'if command -v timeout >/dev/null; then timeout "$2" systemctl start "$u" 2>/dev/null; '
           'else systemctl start "$u" 2>/dev/null; fi; fi; '
           'echo "manager=$u"; exit 0; fi; done; echo manager=none')


def parse_manager(output: str) -> str:
    found = re.findall(r"^manager=(\S+)$", output, re.MULTILINE)
    return found[-1] if found and found[-1] in (NETWORK_MANAGER, NETWORKD) else "none"


# ---------------------------------------------------------------- systemd-networkd

NETWORKD_DIR = "/etc/systemd/network"


def networkd_path(mac: str) -> str:
    """Sorts before the distribution's own files (networkd uses the first match)."""
    return f"{NETWORKD_DIR}/10-{profile_name(mac)}.network"


def networkd_unit(cfg: NetConfig) -> list[str]:
    """The .network file's lines: matched by MAC, a static address (or, on the
    side NIC, DHCP that never takes the default route or DNS)."""
    lines = ["# written by bridgelab", "[Match]", f"MACAddress={cfg.mac.lower()}", "", "[Network]"]
    if cfg.side_nic:
        return lines + ["DHCP=ipv4", "IPv6AcceptRA=no", "", "[DHCPv4]", "UseRoutes=false", "UseDNS=false"]
    lines += [f"Address={cfg.address}"]
    lines += [f"Gateway={cfg.gateway}"] if cfg.gateway else []
    lines += [f"DNS={d}" for d in cfg.dns]
    lines += ["LinkLocalAddressing=no", "IPv6AcceptRA=no"]
    return lines + (["", "[Link]", f"MTUBytes={cfg.mtu}"] if cfg.mtu else [])


def read_file_cmd(path: str) -> Argv:
    return ["sh", "-c", 'cat "$1" 2>/dev/null || true', "read", path]


# Written whole and renamed into place: networkd never reads half a file.
_WRITE = 'f=$1; shift; umask 022; printf "%s\\n" "$@" > "$f.tmp" && mv "$f.tmp" "$f"'


def write_file_cmd(path: str, lines: list[str]) -> Argv:
    return ["sh", "-c", _WRITE, "write", path, *lines]


def networkd_apply_cmds(iface: str) -> list[Argv]:
    return [["networkctl", "reload"], ["networkctl", "reconfigure", iface]]


def route_get_cmd(ip: str) -> Argv:
    return ["ip", "-4", "route", "get", ip]


def default_routes_cmd() -> Argv:
    return ["ip", "-4", "route", "show", "default"]


def parse_default_devices(output: str) -> list[str]:
    """The devices of `ip route show default` lines."""
    return [line.split(" dev ", 1)[1].split()[0] for line in output.splitlines() if " dev " in line]


# A fixed script: the deadline and the targets come in as its arguments.
PING_ALL = ('d=$1; shift; for t in "$@"; do ( if ping -n -q -c 1 -w "$d" "$t" >/dev/null 2>&1; '
            'then echo "ok $t"; else echo "fail $t"; fi ) & done; wait')


def ping_cmd(targets: list[str], deadline: int = 5) -> Argv:
    """Ping every target concurrently; one 'ok IP' or 'fail IP' line each."""
    return ["sh", "-c", PING_ALL, "ping-all", str(int(deadline)), *targets]


def parse_ping(output: str) -> dict[str, bool]:
    return {ip: verdict == "ok" for verdict, ip in _PING.findall(output)}


def neighbour_cmd(ip: str) -> Argv:
    return ["ip", "-4", "neigh", "show", "to", ip]


def parse_neighbour(output: str) -> str:
    """'resolved' (a MAC answered ARP), 'failed' (ARP got no answer) or 'none' (never tried)."""
    for line in output.splitlines():
        fields = line.split()
        if "lladdr" in fields and not {"FAILED", "INCOMPLETE"} & set(fields):
            return "resolved"
        if fields:
            return "failed"
    return "none"
