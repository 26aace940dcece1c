"""API request and response bodies: the typed contract behind the OpenAPI document."""

from __future__ import annotations

import ipaddress
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from ..guest.shell import Via
from ..lab.states import GuestState
from ..model.spec import Arch, Guest, SafeStr, UplinkKind

GUEST_NAME_PATTERN = r"^[a-z0-9]([a-z0-9-]{0,30}[a-z0-9])?$"
STAGES = ("qemu_started", "firmware", "kernel", "userspace", "login_prompt", "logged_in", "configured",
          "mesh_verified")


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ErrorBody(BaseModel):
    detail: str = Field(examples=["no guest named 'rv9'"])


class GuestView(BaseModel):
    name: str
    state: GuestState
    arch: Arch
    accel: str
    ip: str
    prefix: int
    gateway: str | None
    dns: list[str]
    mac: str
    tap: str
    pid: int | None
    timestamps: dict[str, float] = Field(description="Unix time each state was entered")
    stages: dict[str, float] = Field(
        description="Unix time each boot stage was seen this boot: " + ", ".join(STAGES)
        + ". 'kernel' is missing when the kernel boots quietly.")
    reason: str | None = Field(description="why the guest failed")
    mesh: dict[str, bool] = Field(description="last mesh check from this guest: target IP -> reachable")
    changed: bool | None = Field(description="whether the last network configuration changed anything")
    console_tail: str
    ssh: str | None = Field(default=None, description="host address of the user-mode NIC's ssh forward")

    model_config = ConfigDict(json_schema_extra={"examples": [{
        "name": "rv1", "state": "ready", "arch": "riscv64", "accel": "tcg", "ip": "10.198.101.1", "prefix": 24,
        "gateway": "10.198.101.114", "dns": [], "mac": "62:8c:29:06:78:c4", "tap": "bl1f06-rv1", "pid": 724,
        "timestamps": {"booting": 1795602727.7, "ready": 1795602790.3},
        "stages": {"qemu_started": 1795602727.9, "firmware": 1795602728.4, "login_prompt": 1795602780.8},
        "reason": None, "mesh": {"10.198.101.114": True, "10.198.101.2": True}, "changed": True,
        "console_tail": "bridgelab login: root"}]})


class UplinkView(BaseModel):
    mode: UplinkKind
    interface: str
    reason: str = Field(description="why this mode and interface (auto mode explains its choice)")
    lan: str | None = Field(description="the host's address on the uplink")
    gateway: str | None
    target: str | None = Field(description="what the self-test pings beyond the uplink")
    firewall_hints: list[str] = Field(description="commands to run when firewalld or ufw would drop lab traffic")


class Health(BaseModel):
    status: Literal["ok"]
    lab: str
    bridge: str
    address: str = Field(description="the host's address as the guests see it")
    uplink: UplinkView | None
    started_at: float
    settled: bool
    states: dict[str, int]


class FailedGuest(BaseModel):
    name: str
    reason: str | None
    console_tail: str


class WaitResult(BaseModel):
    settled: bool = Field(description="every awaited guest is ready, failed or stopped")
    ready: list[str]
    failed: list[FailedGuest]
    guests: list[GuestView]


class NetworkRequest(_Body):
    """New IPv4 settings for a guest. The address must be in the bridge's subnet."""

    ip: ipaddress.IPv4Address = Field(examples=["10.198.101.50"])
    prefix: int | None = Field(default=None, ge=8, le=30, description="default: the bridge's prefix length")
    gateway: ipaddress.IPv4Address | None = Field(default=None, description="default: the bridge address")
    dns: list[ipaddress.IPv4Address] = Field(default_factory=list, max_length=3)


class ExecRequest(_Body):
    argv: list[SafeStr] = Field(min_length=1, max_length=256, examples=[["uname", "-a"]],
                                description="the command and its arguments; each is shell-quoted, never "
                                            "interpreted by a shell (use [\"sh\", \"-c\", ...] for that)")
    timeout: float = Field(default=60.0, gt=0, le=3600)
    max_output: int = Field(default=65536, ge=1, le=1 << 20, description="bytes of output kept")

    @field_validator("argv")
    @classmethod
    def _arg_length(cls, v: list[str]) -> list[str]:
        if any(len(a) > 4096 for a in v) or sum(len(a) for a in v) > 16384:
            raise ValueError("arguments too long (4096 per argument, 16384 in all)")
        return v


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
                       "source_not_configured"]
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


class AddGuest(Guest):
    """A guest added at runtime. Same fields as in the lab file, except that
    the image must be a recipe name and qemu_args are not accepted over the API."""

    @field_validator("image")
    @classmethod
    def _recipe_only(cls, v: str) -> str:
        if "/" in v or v.startswith("."):
            raise ValueError("over the API, image must be a recipe name (a path is only allowed in the lab file)")
        return v

    @field_validator("qemu_args")
    @classmethod
    def _no_qemu_args(cls, v: list[str]) -> list[str]:
        if v:
            raise ValueError("qemu_args can only be set in the lab file")
        return v


__all__ = ["AddGuest", "ErrorBody", "ExecRequest", "ExecResult", "FailedGuest", "GUEST_NAME_PATTERN",
           "GuestView", "Health", "MeshPair", "MeshReport", "NetworkRequest", "STAGES", "WaitResult"]
