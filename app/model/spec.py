"""Lab file models and validation. Pure: no I/O beyond parsing the given text.

`load_lab_text` returns a validated `Lab` or raises `SpecError` listing every
problem found, each with its field path (``guests[1].ip: ...``).
"""

from __future__ import annotations

import ipaddress
import re
from enum import StrEnum
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BeforeValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
)

from ..errors import FieldIssue, SpecError
from ..settings import IptablesBackend
from .fields import (
    GUEST_NAME,
    GuestName,
    IFNAMSIZ,
    RESERVED_QEMU_OPTIONS,
    Accel,
    Arch,
    IfName,
    Mac,
    MemoryMiB,
    SafeStr,
    has_control_chars,
    normalize_mac,
    parse_memory_mib,
)


class _Model(BaseModel):
    # Unknown keys are typos more often than intent: reject them.
    model_config = ConfigDict(extra="forbid", frozen=True)


class Login(_Model):
    user: str = Field(min_length=1, max_length=32, pattern=r"^[a-z_][a-z0-9_.-]*$",
                      description="the user bridgelab logs in as on the serial console")
    password: SafeStr = Field(min_length=1, max_length=256, description="its password")


class Bridge(_Model):
    name: IfName = Field(default="br0", description="the bridge's interface name")
    address: ipaddress.IPv4Interface | None = Field(
        default=None, description="the host's address on the bridge; required unless the uplink is proxy-arp")
    pool: ipaddress.IPv4Network | None = Field(default=None, description=(
        "where guests without an `ip` take theirs (default: the whole subnet); with `peers`, give each host "
        "its own, for example 10.198.101.64/27"))

    @field_validator("address", mode="before")
    @classmethod
    def _needs_prefix(cls, v: Any) -> Any:
        if isinstance(v, str) and "/" not in v:
            raise ValueError(f"{v!r} needs a prefix length, e.g. {v}/24")
        return v

    @field_validator("address")
    @classmethod
    def _usable(cls, v: ipaddress.IPv4Interface | None) -> ipaddress.IPv4Interface | None:
        if v is None:
            return v
        net = v.network
        if net.prefixlen > 30:
            raise ValueError(f"/{net.prefixlen} leaves no room for guests; use /30 or shorter")
        if v.ip in (net.network_address, net.broadcast_address):
            raise ValueError(f"{v.ip} is the network or broadcast address of {net}")
        return v

    @field_validator("pool", mode="before")
    @classmethod
    def _pool_is_a_network(cls, v: Any) -> Any:
        if isinstance(v, str) and "/" not in v:
            raise ValueError(f"{v!r} needs a prefix length, e.g. {v}/27")
        if isinstance(v, str):
            try:
                ipaddress.IPv4Network(v)
            except ValueError:
                raise ValueError(f"{v!r} has host bits set: write the network, e.g. "
                                 f"{ipaddress.IPv4Network(v, strict=False)}") from None
        return v


class UplinkMode(StrEnum):
    """What the lab file asks for."""

    none = "none"
    nat = "nat"
    proxy_arp = "proxy-arp"
    auto = "auto"


class UplinkKind(StrEnum):
    """What an uplink is once planned (auto has been decided)."""

    nat = "nat"
    proxy_arp = "proxy-arp"


class Uplink(_Model):
    """How guests reach beyond the host."""

    mode: UplinkMode = Field(default=UplinkMode.none, description=(
        "nat: guests share the host's address; proxy-arp: guests take addresses on the uplink's LAN; "
        "auto: either, by `lan_reachable`, on the default route's interface"))
    interface: IfName | None = Field(default=None, description="default: the interface of the default route")
    lan_reachable: bool = Field(
        default=False, description="auto mode: guests take addresses on the uplink's LAN (proxy-arp) "
                                   "so that LAN hosts reach them directly; otherwise NAT")
    target: ipaddress.IPv4Address | None = Field(
        default=None, description="what the self-test pings beyond the uplink; default: the uplink's gateway")

    @property
    def lan_addresses(self) -> bool:
        """Do guests live on the uplink's LAN (proxy-arp) rather than the bridge subnet?"""
        return self.mode is UplinkMode.proxy_arp or (self.mode is UplinkMode.auto and self.lan_reachable)


