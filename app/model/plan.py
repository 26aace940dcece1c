"""Spec -> plan. Pure: every default is resolved here, deterministically.

The plan is what the effectful modules act on; nothing downstream re-derives
names, MACs or addresses.
"""

from __future__ import annotations

import hashlib
import ipaddress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

from ..errors import FieldIssue, SpecError
from ..settings import IptablesBackend
from .images import BootStyle, Image
from .spec import VNI_MAX, Accel, Arch, Guest, Lab, Login, MtuPolicy, Uplink, UplinkKind, UplinkMode, ip_problems

# sun_path in struct sockaddr_un is 108 bytes including the NUL.
UNIX_PATH_MAX = 107

BOOT_TIMEOUT = {"tcg": 600.0, "kvm": 120.0}


@dataclass(frozen=True)
class UplinkFacts:
    """What the host's uplink interface looks like (read by uplink.detect)."""

    interface: str
    address: ipaddress.IPv4Interface | None  # the host's first IPv4 address on it
    gateway: ipaddress.IPv4Address | None  # the default route's gateway, when it goes out here
    wireless: bool  # /sys/class/net/IF/wireless exists
    detected: bool  # picked as the default route's interface (not named in the lab file)


@dataclass(frozen=True)
class UnderlayFacts:
    """The path to the peers (read by overlay.detect)."""

    interface: str
    local: ipaddress.IPv4Address  # this host's source address toward the first peer
    mtu: int  # the underlay interface's
    peers: tuple[ipaddress.IPv4Address, ...]  # names resolved, this host's own addresses left out


@dataclass(frozen=True)
class HostFacts:
    arch: str  # platform.machine(), e.g. "x86_64"
    kvm: bool  # /dev/kvm is usable
    uplink: UplinkFacts | None = None  # read only when the lab has an uplink
    underlay: UnderlayFacts | None = None  # read only when the lab has peers


@dataclass(frozen=True)
class UplinkPlan:
    mode: UplinkKind
    interface: str
    reason: str  # why this mode and interface, for the logs and the API
    lan: ipaddress.IPv4Interface | None  # the host's address on the uplink
    gateway: ipaddress.IPv4Address | None
    target: ipaddress.IPv4Address | None  # what the self-test pings


# VXLAN over IPv4: outer IPv4 (20) + UDP (8) + VXLAN (8) + the inner Ethernet header (14).
VXLAN_OVERHEAD = 50
ETHERNET_MTU = 1500


@dataclass(frozen=True)
class OverlayPlan:
    """The lab's VXLAN port on the bridge: one L2 with the peers' bridges."""

    device: str
    vni: int
    port: int
    interface: str  # the underlay
    local: ipaddress.IPv4Address
    peers: tuple[ipaddress.IPv4Address, ...]
    mtu: int  # the VXLAN device's
    guest_mtu: int | None  # None: the guests keep Ethernet's 1500
    mtu_reason: str
    api_port: int


@dataclass(frozen=True)
class UserNicPlan:
    mac: str
    ssh_port: int
    restrict: bool


@dataclass(frozen=True)
class GuestPaths:
    dir: Path
    overlay: Path
    console_sock: Path
    console_log: Path
    qmp_sock: Path
    agent_sock: Path  # qemu-guest-agent's virtio-serial port
    term_sock: Path  # the people's console: a virtio console (hvc0) with its own getty
    stderr: Path

    @property
    def sockets(self) -> tuple[Path, ...]:
        return (self.console_sock, self.qmp_sock, self.agent_sock, self.term_sock)


@dataclass(frozen=True)
class GuestPlan:
    name: str
    arch: Arch
    accel: str  # "tcg" | "kvm"
    cpus: int
    memory_mib: int
    ip: ipaddress.IPv4Interface
    gateway: ipaddress.IPv4Address | None
    dns: tuple[ipaddress.IPv4Address, ...]
    mac: str
    tap: str
    login: Login
    image: Image
    append: str
    qemu_args: tuple[str, ...]
    boot_timeout: float
    paths: GuestPaths
    user_nic: UserNicPlan | None = None
    mtu: int | None = None  # None: the guest's default (Ethernet's 1500)


