"""What the lab reports back: an exec's result and the probes' findings
(the API serves them as they are)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

from ..guest.shell import Via


class ExecResult(BaseModel):
    exit_code: int | None = Field(description="null when the command timed out")
    output: str = Field(description="stdout; via the console, stdout and stderr merged (a console has one stream)")
    stderr: str | None = Field(description="stderr via the guest agent; null via the console")
    timed_out: bool
    truncated: bool
    duration: float
    via: Via = Field(description="qemu-guest-agent when it answers, else the serial console")


class MeshPair(BaseModel):
    source: str
    target: str
    target_ip: str
    ok: bool
    diagnosis: Literal["ok", "guest_down", "no_arp", "arp_no_icmp", "address_not_configured",
                       "source_not_configured", "underlay"] = Field(description=(
        "where it breaks; `underlay`: between this host and a peer's (peer unreachable, or its VXLAN UDP "
        "dropped)"))
    detail: str


class UplinkProbe(BaseModel):
    source: str
    target: str
    ok: bool
    layer: Literal["ok", "guest", "l2", "netfilter", "nat_route"] = Field(
        description="where the path to the target breaks: in the guest, at L2 (ARP), in netfilter, "
                    "or in forwarding/NAT/routing")
    detail: str


class MeshReport(BaseModel):
    ok: bool
    pairs: list[MeshPair]
    uplink: list[UplinkProbe] = Field(default_factory=list,
                                      description="each guest to the uplink's self-test target, when there is one")
    skipped: list[str] = Field(description="guests that are not ready and so were not sources")


__all__ = ["ExecResult", "MeshPair", "MeshReport", "UplinkProbe"]