class Firewall(_Model):
    backend: Literal["auto"] | IptablesBackend = Field(
        default="auto", description="iptables backend; auto picks the one holding the host's rules. "
                                    "$BRIDGELAB_IPTABLES overrides this")


class UserNic(_Model):
    """A second NIC on qemu user networking, only to reach the guest's ssh from the host."""

    ssh_port: int | None = Field(default=None, ge=1024, le=65535,
                                 description="host port on 127.0.0.1 forwarded to the guest's port 22; "
                                             "default: derived from the lab and guest names")
    restrict: bool = Field(default=True, description="isolate the guest from the host and the outside "
                                                     "through this NIC (forwarded ports still work)")


class MtuPolicy(StrEnum):
    """What VXLAN's 50 bytes of headers do to the guests' MTU."""

    auto = "auto"
    lower_guests = "lower"
    check = "check"


VNI_MAX = (1 << 24) - 1
_HOSTNAME = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*$")


def _peer_host(v: Any) -> Any:
    """An IPv4 address, or a DNS name (a headless Service's, in a cluster).
    All-numeric names are mistyped addresses, not names."""
    if isinstance(v, ipaddress.IPv4Address):
        return v
    if not isinstance(v, str):
        raise ValueError("expected an IPv4 address or a DNS name, in quotes if YAML reads it otherwise")
    try:
        ip = ipaddress.IPv4Address(v)
    except ValueError:
        pass
    else:
        if ip.is_unspecified or ip.is_multicast or ip.is_loopback or ip == ipaddress.IPv4Address("255.255.255.255"):
            raise ValueError(f"{ip} cannot be another host's unicast address")
        return ip
    if not _HOSTNAME.match(v) or len(v) > 253 or v.replace(".", "").isdigit():
        raise ValueError(f"{v[:60]!r} is neither an IPv4 address nor a DNS name")
    return v


PeerHost = Annotated[Annotated[ipaddress.IPv4Address | Annotated[str, Field(json_schema_extra={"format": "hostname"})],
                               Field(union_mode="left_to_right")],
                     BeforeValidator(_peer_host)]


class Peers(_Model):
    """Other hosts running bridgelab whose bridges join this one over VXLAN."""

    hosts: list[PeerHost] = Field(min_length=1, max_length=64, description=(
        "the other hosts' underlay addresses, or DNS names (every A record is a peer; this host's own "
        "addresses are left out, so one headless Service name serves every node)"))
    vni: int | None = Field(default=None, ge=1, le=VNI_MAX, description=(
        "the VXLAN network identifier, the same on every host; default: hashed from the lab name"))
    port: int = Field(default=4789, ge=1, le=65535, description=(
        "the VXLAN UDP port, the same on every host (containerlab uses 14789 where 4789 is filtered)"))
    interface: IfName | None = Field(default=None, description=(
        "the underlay interface; default: the one the route to the first peer leaves by"))
    mtu: MtuPolicy = Field(default=MtuPolicy.auto, description=(
        "auto: guests keep MTU 1500 when the underlay carries 1550 bytes, else they get the underlay's MTU - 50; "
        "lower: always the underlay's MTU - 50; check: refuse to start unless the underlay carries 1550"))
    api_port: int = Field(default=8700, ge=1, le=65535, description=(
        "where the peers' APIs answer (they exchange their guests with the shared token, "
        "$BRIDGELAB_TOKEN)"))