@dataclass(frozen=True)
class LabPlan:
    name: str
    bridge: str
    bridge_address: ipaddress.IPv4Interface | None  # None with proxy-arp: the bridge carries no address
    host_address: ipaddress.IPv4Interface  # the host as guests see it, and the guests' network
    bridge_mac: str
    state_dir: Path
    guests: tuple[GuestPlan, ...] = field(default=())
    uplink: UplinkPlan | None = None
    iptables_backend: IptablesBackend | None = None  # from the lab file; None: detect
    warm_start: bool = True  # the lab file's `warm_start`
    overlay: OverlayPlan | None = None

    @property
    def subnet(self) -> ipaddress.IPv4Network:
        return self.host_address.network

    @property
    def default_gateway(self) -> ipaddress.IPv4Address | None:
        """The bridge address, or with proxy-arp the LAN's gateway."""
        if self.bridge_address is not None:
            return self.bridge_address.ip
        return self.uplink.gateway if self.uplink else None

    @property
    def proxy_arp(self) -> bool:
        return self.uplink is not None and self.uplink.mode is UplinkKind.proxy_arp

    def guest(self, name: str) -> GuestPlan | None:
        return next((g for g in self.guests if g.name == name), None)


def _digest(*parts: str) -> bytes:
    return hashlib.sha256("/".join(parts).encode()).digest()


def derive_mac(lab: str, guest: str) -> str:
    """Locally administered (bit 1 set), unicast (bit 0 clear), stable per lab+guest."""
    b = bytearray(_digest("mac", lab, guest)[:6])
    b[0] = (b[0] & 0xFC) | 0x02
    return ":".join(f"{x:02x}" for x in b)


def derive_bridge_mac(lab: str, host: ipaddress.IPv4Interface | None = None) -> str:
    """A bridge otherwise takes the lowest MAC of its ports, so its MAC (and
    every guest's ARP entry for the gateway) would change as taps come and go.
    With peers, every host's bridge runs the same lab on one L2: its own
    address (unique in the shared subnet) tells their MACs apart."""
    return derive_mac(lab, "\0bridge" + (f"\0{host}" if host is not None else ""))


def derive_tap(lab: str, guest: str) -> str:
    """'bl' + 4 hex of the lab + '-' + the guest name, shortened with a hash
    when it would not fit IFNAMSIZ. Always <= 15 characters."""
    prefix = "bl" + _digest("lab", lab).hex()[:4] + "-"
    room = 15 - len(prefix)
    if len(guest) <= room:
        return prefix + guest
    return prefix + guest[: room - 4] + _digest("tap", lab, guest).hex()[:4]


def resolve_accel(g: Guest, host: HostFacts) -> tuple[str, str | None]:
    native = g.arch.value == host.arch
    if g.accel is Accel.auto:
        return ("kvm" if native and host.kvm else "tcg"), None
    if g.accel is Accel.kvm and not native:
        return "kvm", f"kvm cannot run {g.arch.value} guests on a {host.arch} host; use accel: tcg"
    if g.accel is Accel.kvm and not host.kvm:
        return "kvm", "accel kvm requested but /dev/kvm is not usable here; use accel: tcg or auto"
    return g.accel.value, None


def allocate_ips(lab: Lab, host_address: ipaddress.IPv4Interface) -> list[ipaddress.IPv4Address | None]:
    """Explicit IPs stay; the rest get the lowest free host addresses of the
    pool (default: the subnet), in guest order."""
    taken = {host_address.ip} | {g.ip for g in lab.guests if g.ip is not None}
    subnet = host_address.network
    hosts = lab.bridge.pool or subnet
    pool = (ip for ip in hosts if ip not in taken and ip not in (subnet.network_address, subnet.broadcast_address))
    return [g.ip if g.ip is not None else next(pool, None) for g in lab.guests]


def choose_uplink_mode(uplink: Uplink, facts: UplinkFacts) -> tuple[UplinkKind, str]:
    """Pure: (mode, reason) for an uplink that is not `none`."""
    where = (f"{facts.interface} (the default route's interface)" if facts.detected
             else f"{facts.interface} (named in the lab file)")
    kind = "wireless" if facts.wireless else "wired"
    if uplink.mode is UplinkMode.nat:
        return UplinkKind.nat, f"mode nat on {where}"
    if uplink.mode is UplinkMode.proxy_arp:
        return UplinkKind.proxy_arp, f"mode proxy-arp on {where}"
    if uplink.lan_reachable:
        why = ("a wireless NIC cannot be a bridge port, so the host answers ARP for the guests"
               if facts.wireless else "bridging the host's NIC would take its address away; proxy-ARP leaves it")
        return UplinkKind.proxy_arp, f"auto: {where} is {kind} and lan_reachable is set: {why}"
    return UplinkKind.nat, f"auto: {where} is {kind} and lan_reachable is not set: guests share the host's address"


