"""Commands that need no daemon: validate, preflight, cleanup."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..errors import FieldIssue, SpecError
from ..host import cleanup, preflight
from ..lab.loader import load_plan
from ..model.spec import lab_name_problem, load_lab_text
from .output import as_json, table


def cmd_validate(args: argparse.Namespace) -> int:
    plan = load_plan(args.lab, args.state_dir)
    up = plan.uplink
    uplink = None if up is None else {"mode": str(up.mode), "interface": up.interface, "reason": up.reason,
                                      "target": str(up.target) if up.target else None}
    guests = [{"name": g.name, "arch": g.arch.value, "accel": g.accel, "ip": str(g.ip),
               "gateway": str(g.gateway) if g.gateway else None, "mac": g.mac, "tap": g.tap, "image": g.image.name,
               "ssh": f"127.0.0.1:{g.user_nic.ssh_port}" if g.user_nic else None} for g in plan.guests]
    if args.format == "json":
        print(as_json({"lab": plan.name, "bridge": plan.bridge, "address": str(plan.host_address),
                       "uplink": uplink, "guests": guests}))
        return 0
    print(f"lab {plan.name}: bridge {plan.bridge} {plan.host_address}")
    if up is not None:
        print(f"uplink: {up.mode} via {up.interface} ({up.reason}); self-test target {up.target or 'none'}")
    print(table(("NAME", "ARCH", "ACCEL", "IP", "GATEWAY", "MAC", "TAP", "IMAGE", "SSH"),
                [[g[k] or "-" for k in ("name", "arch", "accel", "ip", "gateway", "mac", "tap", "image", "ssh")]
                 for g in guests]))
    return 0


def cmd_preflight(args: argparse.Namespace) -> int:
    preflight.preflight()
    return 0


def cmd_cleanup(args: argparse.Namespace) -> int:
    """Remove what dead daemons left; exit 0 when no leftover remains."""
    preflight.preflight()
    lab = None if args.all else lab_name(args.lab)
    report = cleanup.cleanup(lab, args.state_dir)
    for r in report.labs.values():
        for line in ([r.skipped] if r.skipped else []) + r.removed:
            print(f"lab {r.lab}: {line}")
    if report.left:
        print("still on this host:\n" + "\n".join(f"  {x}" for x in report.left))
        return 1
    print("done: nothing a dead daemon left remains" if report.labs else "nothing to clean up")
    return 0


def lab_name(ref: str) -> str:
    """`--lab` of cleanup: a lab name, or a lab file to read the name from."""
    path = Path(ref)
    if "/" in ref or path.suffix in (".yaml", ".yml"):
        try:
            return load_lab_text(path.read_text()).name
        except OSError as e:
            raise SpecError([FieldIssue("", f"cannot read {path}: {e.strerror}")]) from None
    if problem := lab_name_problem(ref):
        raise SpecError([FieldIssue("--lab", problem)])
    return ref
