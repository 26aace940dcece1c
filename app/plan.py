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

from .errors import FieldIssue, SpecError
from .images import BootStyle, Image
from .spec import Accel, Arch, Guest, Lab, Login, ip_problems

# sun_path in struct sockaddr_un is 108 bytes including the NUL.
UNIX_PATH_MAX = 107

BOOT_TIMEOUT = {"tcg": 600.0, "kvm": 120.0}


@dataclass(frozen=True)
class HostFacts:
    arch: str  # platform.machine(), e.g. "x86_64"
    kvm: bool  # /dev/kvm is usable


@dataclass(frozen=True)
class GuestPaths:
    dir: Path
    overlay: Path
    console_sock: Path
    console_log: Path
    qmp_sock: Path
    agent_sock: Path  # qemu-guest-agent's virtio-serial port
    stderr: Path


@dataclass(frozen=True)
class GuestPlan:
    name: str
    arch: Arch
    accel: str  # "tcg" | "kvm"
    cpus: int
    memory_mib: int
    ip: ipaddress.IPv4Interface
    gateway: ipaddress.IPv4Address
    dns: tuple[ipaddress.IPv4Address, ...]
    mac: str
    tap: str
    login: Login
    image: Image
    append: str
    qemu_args: tuple[str, ...]
    boot_timeout: float
    paths: GuestPaths


@dataclass(frozen=True)
class LabPlan:
    name: str
    bridge: str
    bridge_address: ipaddress.IPv4Interface
    bridge_mac: str
    state_dir: Path
    guests: tuple[GuestPlan, ...] = field(default=())

    def guest(self, name: str) -> GuestPlan | None:
        return next((g for g in self.guests if g.name == name), None)


def _digest(*parts: str) -> bytes:
    return hashlib.sha256("/".join(parts).encode()).digest()


def derive_mac(lab: str, guest: str) -> str:
    """Locally administered (bit 1 set), unicast (bit 0 clear), stable per lab+guest."""
    b = bytearray(_digest("mac", lab, guest)[:6])
    b[0] = (b[0] & 0xFC) | 0x02
    return ":".join(f"{x:02x}" for x in b)


def derive_bridge_mac(lab: str) -> str:
    # A bridge otherwise takes the lowest MAC of its ports, so its MAC (and
    # every guest's ARP entry for the gateway) would change as taps come and go.
    return derive_mac(lab, "\0bridge")


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


def allocate_ips(lab: Lab) -> list[ipaddress.IPv4Address | None]:
    """Explicit IPs stay; the rest get the lowest free host addresses, in guest order."""
    taken = {lab.bridge.address.ip} | {g.ip for g in lab.guests if g.ip is not None}
    pool = (ip for ip in lab.bridge.address.network.hosts() if ip not in taken)
    return [g.ip if g.ip is not None else next(pool, None) for g in lab.guests]


def guest_paths(state_dir: Path, name: str) -> GuestPaths:
    d = state_dir / "guests" / name
    return GuestPaths(dir=d, overlay=d / "overlay.qcow2", console_sock=d / "console.sock",
                      console_log=d / "console.log", qmp_sock=d / "qmp.sock", agent_sock=d / "qga.sock",
                      stderr=d / "qemu.log")


def make_plan(lab: Lab, images: Mapping[str, Image], host: HostFacts, state_dir: Path) -> LabPlan:
    """`images` maps each guest's `image` reference to the resolved image."""
    issues: list[FieldIssue] = []
    ips = allocate_ips(lab)
    bridge_prefix = lab.bridge.address.network.prefixlen
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
            issues.append(FieldIssue(f"{at}.ip", f"no free address left in {lab.bridge.address.network}"))
            continue
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
        for sock in (paths.console_sock, paths.qmp_sock, paths.agent_sock):
            if len(str(sock)) > UNIX_PATH_MAX:
                issues.append(FieldIssue(at, f"socket path {sock} is longer than {UNIX_PATH_MAX} bytes; "
                                             "use a shorter --state-dir"))
        append = " ".join(a for a in (image.append, g.append or "") if a)
        guests.append(GuestPlan(
            name=g.name, arch=g.arch, accel=accel, cpus=g.cpus, memory_mib=g.memory,
            ip=ipaddress.IPv4Interface(f"{ip}/{g.prefix or bridge_prefix}"), gateway=g.gateway or lab.bridge.address.ip,
            dns=tuple(g.dns), mac=mac, tap=tap, login=g.login or image.login, image=image,
            append=append, qemu_args=tuple(g.qemu_args),
            boot_timeout=g.boot_timeout or BOOT_TIMEOUT[accel], paths=paths))
    if issues:
        raise SpecError(issues)
    return LabPlan(name=lab.name, bridge=lab.bridge.name, bridge_address=lab.bridge.address,
                   bridge_mac=derive_bridge_mac(lab.name), state_dir=state_dir, guests=tuple(guests))


def check_new_ip(plan: LabPlan, guest: str, ip: ipaddress.IPv4Address) -> list[str]:
    """Why `guest` may not move to `ip` (empty when it may)."""
    problems = ip_problems(ip, plan.bridge_address)
    for g in plan.guests:
        if g.name != guest and g.ip.ip == ip:
            problems.append(f"{ip} is already used by guest {g.name}")
    return problems


__all__ = ["BootStyle", "GuestPlan", "HostFacts", "LabPlan", "check_new_ip", "derive_mac", "derive_tap",
           "make_plan", "allocate_ips"]