def plan_uplink(lab: Lab, facts: UplinkFacts | None) -> tuple[UplinkPlan | None, list[FieldIssue]]:
    if lab.uplink.mode is UplinkMode.none:
        return None, []
    if facts is None:
        return None, [FieldIssue("uplink", "the uplink interface was not inspected")]
    mode, reason = choose_uplink_mode(lab.uplink, facts)
    issues = []
    where = "uplink.interface" if lab.uplink.interface else "uplink"
    if facts.interface == lab.bridge.name:
        issues.append(FieldIssue(where, f"{facts.interface} is the lab's own bridge"))
    if mode is UplinkKind.proxy_arp and facts.address is None:
        issues.append(FieldIssue(where, f"{facts.interface} has no IPv4 address: proxy-arp puts guests on its LAN"))
    bridge = lab.bridge.address
    if bridge is not None and facts.address is not None and bridge.network.overlaps(facts.address.network):
        issues.append(FieldIssue("bridge.address", f"{bridge.network} overlaps the uplink's LAN "
                                                   f"{facts.address.network} on {facts.interface}"))
    target = lab.uplink.target or facts.gateway
    return UplinkPlan(mode=mode, interface=facts.interface, reason=reason, lan=facts.address,
                      gateway=facts.gateway, target=target), issues


def derive_vni(lab: str) -> int:
    return 1 + int.from_bytes(_digest("vni", lab)[:4], "big") % VNI_MAX


def derive_vxlan_device(lab: str) -> str:
    """'bl' + the lab's 4 hex + '_vx': a guest's tap never has '_' (guest names cannot)."""
    return "bl" + _digest("lab", lab).hex()[:4] + "_vx"


def choose_mtu(policy: MtuPolicy, underlay_mtu: int, interface: str) -> tuple[int, int | None, str | None]:
    """Pure: (the VXLAN device's MTU, the guests' MTU or None to keep 1500,
    the reason) or, for `check` on a small underlay, the problem as the third
    item with a guest MTU of None and a device MTU of 0."""
    room = underlay_mtu - VXLAN_OVERHEAD
    if policy is not MtuPolicy.lower_guests and room >= ETHERNET_MTU:
        return ETHERNET_MTU, None, (f"{interface} carries {underlay_mtu} bytes, room for VXLAN's "
                                    f"{VXLAN_OVERHEAD}: guests keep MTU {ETHERNET_MTU}")
    if policy is MtuPolicy.check:
        return 0, None, None
    why = "mtu: lower" if policy is MtuPolicy.lower_guests else f"{interface} carries only {underlay_mtu} bytes"
    return room, room, f"{why}: guests get MTU {room} ({underlay_mtu} - {VXLAN_OVERHEAD} for VXLAN)"


def plan_overlay(lab: Lab, facts: UnderlayFacts | None,
                 host_address: ipaddress.IPv4Interface) -> tuple[OverlayPlan | None, list[FieldIssue]]:
    peers = lab.peers
    if peers is None:
        return None, []
    if facts is None:
        return None, [FieldIssue("peers", "the underlay to the peers was not inspected")]
    issues = []
    where = "peers.interface" if peers.interface else "peers"
    if facts.interface == lab.bridge.name:
        issues.append(FieldIssue(where, f"the route to the peers leaves by the lab's own bridge {facts.interface}"))
    if facts.local in host_address.network:
        issues.append(FieldIssue("bridge.address", f"the bridge subnet {host_address.network} holds this host's "
                                                   f"underlay address {facts.local}: use another subnet"))
    issues += [FieldIssue("peers.hosts", f"peer {p} is inside the bridge subnet {host_address.network}: "
                                         "peers are reached over the underlay")
               for p in facts.peers if p in host_address.network]
    mtu, guest_mtu, reason = choose_mtu(peers.mtu, facts.mtu, facts.interface)
    if reason is None:
        issues.append(FieldIssue("peers.mtu", f"check: {facts.interface} carries {facts.mtu} bytes, VXLAN needs "
                                              f"{ETHERNET_MTU + VXLAN_OVERHEAD} for guests at MTU {ETHERNET_MTU}; "
                                              "raise the underlay's MTU or use mtu: auto"))
        reason = ""
    return OverlayPlan(device=derive_vxlan_device(lab.name), vni=peers.vni or derive_vni(lab.name), port=peers.port,
                       interface=facts.interface, local=facts.local, peers=facts.peers, mtu=mtu,
                       guest_mtu=guest_mtu, mtu_reason=reason, api_port=peers.api_port), issues


