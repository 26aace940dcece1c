"""What hosts of one lab tell each other (GET /peering), and the clashes
found in it. Pure.

Each host hands out its own guests' addresses (explicit, or from its own
pool), so nothing but an exchange can find two hosts handing out one
address, or two guests with one MAC (MACs are hashed from the lab and guest
names, and every host runs the same lab). A clash names both sides.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from pydantic import BaseModel, ConfigDict, Field

from .plan import LabPlan


class PeerGuest(BaseModel):
    model_config = ConfigDict(frozen=True)

    name: str
    ip: ipaddress.IPv4Address
    mac: str
    state: str = Field(description="the guest's state on its host (booting ... ready, failed, stopped)")


class Declaration(BaseModel):
    """One host's part of the lab."""

    model_config = ConfigDict(frozen=True)

    lab: str
    host: ipaddress.IPv4Address = Field(description="the host's underlay address")
    bridge: ipaddress.IPv4Interface = Field(description="the host's address on its lab bridge")
    bridge_mac: str
    vni: int
    port: int
    guests: list[PeerGuest]


def declaration(plan: LabPlan, states: dict[str, str]) -> Declaration:
    assert plan.overlay is not None, "only a lab with peers declares itself to them"
    assert plan.bridge_address is not None, "peers need a bridge address (the spec refuses proxy-arp with peers)"
    return Declaration(lab=plan.name, host=plan.overlay.local, bridge=plan.bridge_address,
                       bridge_mac=plan.bridge_mac, vni=plan.overlay.vni, port=plan.overlay.port,
                       guests=[PeerGuest(name=g.name, ip=g.ip.ip, mac=g.mac, state=states.get(g.name, "declared"))
                               for g in plan.guests])


@dataclass(frozen=True)
class Clash:
    guest: str | None  # this host's guest that clashes; None: the lab or the bridge
    message: str
    field: str = ""  # the guest's field that clashes: ip, mac or name ("" for the lab or the bridge)


def _lab_clashes(mine: Declaration, theirs: Declaration) -> list[Clash]:
    at = f"peer {theirs.host}"
    out = []
    if theirs.lab != mine.lab:
        out.append(Clash(None, f"{at} runs lab {theirs.lab!r}, this host ({mine.host}) lab {mine.lab!r}: "
                               "peers must run the same lab"))
    if (theirs.vni, theirs.port) != (mine.vni, mine.port):
        out.append(Clash(None, f"{at} uses VNI {theirs.vni} on UDP port {theirs.port}, this host ({mine.host}) "
                               f"VNI {mine.vni} on {mine.port}: frames would not cross"))
    if theirs.bridge.network != mine.bridge.network:
        out.append(Clash(None, f"{at}'s bridge is on {theirs.bridge.network}, this host's ({mine.host}) on "
                               f"{mine.bridge.network}: peers share one subnet"))
    if theirs.bridge.ip == mine.bridge.ip:
        out.append(Clash(None, f"this host ({mine.host}) and {at} both have the bridge address {mine.bridge.ip}"))
    if theirs.bridge_mac == mine.bridge_mac:
        out.append(Clash(None, f"this host ({mine.host}) and {at} both have the bridge MAC {mine.bridge_mac}"))
    return out


def clashes(mine: Declaration, theirs: Declaration) -> list[Clash]:
    """Everything in `theirs` that cannot share one L2 with `mine`."""
    out = _lab_clashes(mine, theirs)
    here, there = f"on this host ({mine.host})", f"on peer {theirs.host}"
    for g in mine.guests:
        if g.ip == theirs.bridge.ip:
            out.append(Clash(g.name, f"guest {g.name} {here} has {g.ip}, the bridge address {there}", "ip"))
        for o in theirs.guests:
            for field, what, a, b in (("ip", "address", g.ip, o.ip), ("mac", "MAC", g.mac, o.mac),
                                      ("name", "name", g.name, o.name)):
                if a == b:
                    out.append(Clash(g.name, f"guest {g.name} {here} and guest {o.name} {there} share the {what} {a}",
                                     field))
    for o in theirs.guests:
        if o.ip == mine.bridge.ip:
            out.append(Clash(None, f"guest {o.name} {there} has {o.ip}, this host's bridge address"))
    return out


__all__ = ["Clash", "Declaration", "PeerGuest", "clashes", "declaration"]
