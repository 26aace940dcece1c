"""`bridgelab cleanup`: remove what dead daemons left on this host.

It works from two kinds of evidence, with no daemon running:

- a lab's ledger in its state directory: processes, rules, routes, sysctls
  and links, each removed only while it is still the object recorded
  (undo.undo_recorded, the same code a starting daemon sweeps with);
- bridgelab's own marks, for a lab whose ledger is gone (a deleted state
  volume): iptables rules and chains tagged `bridgelab lab=NAME` in both
  backends, and bridges and taps whose alias is `bridgelab lab=NAME`.
  Without a ledger nothing proves a process is ours, so none is killed, and
  a tap a process still holds open is left and reported.

A lab whose daemon is alive (lablock) is never touched, whichever container
or state directory that daemon runs from.
"""

from __future__ import annotations

import errno
import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from ..errors import HostNetError
from ..settings import lab_state_dir, state_root
from . import firewall, lablock, undo
from .ledger import Ledger

log = logging.getLogger(__name__)
LEDGER = "ledger.json"
_MARK = re.compile(r"^bridgelab lab=([a-z0-9][a-z0-9-]{0,31})$")
_TAG = re.compile(r'--comment "?bridgelab lab=([a-z0-9][a-z0-9-]{0,31})"?(?:\s|$)')


_WHAT = {"tun": "tap", "bridge": "bridge", "vxlan": "VXLAN port"}


@dataclass(frozen=True)
class MarkedLink:
    index: int
    name: str
    kind: str  # "bridge" | "tun" | "vxlan"
    lab: str
    held: bool  # a tap has carrier while a process (qemu) has it open, whether or not it is up


@dataclass
class LabResult:
    lab: str
    removed: list[str] = field(default_factory=list)
    skipped: str | None = None  # why the lab was left alone
    running: bool = False  # skipped because its daemon lives: nothing of it is a leftover


@dataclass
class Report:
    labs: dict[str, LabResult] = field(default_factory=dict)
    left: list[str] = field(default_factory=list)  # what is still there afterwards

    def lab(self, name: str) -> LabResult:
        return self.labs.setdefault(name, LabResult(name))

    @property
    def clean(self) -> bool:
        return not self.left


# ---------------------------------------------------------------- evidence (pure where possible)


def tagged_labs(save_output: str) -> set[str]:
    """Pure: the lab names in bridgelab's rule tags of one iptables-save."""
    return {m.group(1) for line in save_output.splitlines() if line.startswith("-A ") for m in _TAG.finditer(line)}


def marked_links() -> list[MarkedLink]:
    """Bridges and taps whose alias is bridgelab's mark, in this netns."""
    found = []
    with IPRoute() as ipr:
        for msg in ipr.get_links():
            mark = _MARK.match(msg.get_attr("IFLA_IFALIAS") or "")
            info = msg.get_attr("IFLA_LINKINFO")
            kind = info.get_attr("IFLA_INFO_KIND") if info else None
            if mark and kind in ("bridge", "tun", "vxlan"):
                found.append(MarkedLink(index=msg["index"], name=msg.get_attr("IFLA_IFNAME"), kind=kind,
                                        lab=mark.group(1), held=kind == "tun" and msg.get_attr("IFLA_CARRIER") == 1))
    return found


def netns_name(inode: int, run_netns: Path = Path("/run/netns")) -> str | None:
    """The `ip netns` name of a namespace, if it has one."""
    try:
        return next((p.name for p in run_netns.iterdir() if p.stat().st_ino == inode), None)
    except OSError:
        return None


def _state_dirs(lab: str | None, state_dir: Path | None) -> dict[str, Path]:
    if lab is not None:
        return {lab: state_dir or lab_state_dir(lab)}
    root = state_root()
    try:
        return {d.name: d for d in sorted(root.iterdir()) if (d / LEDGER).is_file()}
    except OSError:
        return {}


# ---------------------------------------------------------------- effects


