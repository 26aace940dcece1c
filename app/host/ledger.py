"""The ledger: every host object bridgelab creates, recorded right after
creation, as typed entries (one JSON object per line on disk).

Teardown removes exactly the ledger's objects; a killed run is swept from the
ledger at the next start. Each entry carries the boot and the network
namespace it was made in, so an entry from another boot or namespace is
never acted on here.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Annotated, Literal, TypeVar, Union

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from ..errors import HostNetError


def boot_id() -> str:
    return Path("/proc/sys/kernel/random/boot_id").read_text().strip()


def netns_id() -> int:
    return os.stat("/proc/thread-self/ns/net").st_ino


class _Entry(BaseModel):
    # Frozen: entries are dropped by identity, and nothing edits a record.
    # Unknown fields are kept out, not refused: a newer bridgelab's ledger
    # still reads, and its objects are still swept.
    model_config = ConfigDict(frozen=True, extra="ignore")

    boot_id: str = ""
    netns: int = 0
    time: float = 0.0


class LinkEntry(_Entry):
    kind: Literal["link"] = "link"
    ifname: str
    ifindex: int
    link_kind: str  # the kernel's kind ("bridge", "tun"): removal re-checks it


class ProcessEntry(_Entry):
    kind: Literal["process"] = "process"
    pid: int
    start_time: int  # with the PID, identifies the process across PID reuse
    what: str = "process"


class FirewallEntry(_Entry):
    # "iptables": what bridgelab 0.1 wrote; its rules are swept the same way.
    kind: Literal["firewall", "iptables"] = "firewall"
    cmd: str | None = None
    lab: str | None = None
    new_tables: list[str] = []  # iptables-nft tables this lab brought in
    new_chains: list[str] = []  # "TABLE CHAIN": iptables-nft base chains it brought into tables that were there


class SysctlEntry(_Entry):
    kind: Literal["sysctl"] = "sysctl"
    key: str  # "net/ipv4/ip_forward"
    old: str
    new: str


class RouteEntry(_Entry):
    kind: Literal["route"] = "route"
    dst: str
    oif: int


Entry = Annotated[Union[LinkEntry, ProcessEntry, FirewallEntry, SysctlEntry, RouteEntry], Field(discriminator="kind")]
_ENTRY: TypeAdapter[Entry] = TypeAdapter(Entry)
E = TypeVar("E", bound=_Entry)


class Ledger:
    """Adding appends a line (cheap enough to do right after every creation);
    dropping rewrites the file atomically. No fsync: the ledger lives in /run
    by default and describes kernel objects that a host crash removes anyway."""

    def __init__(self, path: Path):
        self.path = path
        self.entries: list[Entry] = []
        self._boot = boot_id()
        if path.exists():
            self.entries = [self._parse(n, line) for n, line in enumerate(path.read_text().splitlines(), 1)
                            if line.strip()]

    def _parse(self, number: int, line: str) -> Entry:
        try:
            return _ENTRY.validate_json(line)
        except ValidationError as e:
            first = e.errors()[0]
            raise HostNetError(f"ledger {self.path} is corrupt (line {number}: {first['msg']}); "
                               f"inspect and remove it by hand") from None

    def _rewrite(self) -> None:
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text("".join(e.model_dump_json() + "\n" for e in self.entries))
        os.replace(tmp, self.path)

    def add(self, entry: E) -> E:
        """Record `entry`, stamped with this boot, namespace and time; returns
        the stamped entry. The line is on disk (in the page cache) before this
        returns: one O_APPEND write, the cheapest way to keep that promise
        for each of a lab's taps."""
        stamped = entry.model_copy(update={"boot_id": self._boot, "netns": netns_id(), "time": time.time()})
        self.entries.append(stamped)  # type: ignore[arg-type]
        line = (stamped.model_dump_json() + "\n").encode()
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except FileNotFoundError:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            os.write(fd, line)
        finally:
            os.close(fd)
        return stamped

    def drop(self, entry: _Entry) -> None:
        self.entries = [e for e in self.entries if e is not entry]
        self._rewrite()

    def of(self, kind: type[E]) -> list[E]:
        """The entries of one type, oldest first."""
        return [e for e in self.entries if isinstance(e, kind)]

    def find_link(self, ifname: str) -> LinkEntry | None:
        return next((e for e in self.of(LinkEntry) if e.ifname == ifname), None)

    def is_current(self, e: _Entry) -> bool:
        return e.boot_id == self._boot and e.netns == netns_id()

    def other_netns(self) -> set[int]:
        """Network namespaces (by inode) of this boot's entries recorded
        elsewhere: acting from here would drop them unacted on."""
        here = netns_id()
        return {e.netns for e in self.entries if e.boot_id == self._boot and e.netns != here}

    def kinds(self) -> dict[str, int]:
        """How many entries of each kind: for reports."""
        counts: dict[str, int] = {}
        for e in self.entries:
            counts[e.kind] = counts.get(e.kind, 0) + 1
        return counts


__all__ = ["Entry", "FirewallEntry", "Ledger", "LinkEntry", "ProcessEntry", "RouteEntry", "SysctlEntry", "boot_id",
           "netns_id"]
