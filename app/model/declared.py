"""The lab as last declared: the lab file plus every runtime change.

Written after each change (add, remove, stop, start, new network settings),
read at start. It wins over the lab file only while the lab file is the one
it grew from (same hash); an edited lab file starts over from the file.
Addresses, MACs and taps are frozen into it, so adding a guest can never
move an existing one.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import SpecError
from .plan import LabPlan
from .spec import Lab, parse_lab_data

log = logging.getLogger(__name__)
FILE = "declared.json"


@dataclass(frozen=True)
class Declared:
    lab: Lab
    stopped: frozenset[str]


def source_hash(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def freeze(lab: Lab, plan: LabPlan) -> Lab:
    """The spec with every derived value made explicit, from the plan."""
    by_name = {g.name: g for g in plan.guests}
    guests = []
    for g in lab.guests:
        p = by_name[g.name]
        update: dict[str, Any] = {"ip": p.ip.ip, "mac": p.mac, "tap": p.tap, "dns": list(p.dns)}
        if plan.bridge_address is not None:
            # With proxy-arp the prefix and gateway follow the uplink's LAN at
            # each start (a laptop changes networks); explicit values stay.
            update |= {"prefix": p.ip.network.prefixlen, "gateway": p.gateway}
        if p.user_nic is not None and g.user_nic is not None:
            update["user_nic"] = g.user_nic.model_copy(update={"ssh_port": p.user_nic.ssh_port})
        guests.append(g.model_copy(update=update))
    return lab.model_copy(update={"guests": guests})


def to_data(lab: Lab) -> dict[str, Any]:
    return lab.model_dump(mode="json", exclude_none=True)


def save(state_dir: Path, source: str, lab: Lab, stopped: set[str]) -> None:
    path = state_dir / FILE
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"source": source, "lab": to_data(lab), "stopped": sorted(stopped)}, indent=1))
    os.replace(tmp, path)  # a crash leaves the old or the new file, never half of one


def load(state_dir: Path, source: str) -> Declared | None:
    path = state_dir / FILE
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as e:
        log.warning("ignoring unreadable %s: %s", path, e)
        return None
    if data.get("source") != source:
        log.info("the lab file changed since the last run: starting from the file, not %s", path)
        return None
    try:
        lab = parse_lab_data(data.get("lab"))
    except SpecError as e:
        log.warning("ignoring invalid %s: %s", path, e)
        return None
    names = {g.name for g in lab.guests}
    return Declared(lab=lab, stopped=frozenset(n for n in data.get("stopped", []) if n in names))


def clear(state_dir: Path) -> None:
    (state_dir / FILE).unlink(missing_ok=True)


__all__ = ["Declared", "clear", "freeze", "load", "save", "source_hash", "to_data"]