def _from_ledger(name: str, state_dir: Path, result: LabResult) -> None:
    if not (state_dir / LEDGER).is_file():
        return
    try:
        fd = lablock.lock_state_dir(state_dir)
    except lablock.StateDirBusy:
        result.skipped = f"a daemon holds {state_dir}: left alone (stop it with `bridgelab down`)"
        result.running = True
        return
    try:
        ledger = Ledger(state_dir / LEDGER)  # a corrupt one raises, naming the file
        elsewhere = ledger.other_netns()
        if elsewhere:
            names = [netns_name(i) or f"net:[{i}]" for i in sorted(elsewhere)]
            result.skipped = (f"its ledger records objects in network namespace {', '.join(names)}, not this one: "
                              f"run cleanup there (ip netns exec NAME bridgelab cleanup --lab {name})")
            return
        result.removed += undo.undo_recorded(ledger).lines()
        if not ledger.entries:
            ledger.path.unlink(missing_ok=True)
    finally:
        os.close(fd)


def _remove_marked(links: list[MarkedLink], result: LabResult) -> None:
    """Taps first, then bridges; each re-checked at its index just before.
    A held tap stays (and so does its bridge, which the kernel keeps as long
    as it has a port): it is reported as left."""
    with IPRoute() as ipr:
        for link in sorted(links, key=lambda x: x.kind == "bridge"):
            if link.held:
                continue
            try:
                msg = ipr.get_links(link.index)[0]
            except NetlinkError:
                continue  # gone meanwhile
            if msg.get_attr("IFLA_IFNAME") != link.name or msg.get_attr("IFLA_IFALIAS") != firewall.lab_tag(link.lab):
                continue
            try:
                ipr.link("del", index=link.index)
            except NetlinkError as e:
                if e.code != errno.ENODEV:
                    raise HostNetError(f"cannot remove {link.name}: {os.strerror(e.code)}") from None
            result.removed.append(f"removed {_WHAT[link.kind]} {link.name} "
                                  "(not in a ledger: found by its alias)")


def _from_marks(names: set[str], only: str | None, report: Report) -> None:
    """Labs known by their rules' tags (`names`) or their links' aliases."""
    links = marked_links()
    labs = {link.lab for link in links} | names
    for name in sorted(labs if only is None else labs & {only}):
        result = report.lab(name)
        if result.running:
            continue
        result.removed += [f"removed the lab's rules from {cmd} (found by tag)" for cmd in firewall.remove_lab(name)]
        _remove_marked([link for link in links if link.lab == name], result)


def _still_there(only: str | None, live: set[str], dirs: dict[str, Path]) -> list[str]:
    left = [f"{d / LEDGER} of lab {name}" for name, d in dirs.items() if name not in live and (d / LEDGER).is_file()]
    for link in marked_links():
        if link.lab in live or (only is not None and link.lab != only):
            continue
        what = _WHAT[link.kind]
        left.append(f"{what} {link.name} of lab {link.lab}" + (
            ": a process still holds it open (not recorded, so not killed; find it with: "
            f"grep -l {link.name} /proc/*/cmdline)" if link.held else ""))
    for backend, text in firewall.read_saves().items():
        left += [f"iptables-{backend}: rules of lab {name}" for name in sorted(tagged_labs(text))
                 if name not in live and (only is None or name == only)]
    return left


def cleanup(lab: str | None = None, state_dir: Path | None = None) -> Report:
    """Everything dead daemons left (lab None), or one lab's leftovers."""
    report = Report()
    dirs = _state_dirs(lab, state_dir)
    tagged = set().union(*(tagged_labs(t) for t in firewall.read_saves().values()))
    candidates = set(dirs) | tagged | {link.lab for link in marked_links()}
    for name in sorted(candidates if lab is None else {lab}):
        if lablock.running(name):
            report.lab(name).skipped = "its daemon is running: left alone (stop it with `bridgelab down`)"
            report.lab(name).running = True
    for name, d in dirs.items():
        if not report.lab(name).skipped:
            _from_ledger(name, d, report.lab(name))
    _from_marks(tagged, lab, report)
    live = {r.lab for r in report.labs.values() if r.running}
    report.left = _still_there(lab, live, dirs)
    report.labs = {k: v for k, v in report.labs.items() if v.removed or v.skipped}
    return report


__all__ = ["MarkedLink", "Report", "cleanup", "marked_links", "tagged_labs"]
