"""Commands that need no daemon: validate, preflight, cleanup."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..errors import FieldIssue, SpecError
from ..host import cleanup, preflight
from ..lab.loader import load_plan
from ..model.spec import lab_name_problem, load_lab_text


def cmd_validate(args: argparse.Namespace) -> int:
    plan = load_plan(args.lab, args.state_dir)
    if plan.uplink is not None:
        up = plan.uplink
        print(f"uplink: {up.mode} via {up.interface} ({up.reason}); self-test target {up.target or 'none'}")
    for g in plan.guests:
        ssh = f" ssh=127.0.0.1:{g.user_nic.ssh_port}" if g.user_nic else ""
        print(f"{g.name}: {g.arch.value} {g.accel} ip={g.ip} gateway={g.gateway} mac={g.mac} tap={g.tap} "
              f"image={g.image.name}{ssh}")
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