def derive_ssh_port(lab: str, guest: str, taken: set[int]) -> int:
    """Stable per lab+guest in 20000-29999; the next free one on a clash."""
    port = 20000 + int.from_bytes(_digest("ssh", lab, guest)[:4], "big") % 10000
    while port in taken:
        port = 20000 + (port - 19999) % 10000
    return port


def plan_user_nics(lab: Lab) -> list[UserNicPlan | None]:
    taken = {g.user_nic.ssh_port for g in lab.guests if g.user_nic and g.user_nic.ssh_port}
    out: list[UserNicPlan | None] = []
    for g in lab.guests:
        if g.user_nic is None:
            out.append(None)
            continue
        port = g.user_nic.ssh_port or derive_ssh_port(lab.name, g.name, taken)
        taken.add(port)
        out.append(UserNicPlan(mac=derive_mac(lab.name, g.name + "\0user"), ssh_port=port,
                               restrict=g.user_nic.restrict))
    return out


def guest_paths(state_dir: Path, name: str) -> GuestPaths:
    d = state_dir / "guests" / name
    return GuestPaths(dir=d, overlay=d / "overlay.qcow2", console_sock=d / "console.sock",
                      console_log=d / "console.log", qmp_sock=d / "qmp.sock", agent_sock=d / "qga.sock",
                      term_sock=d / "term.sock", stderr=d / "qemu.log")


# systemd gives a device 90 s and a unit 90 s to start by default; under TCG on
# a busy host udev can take longer to announce ttyS0, and serial-getty (the
# login prompt) then never starts. The seed's own qemu line passes 600 s; 16
# guests on 2 cores outlasted even that (each gets an eighth of a core). So
# the guest's systemd waits without a limit, and bridgelab's boot deadline,
# which stretches with the host's load (guest/paced.py), is the one that
# fails a guest that is truly stuck, with its console's last lines.
EMULATION_TIMEOUTS = ("systemd.default_device_timeout_sec=infinity", "systemd.default_timeout_start_sec=infinity")


def kernel_cmdline(image: Image, accel: str, extra: str) -> str:
    """The image's kernel command line, the lab's additions, and, under
    emulation, systemd timeouts fit for it (unless the line already sets
    them). Only a kernel qemu boots itself has a line to add to: a firmware
    boot reads it from the guest's disk (images bridgelab builds carry the
    same timeouts in their systemd configuration)."""
    parts = [a for a in (image.append, extra) if a]
    if image.style is BootStyle.kernel and accel == "tcg":
        given = " ".join(parts)
        parts += [t for t in EMULATION_TIMEOUTS if t.split("=")[0] + "=" not in given]
    return " ".join(parts)