class Guest(_Model):
    name: GuestName = Field(description="unique in the lab; names the tap and the guest's state")
    arch: Arch = Field(default=Arch.riscv64, description="the guest's architecture (qemu-system-ARCH)")
    image: SafeStr = Field(min_length=1, description=(
        "a recipe name (images/, `bridgelab image list`), or a path to a manifest.yaml or its directory"))
    cpus: int = Field(default=1, ge=1, le=64, description="vCPUs; under TCG each is one host thread")
    memory: MemoryMiB = Field(default=1024, description="MiB, or with a unit: 1G, 512M")
    ip: ipaddress.IPv4Address | None = Field(default=None, description=(
        "default: the lowest free address in the bridge's subnet"))
    prefix: int | None = Field(default=None, ge=8, le=30, description=(
        "default: the bridge's prefix length (a longer one isolates a guest on purpose)"))
    mac: Mac | None = Field(default=None, description=(
        "default: locally administered unicast, hashed from the lab and guest names"))
    tap: IfName | None = Field(default=None, description=(
        "default: blXXXX-GUEST (XXXX from the lab name), at most 15 characters"))
    gateway: ipaddress.IPv4Address | None = Field(default=None, description="default: the bridge address")
    dns: list[ipaddress.IPv4Address] = Field(default_factory=list, max_length=3, description="name servers")
    login: Login | None = Field(default=None, description="default: the image's login")
    append: SafeStr | None = Field(default=None, description="extra kernel arguments, after the image's own")
    accel: Accel = Field(default=Accel.auto, description=(
        "auto: kvm when the arch is the host's and /dev/kvm works, else tcg"))
    qemu_args: list[SafeStr] = Field(default_factory=list, description=(
        "appended last; options bridgelab owns (-serial, -kernel, ...) are refused"))
    boot_timeout: float | None = Field(default=None, gt=0, le=3600, description=(
        "seconds to a shell; default 600 under tcg, 120 under kvm"))
    user_nic: UserNic | None = Field(default=None, description=(
        "a second NIC on qemu's user network for ssh from the host; `true` for the defaults"))

    @field_validator("user_nic", mode="before")
    @classmethod
    def _user_nic_shorthand(cls, v: Any) -> Any:
        return {} if v is True else None if v is False else v

    @field_validator("qemu_args")
    @classmethod
    def _no_reserved(cls, v: list[str]) -> list[str]:
        clash = sorted({a.split("=", 1)[0] for a in v} & RESERVED_QEMU_OPTIONS)
        if clash:
            raise ValueError(f"{', '.join(clash)} is managed by bridgelab and cannot be passed in qemu_args")
        return v


class Lab(_Model):
    name: str = Field(default="bridgelab", description="a-z 0-9 -; seeds MACs and tap names")
    bridge: Bridge = Field(description="the Linux bridge every guest's tap joins")
    uplink: Uplink = Field(default=Uplink(), description="how guests reach beyond the host (docs/uplinks.md)")
    firewall: Firewall = Field(default=Firewall(), description="where the lab's own tagged iptables rules go")
    peers: Peers | None = Field(default=None, description=(
        "other hosts whose bridges join this lab's over VXLAN (docs/peers.md); a list of addresses "
        "for the defaults"))
    warm_start: bool = Field(default=True, description=(
        "keep a `ready` snapshot of each guest the first time it is ready, and restore it instead of booting "
        "on the next start while it is still valid (`serve --cold` boots anyway)"))
    guests: list[Guest] = Field(min_length=1, description="at least one")

    @field_validator("peers", mode="before")
    @classmethod
    def _peers_shorthand(cls, v: Any) -> Any:
        return {"hosts": v} if isinstance(v, list) else v

    @field_validator("name")
    @classmethod
    def _lab_name(cls, v: str) -> str:
        if problem := lab_name_problem(v):
            raise ValueError(problem)
        return v


def lab_name_problem(name: str) -> str | None:
    """Lab names become link aliases, rule tags and directory names."""
    return None if GUEST_NAME.match(name) else f"invalid lab name {name[:40]!r}: 1-32 of a-z 0-9 '-'"


# ---------------------------------------------------------------- validation


