"""Uplink self-test: does a guest reach a target beyond the uplink, and if
not, which layer failed?

Evidence is gathered on both sides of the failure, then `diagnose` (pure)
walks the path outwards from the guest:

  guest      no route to the target inside the guest (gateway missing)
  l2         the guest's next hop never answered ARP (the bridge, or the
             host's proxy-ARP)
  nat_route  the host does not forward (ip_forward off, no route out the
             uplink, MASQUERADE gone, no return path) or the target is
             beyond reach of the host itself
  netfilter  the guest's packets never reached bridgelab's ACCEPT rule: a
             rule before it, another backend, or firewalld drops them

The netfilter and NAT evidence are the packet counters of bridgelab's own
rules, read before and after the guest's ping.
"""

from __future__ import annotations

import ipaddress
import json
import re
import shutil
import socket
from dataclasses import dataclass
from typing import Any, Literal

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from .. import proc
from ..model.plan import LabPlan
from ..model.spec import UplinkKind
from . import firewall, uplink

Layer = Literal["ok", "guest", "l2", "netfilter", "nat_route"]

_VIA = re.compile(r"\bvia (\d+\.\d+\.\d+\.\d+)")


@dataclass(frozen=True)
class Counters:
    forward_out: int | None  # bridgelab's ACCEPT for guest -> uplink; None: the rule is gone
    masquerade: int | None  # nat mode only


@dataclass(frozen=True)
class Evidence:
    guest_route: str | None  # `ip -4 route get TARGET` in the guest; None: no route
    next_hop_arp: str  # network.neighbour(): resolved / failed / none
    ip_forward: bool
    host_route_dev: str | None  # the host's route to the target leaves through this device
    before: Counters
    after: Counters
    host_reaches_target: bool
    uplink_proxy_arp: bool
    foreign_forward_drops: tuple[str, ...] = ()  # nftables tables, not iptables', that drop in forward


def next_hop(route_get: str, target: ipaddress.IPv4Address) -> ipaddress.IPv4Address:
    """The gateway of `ip route get` output, or the target itself when on-link."""
    m = _VIA.search(route_get)
    return ipaddress.IPv4Address(m.group(1)) if m else target


def _moved(before: int | None, after: int | None) -> bool | None:
    if before is None or after is None:
        return None
    return after > before


def diagnose(ev: Evidence, plan: LabPlan, target: ipaddress.IPv4Address, hints: list[str]) -> tuple[Layer, str]:
    """Pure: the first layer, from the guest outwards, that explains the failure."""
    up = plan.uplink
    assert up is not None
    if ev.guest_route is None:
        return "guest", f"the guest has no route to {target}: its gateway is not set"
    hop = next_hop(ev.guest_route, target)
    if ev.next_hop_arp != "resolved":
        who = "the host's proxy-ARP on the bridge" if up.mode is UplinkKind.proxy_arp else "the bridge"
        return "l2", f"ARP for the guest's next hop {hop} got no answer ({who}: tap off the bridge or link down)"
    if not ev.ip_forward:
        return "nat_route", "IPv4 forwarding is off on the host (net.ipv4.ip_forward=0)"
    if ev.host_route_dev != up.interface:
        return "nat_route", (f"the host routes {target} via {ev.host_route_dev or 'nothing'}, "
                             f"not the uplink {up.interface}")
    forwarded = _moved(ev.before.forward_out, ev.after.forward_out)
    if forwarded is None:
        return "netfilter", "bridgelab's FORWARD rules are gone (was the firewall flushed?); restart the lab"
    if not forwarded:
        detail = ("the guest's packets reached the host but never bridgelab's ACCEPT rule: a rule before it, "
                  "the other iptables backend or another nftables table drops them")
        return "netfilter", detail + ("; " + "; ".join(hints) if hints else "")
    if up.mode is UplinkKind.nat and not _moved(ev.before.masquerade, ev.after.masquerade):
        return "nat_route", "packets were forwarded but MASQUERADE did not apply: the NAT rule is gone"
    if ev.foreign_forward_drops:
        detail = (f"bridgelab's ACCEPT passed the packets, but nftables table(s) "
                  f"{', '.join(ev.foreign_forward_drops)} drop in their own forward hook (firewalld works this way); "
                  "an iptables ACCEPT is not final there")
        return "netfilter", detail + ("; " + "; ".join(hints) if hints else "")
    if not ev.host_reaches_target:
        return "nat_route", f"the host itself cannot reach {target}: the problem is beyond the uplink"
    if up.mode is UplinkKind.proxy_arp and not ev.uplink_proxy_arp:
        return "nat_route", f"proxy_arp is off on {up.interface}: the LAN cannot find the guest"
    return "nat_route", (f"requests left through {up.interface} but no reply came back: the return path "
                         "(the LAN's route or ARP for the guest, or the target's own firewall)")


