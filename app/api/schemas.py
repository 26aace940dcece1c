"""API request and response bodies: the typed contract behind the OpenAPI document."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

# The lab's own request and report models are API bodies as they are.
from ..lab.reports import ExecResult, MeshPair, MeshReport
from ..lab.requests import AddGuest, ExecRequest, NetworkRequest
from ..lab.states import GuestState
from ..model.peering import Declaration
from ..model.spec import Arch, UplinkKind

GUEST_NAME_PATTERN = r"^[a-z0-9]([a-z0-9-]{0,30}[a-z0-9])?$"
# Snapshot names go into HMP command lines: no spaces, quotes or separators,
# and not the reserved bridgelab- prefix (the disk-only base snapshot).
SNAPSHOT_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,31}$"
RESERVED_SNAPSHOT_PREFIX = "bridgelab-"
STAGES = ("qemu_started", "boot_slot", "restored", "firmware", "kernel", "userspace", "login_prompt", "turn",
          "logged_in", "configured", "mesh_verified")


class ErrorBody(BaseModel):
    detail: str = Field(examples=["no guest named 'rv9'"])


class FieldError(BaseModel):
    loc: list[str | int] = Field(description="where: body, then the field's path")
    msg: str
    type: str


class ValidationErrorBody(BaseModel):
    """422: one entry per problem (FastAPI's own shape, also for the lab's checks)."""
    detail: list[FieldError]


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
    user: str = Field(description="the user bridgelab logs in as (the image's login; also ssh's)")

    model_config = ConfigDict(json_schema_extra={"examples": [{
        "name": "rv1", "state": "ready", "arch": "riscv64", "accel": "tcg", "ip": "10.198.101.1", "prefix": 24,
        "gateway": "10.198.101.114", "dns": [], "mac": "62:8c:29:06:78:c4", "tap": "bl1f06-rv1", "pid": 724,
        "timestamps": {"booting": 1795602727.7, "ready": 1795602790.3},
        "stages": {"qemu_started": 1795602727.9, "firmware": 1795602728.4, "login_prompt": 1795602780.8},
        "reason": None, "mesh": {"10.198.101.114": True, "10.198.101.2": True}, "changed": True,
        "console_tail": "bridgelab login: root", "user": "root"}]})


class SnapshotRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(pattern=SNAPSHOT_NAME_PATTERN, examples=["before-test"])

    @field_validator("name")
    @classmethod
    def _not_reserved(cls, v: str) -> str:
        if v.startswith(RESERVED_SNAPSHOT_PREFIX):
            raise ValueError(f"names starting with {RESERVED_SNAPSHOT_PREFIX!r} are bridgelab's own")
        return v


class SnapshotView(BaseModel):
    guest: str
    name: str
    size: int = Field(description="bytes of memory and device state (the disk changes are shared in the overlay)")
    created: float = Field(description="Unix time")
    save_seconds: float | None = Field(description="how long the save took; null if not taken by bridgelab")
    valid: bool = Field(description="whether it can be restored into the guest as it is now declared")
    invalid_because: str | None = Field(description="what changed since it was taken")
    valid_for: dict[str, str] = Field(description="what the snapshot was taken with: qemu, machine, image, mac, "
                                                  "network, login; a change to any makes it invalid")


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


class BuildView(BaseModel):
    """A first start's image build, while the lab waits for it."""
    image: str
    phase: str = Field(examples=["installing packages"])
    percent: float | None = Field(description="of the packages being installed, when apt said how many")
    started_at: float
    images_left: list[str] = Field(description="built after this one")
    failed: str | None = Field(description="why the build failed; the daemon then exits")


class Building(BaseModel):
    """/healthz while the daemon builds the images its lab needs."""
    status: Literal["building"]
    lab: str
    build: BuildView


class GuestReadiness(BaseModel):
    name: str
    state: GuestState
    reason: str | None = Field(description="why the guest failed, if it did")


class Readiness(BaseModel):
    ready: bool = Field(description="every guest of the lab is ready")
    waiting: list[str] = Field(description="guests not settled yet: on their way up, or stopping")
    failed: list[str]
    stopped: list[str]
    guests: list[GuestReadiness]
    build: BuildView | None = Field(default=None, description="the image build the lab waits for, if any")


class FailedGuest(BaseModel):
    name: str
    reason: str | None
    console_tail: str


class WaitResult(BaseModel):
    settled: bool = Field(description="every awaited guest is ready, failed or stopped")
    ready: list[str]
    failed: list[FailedGuest]
    guests: list[GuestView]
    build: BuildView | None = Field(default=None, description="the image build the lab waits for, if any")


class SessionRequest(BaseModel):
    token: str = Field(min_length=1, max_length=256, description="the API token, exchanged for a session cookie")


class LabState(BaseModel):
    """What the status page draws, sent by `GET /events` on every change."""
    health: Health
    guests: list[GuestView] = Field(description="console_tail is empty here: the page has the live console")
    terminal: bool = Field(description="xterm.js is installed, so the page can show consoles")


__all__ = ["AddGuest", "Building", "BuildView",
           "ErrorBody", "ExecRequest", "ExecResult", "FailedGuest", "GUEST_NAME_PATTERN", "LabState",
           "GuestReadiness", "GuestView", "Health", "MeshPair", "MeshReport", "NetworkRequest", "Readiness",
           "RESERVED_SNAPSHOT_PREFIX", "SNAPSHOT_NAME_PATTERN", "STAGES", "SessionRequest", "SnapshotRequest",
           "SnapshotView", "ValidationErrorBody", "WaitResult"]


class PeerView(BaseModel):
    """One peer host, as this host sees it."""

    address: str = Field(description="its underlay address")
    state: Literal["unknown", "up", "unreachable", "refused"] = Field(
        description="up: its API answered GET /peering; refused: it did not take the token")
    detail: str
    seen: float | None = Field(description="wall clock of its last answer")
    declaration: Declaration | None = Field(description="what it last declared: its lab, bridge and guests")
    clashes: list[str] = Field(description="what it declares that cannot share one L2 with this host")