def format_loc(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out


def _control_char_issues(data: Any, loc: tuple[Any, ...] = ()) -> list[FieldIssue]:
    """Walk the raw YAML so that control characters are reported even in keys
    and in fields whose own validation would fail for another reason."""
    issues: list[FieldIssue] = []
    if isinstance(data, dict):
        for k, v in data.items():
            if isinstance(k, str) and has_control_chars(k):
                issues.append(FieldIssue(format_loc(loc), f"key {k!r} contains control characters"))
            issues += _control_char_issues(v, loc + (k,))
    elif isinstance(data, list):
        for i, v in enumerate(data):
            issues += _control_char_issues(v, loc + (i,))
    elif isinstance(data, str) and has_control_chars(data):
        issues.append(FieldIssue(format_loc(loc), "control characters are not allowed"))
    return issues


def pydantic_issues(err: ValidationError) -> list[FieldIssue]:
    issues = []
    for e in err.errors():
        loc = tuple(p for p in e["loc"] if not (isinstance(p, str) and p.startswith("function-")))
        msg = e["msg"].removeprefix("Value error, ")
        issues.append(FieldIssue(format_loc(loc), msg))
    return issues


def cross_check(bridge: Bridge | None, guests: list[tuple[int, Guest]]) -> list[FieldIssue]:
    """Checks that involve more than one field: duplicates and subnet membership.
    Runs on whatever validated, so one bad field does not hide the others."""
    issues: list[FieldIssue] = []
    seen: dict[str, dict[Any, int]] = {"name": {}, "ip": {}, "mac": {}, "tap": {}, "user_nic.ssh_port": {}}
    for i, g in guests:
        for field in seen:
            value = g.user_nic.ssh_port if field == "user_nic.ssh_port" and g.user_nic else getattr(g, field, None)
            if value is None:
                continue
            if value in seen[field]:
                issues.append(FieldIssue(f"guests[{i}].{field}",
                                         f"duplicate {field} {value} (also guests[{seen[field][value]}])"))
            else:
                seen[field][value] = i
        if bridge is None:
            continue
        if g.tap is not None and g.tap == bridge.name:
            issues.append(FieldIssue(f"guests[{i}].tap", f"{g.tap} is the bridge's name"))
        if bridge.address is None:
            continue  # guests live on the uplink's LAN: checked against it when planning
        if g.ip is not None:
            issues += [FieldIssue(f"guests[{i}].ip", m) for m in ip_problems(g.ip, bridge.address)]
        if g.gateway is not None and g.gateway not in bridge.address.network:
            issues.append(FieldIssue(f"guests[{i}].gateway",
                                     f"{g.gateway} is not reachable on {bridge.address.network}"))
        if g.ip is not None and g.prefix is not None:
            issues += [FieldIssue(f"guests[{i}].{f}", m) for f, m in own_net_problems(
                g.ip, g.prefix, g.gateway or bridge.address.ip)]
    return issues


def uplink_issues(lab: Lab) -> list[FieldIssue]:
    """Where guests get their addresses follows from the uplink mode."""
    if lab.uplink.lan_addresses:
        issues = [FieldIssue(f"guests[{i}].ip", "with a proxy-arp uplink every guest needs an explicit ip "
                                                "on the uplink's LAN (bridgelab cannot know which are free)")
                  for i, g in enumerate(lab.guests) if g.ip is None]
        if lab.bridge.address is not None:
            issues.append(FieldIssue("bridge.address", "not used with a proxy-arp uplink: guests take addresses "
                                                       "on the uplink's LAN; remove it"))
        return issues
    if lab.bridge.address is None:
        return [FieldIssue("bridge.address", "required (for example 10.198.101.114/24) unless the uplink "
                                             "is proxy-arp")]
    return []


def pool_issues(lab: Lab) -> list[FieldIssue]:
    """The pool lies in the bridge subnet; with peers, every guest's address
    is one this host alone hands out: explicit, or from its own pool."""
    issues = []
    pool, address = lab.bridge.pool, lab.bridge.address
    if pool is not None and address is not None and not pool.subnet_of(address.network):
        issues.append(FieldIssue("bridge.pool", f"{pool} is not inside the bridge subnet {address.network}"))
    if lab.peers is None:
        return issues
    if lab.uplink.lan_addresses:
        issues.append(FieldIssue("peers", "peers join bridges that carry an address in one shared subnet; "
                                          "a proxy-arp uplink puts guests on the uplink's LAN instead"))
    if pool is None:
        issues += [FieldIssue(f"guests[{i}].ip", "with peers every guest needs an explicit ip, or the bridge a "
                                                 "`pool` of its own, so that no two hosts hand out one address")
                   for i, g in enumerate(lab.guests) if g.ip is None]
    return issues


def _valid_parts(data: dict[str, Any]) -> tuple[Bridge | None, list[tuple[int, Guest]]]:
    """The bridge and guests that validate on their own (for cross checks after a failure)."""
    try:
        bridge: Bridge | None = Bridge.model_validate(data.get("bridge"))
    except ValidationError:
        bridge = None
    guests = []
    raw = data.get("guests")
    for i, g in enumerate(raw if isinstance(raw, list) else []):
        if not isinstance(g, dict):
            continue
        try:
            guests.append((i, Guest.model_validate(g)))
        except ValidationError as err:
            # Keep the fields that are fine, so duplicates among them are
            # still reported next to this guest's own errors.
            bad = {e["loc"][0] for e in err.errors() if e["loc"]}
            if "name" in bad:
                continue
            kept = {k: v for k, v in g.items() if k not in bad and k in Guest.model_fields}
            kept.setdefault("image", "?")
            try:
                guests.append((i, Guest.model_validate(kept)))
            except ValidationError:
                pass
    return bridge, guests


def ip_problems(ip: ipaddress.IPv4Address, bridge: ipaddress.IPv4Interface) -> list[str]:
    net = bridge.network
    if ip not in net:
        return [f"{ip} is outside the bridge subnet {net}"]
    if ip == bridge.ip:
        return [f"{ip} is the host's own address (the bridge's own, or the uplink's with proxy-arp)"]
    if ip in (net.network_address, net.broadcast_address):
        return [f"{ip} is the network or broadcast address of {net}"]
    return []


def own_net_problems(ip: ipaddress.IPv4Address, prefix: int,
                     gateway: ipaddress.IPv4Address) -> list[tuple[str, str]]:
    """(field, problem) for a guest whose prefix differs from the bridge's."""
    net = ipaddress.IPv4Interface(f"{ip}/{prefix}").network
    problems = []
    if ip in (net.network_address, net.broadcast_address):
        problems.append(("ip", f"{ip} is the network or broadcast address of {net}"))
    if gateway not in net:
        problems.append(("gateway", f"gateway {gateway} is not on the guest's network {net}"))
    return problems


def parse_lab_data(data: Any) -> Lab:
    if not isinstance(data, dict):
        raise SpecError([FieldIssue("", "a lab file must be a YAML mapping with 'bridge' and 'guests'")])
    issues = _control_char_issues(data)
    try:
        lab = Lab.model_validate(data)
    except ValidationError as err:
        issues += pydantic_issues(err) + cross_check(*_valid_parts(data))
        raise SpecError(_dedupe(issues)) from None
    issues += uplink_issues(lab) + pool_issues(lab) + cross_check(lab.bridge, list(enumerate(lab.guests)))
    if issues:
        raise SpecError(_dedupe(issues))
    return lab


def load_lab_text(text: str) -> Lab:
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise SpecError([FieldIssue("", f"not valid YAML: {err}")]) from None
    return parse_lab_data(data)


def _dedupe(issues: list[FieldIssue]) -> list[FieldIssue]:
    return list(dict.fromkeys(issues))


__all__ = [
    "Accel", "Arch", "Bridge", "Firewall", "Guest", "Lab", "Login", "IFNAMSIZ", "MtuPolicy", "Peers", "Uplink",
    "UplinkMode", "UserNic",
    "RESERVED_QEMU_OPTIONS", "load_lab_text", "parse_lab_data", "ip_problems", "normalize_mac",
    "parse_memory_mib", "has_control_chars",
]
