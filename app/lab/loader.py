"""The one way a lab becomes a plan: a lab file (or the lab as last declared)
at start-up and `validate`, and a guest added at runtime, all go through
`load_lab` / `plan_with_guest`. Everything here is checked before the host
is touched."""

from __future__ import annotations

import dataclasses
import logging
import os
import platform
from pathlib import Path
from typing import Any

from ..errors import FieldIssue, HostNetError, ImageError, SpecError
from ..host import uplink, vxlan
from ..model import declared
from ..model.images import Image, resolve_image
from ..model.plan import GuestPlan, HostFacts, LabPlan, make_plan
from ..model.spec import Lab, UplinkMode, load_lab_text, parse_lab_data
from ..settings import lab_state_dir

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class LabSource:
    """Where the lab came from: needed to re-plan when guests are added."""

    spec: Lab
    images: dict[str, Image]
    host: HostFacts
    base_dir: Path  # relative image paths in the lab file resolve from here
    source_hash: str  # of the lab file text; the declared state is tied to it
    stopped: frozenset[str] = frozenset()


def host_facts(lab: Lab | None = None) -> HostFacts:
    facts = underlay = None
    if lab is not None and lab.uplink.mode is not UplinkMode.none:
        try:
            facts = uplink.detect(lab.uplink.interface)
        except HostNetError as e:
            raise SpecError([FieldIssue("uplink.interface" if lab.uplink.interface else "uplink", str(e))]) from None
    if lab is not None and lab.peers is not None:
        try:
            underlay = vxlan.detect(lab.peers)
        except HostNetError as e:
            raise SpecError([FieldIssue("peers.interface" if lab.peers.interface else "peers", str(e))]) from None
    return HostFacts(arch=platform.machine(), kvm=os.access("/dev/kvm", os.R_OK | os.W_OK), uplink=facts,
                     underlay=underlay)


def resolve_images(lab: Lab, base_dir: Path, known: dict[str, Image] | None = None) -> dict[str, Image]:
    """Every guest's image, resolved once per name; all problems reported together."""
    resolved = dict(known or {})
    issues: list[FieldIssue] = []
    for i, g in enumerate(lab.guests):
        if g.image in resolved:
            continue
        try:
            resolved[g.image] = resolve_image(g.image, base_dir)
        except ImageError as e:
            issues.append(FieldIssue(f"guests[{i}].image", str(e)))
    if issues:
        raise SpecError(issues)
    return resolved


def load_lab(lab_file: Path, state_dir: Path | None, resume: bool = False) -> tuple[LabPlan, LabSource]:
    """Everything that can be checked before touching the host: spec, images, plan.
    With `resume`, the lab as last declared (runtime changes) replaces the file's,
    as long as the file is the one it grew from."""
    try:
        text = lab_file.read_text()
    except OSError as e:
        raise SpecError([FieldIssue("", f"cannot read {lab_file}: {e.strerror}")]) from None
    lab = load_lab_text(text)
    stopped: frozenset[str] = frozenset()
    state = state_dir or lab_state_dir(lab.name)
    source = declared.source_hash(text)
    if resume and (found := declared.load(state, source)) is not None:
        log.info("resuming lab %s as last declared (%d guests, %d stopped)", lab.name, len(found.lab.guests),
                 len(found.stopped))
        lab, stopped = found.lab, found.stopped
    base_dir = lab_file.resolve().parent
    resolved = resolve_images(lab, base_dir)
    facts = host_facts(lab)
    plan = make_plan(lab, resolved, facts, state)
    return plan, LabSource(spec=lab, images=resolved, host=facts, base_dir=base_dir, source_hash=source,
                           stopped=stopped)


def load_plan(lab_file: Path, state_dir: Path | None) -> LabPlan:
    return load_lab(lab_file, state_dir)[0]


def plan_with_guest(source: LabSource, spec: Lab, plan: LabPlan,
                    guest: dict[str, Any]) -> tuple[Lab, dict[str, Image], GuestPlan]:
    """The declared lab plus one guest (a request body's fields), planned as
    a whole so that names, addresses and MACs stay unique. Problems are
    reported against the request's own fields."""
    data = declared.to_data(spec)
    data["guests"].append(guest)
    index = len(data["guests"]) - 1
    try:
        lab = parse_lab_data(data)
        images = resolve_images(lab, source.base_dir, source.images)
        new_plan = make_plan(lab, images, source.host, plan.state_dir)
    except SpecError as e:
        raise SpecError([_rebase(i, index) for i in e.issues]) from None
    new = next(p for p in new_plan.guests if p.name == guest["name"])
    return lab, images, new


def _rebase(issue: FieldIssue, index: int) -> FieldIssue:
    """Issues about the added guest, reported against the request body's fields."""
    prefix = f"guests[{index}]"
    if issue.path == prefix or issue.path.startswith(prefix + "."):
        return FieldIssue(issue.path[len(prefix):].lstrip("."), issue.message)
    return issue


__all__ = ["LabSource", "host_facts", "load_lab", "load_plan", "plan_with_guest", "resolve_images"]