# ---------------------------------------------------------------- host-side evidence


def counters(plan: LabPlan, rs: firewall.Ruleset) -> Counters:
    if rs.cmd is None or plan.uplink is None:
        return Counters(None, None)
    prefix, up = firewall.chain_prefix(plan.name), plan.uplink.interface
    chain = rs.chain("filter")
    out_rule = next((i for i, r in enumerate(chain.rules) if r[:4] == ("-i", plan.bridge, "-o", up)
                     and r[-2:] == ("-j", "ACCEPT")), None) if chain else None
    fwd = firewall.rule_counters(rs.cmd, "filter", prefix + "FWD")
    nat = firewall.rule_counters(rs.cmd, "nat", prefix + "NAT") if plan.uplink.mode is UplinkKind.nat else []
    return Counters(forward_out=fwd[out_rule] if out_rule is not None and out_rule < len(fwd) else None,
                    masquerade=nat[0] if nat else None)


def host_route_dev(target: ipaddress.IPv4Address) -> str | None:
    with IPRoute() as ipr:
        try:
            route = ipr.route("get", dst=str(target))[0]
        except NetlinkError:
            return None
        oif = route.get_attr("RTA_OIF")
        return socket.if_indextoname(oif) if oif else None


def host_reaches(target: ipaddress.IPv4Address) -> bool:
    return proc.run(["ping", "-n", "-q", "-c", "1", "-w", "2", str(target)], check=False).returncode == 0


# The tables iptables-nft itself uses: our ACCEPT rules live (or are
# outranked by rules) there, and the counters already tell that story.
_IPTABLES_TABLES = {("ip", "filter"), ("ip", "nat"), ("ip", "mangle"), ("ip", "raw"), ("ip", "security")}


def forward_drops(ruleset: dict[str, Any]) -> list[str]:
    """Pure: `family name` of nftables tables outside iptables' own whose
    forward-hook chains drop (by policy or by rule), from `nft -j list ruleset`."""
    items = ruleset.get("nftables", [])
    chains = {(c["family"], c["table"], c["name"]): c for i in items if (c := i.get("chain"))}
    dropping: set[tuple[str, str]] = set()
    for key, c in chains.items():
        if c.get("hook") == "forward" and c.get("policy") == "drop":
            dropping.add(key[:2])
    for i in items:
        r = i.get("rule")
        if r and chains.get((r["family"], r["table"], r["chain"]), {}).get("hook") == "forward":
            if any("drop" in e or "reject" in e for e in r.get("expr", [])):
                dropping.add((r["family"], r["table"]))
    return sorted(f"{f} {t}" for f, t in dropping - _IPTABLES_TABLES)


def foreign_forward_drops() -> list[str]:
    if not shutil.which("nft"):
        return []
    out = proc.run(["nft", "-j", "list", "ruleset"], check=False).stdout
    try:
        return forward_drops(json.loads(out)) if out.strip() else []
    except ValueError:
        return []


def host_side(plan: LabPlan) -> tuple[bool, bool]:
    """(ip_forward on, proxy_arp on the uplink)."""
    assert plan.uplink is not None
    fwd = uplink.read_sysctl(uplink.IP_FORWARD) == "1"
    try:
        parp = uplink.read_sysctl(f"net/ipv4/conf/{plan.uplink.interface}/proxy_arp") == "1"
    except OSError:
        parp = False
    return fwd, parp


__all__ = ["Counters", "Evidence", "Layer", "counters", "diagnose", "host_reaches", "host_route_dev", "host_side",
           "next_hop"]