def make_plan(lab: Lab, images: Mapping[str, Image], host: HostFacts, state_dir: Path) -> LabPlan:
    """`images` maps each guest's `image` reference to the resolved image."""
    uplink, issues = plan_uplink(lab, host.uplink)
    if lab.bridge.address is not None:
        host_address = lab.bridge.address
    elif uplink is not None and uplink.lan is not None:
        host_address = uplink.lan  # proxy-arp: guests live on the uplink's LAN
    else:
        raise SpecError(issues or [FieldIssue("bridge.address", "required unless the uplink is proxy-arp")])
    overlay, overlay_issues = plan_overlay(lab, host.underlay, host_address)
    issues += overlay_issues
    default_gateway = host_address.ip if lab.bridge.address is not None else (uplink.gateway if uplink else None)
    ips = allocate_ips(lab, host_address)
    user_nics = plan_user_nics(lab)
    bridge_prefix = host_address.network.prefixlen
    macs: dict[str, int] = {}
    taps: dict[str, int] = {lab.bridge.name: -1}
    guests: list[GuestPlan] = []
    for i, g in enumerate(lab.guests):
        at = f"guests[{i}]"
        mac = g.mac or derive_mac(lab.name, g.name)
        tap = g.tap or derive_tap(lab.name, g.name)
        if mac in macs:
            issues.append(FieldIssue(f"{at}.mac", f"MAC {mac} collides with guests[{macs[mac]}]; set mac explicitly"))
        macs.setdefault(mac, i)
        if tap in taps:
            other = "the bridge" if taps[tap] < 0 else f"guests[{taps[tap]}]"
            issues.append(FieldIssue(f"{at}.tap", f"tap {tap} collides with {other}; set tap explicitly"))
        taps.setdefault(tap, i)
        ip = ips[i]
        if ip is None:
            issues.append(FieldIssue(f"{at}.ip", f"no free address left in {lab.bridge.pool or host_address.network}"))
            continue
        if lab.bridge.address is None:  # proxy-arp: the spec could not check against the LAN
            issues += [FieldIssue(f"{at}.ip", m) for m in ip_problems(ip, host_address)]
            if ip == default_gateway:
                issues.append(FieldIssue(f"{at}.ip", f"{ip} is the LAN gateway"))
            if g.gateway is not None and g.gateway not in host_address.network:
                issues.append(FieldIssue(f"{at}.gateway", f"{g.gateway} is not on the LAN {host_address.network}"))
        accel, problem = resolve_accel(g, host)
        if problem:
            issues.append(FieldIssue(f"{at}.accel", problem))
        image = images.get(g.image)
        if image is None:
            issues.append(FieldIssue(f"{at}.image", f"image {g.image!r} was not resolved"))
            continue
        if image.arch is not g.arch:
            issues.append(FieldIssue(f"{at}.image",
                                     f"image {image.name} is {image.arch.value}, guest is {g.arch.value}"))
        paths = guest_paths(state_dir, g.name)
        for sock in paths.sockets:
            if len(str(sock)) > UNIX_PATH_MAX:
                issues.append(FieldIssue(at, f"socket path {sock} is longer than {UNIX_PATH_MAX} bytes; "
                                             "use a shorter --state-dir"))
        append = kernel_cmdline(image, accel, g.append or "")
        guests.append(GuestPlan(
            name=g.name, arch=g.arch, accel=accel, cpus=g.cpus, memory_mib=g.memory,
            ip=ipaddress.IPv4Interface(f"{ip}/{g.prefix or bridge_prefix}"), gateway=g.gateway or default_gateway,
            dns=tuple(g.dns), mac=mac, tap=tap, login=g.login or image.login, image=image,
            append=append, qemu_args=tuple(g.qemu_args),
            boot_timeout=g.boot_timeout or BOOT_TIMEOUT[accel], paths=paths, user_nic=user_nics[i],
            mtu=overlay.guest_mtu if overlay else None))
    if issues:
        raise SpecError(issues)
    return LabPlan(name=lab.name, bridge=lab.bridge.name, bridge_address=lab.bridge.address,
                   host_address=host_address, state_dir=state_dir,
                   bridge_mac=derive_bridge_mac(lab.name, lab.bridge.address if overlay else None),
                   guests=tuple(guests), uplink=uplink,
                   iptables_backend=None if lab.firewall.backend == "auto" else IptablesBackend(lab.firewall.backend),
                   warm_start=lab.warm_start, overlay=overlay)


def check_new_ip(plan: LabPlan, guest: str, ip: ipaddress.IPv4Address) -> list[str]:
    """Why `guest` may not move to `ip` (empty when it may)."""
    problems = ip_problems(ip, plan.host_address)
    if plan.bridge_address is None and ip == plan.default_gateway:
        problems.append(f"{ip} is the LAN gateway")
    for g in plan.guests:
        if g.name != guest and g.ip.ip == ip:
            problems.append(f"{ip} is already used by guest {g.name}")
    return problems


__all__ = ["BootStyle", "GuestPlan", "HostFacts", "LabPlan", "OverlayPlan", "UnderlayFacts", "UplinkFacts",
           "UplinkPlan", "UserNicPlan", "choose_mtu", "plan_overlay",
           "choose_uplink_mode", "check_new_ip", "derive_mac", "derive_tap",
           "make_plan", "allocate_ips"]
