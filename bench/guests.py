#!/usr/bin/env python3
"""Guest images side by side: size, cold time to `ready` under TCG, and the
cost of the console's re-login after an idle logout.

For each image a one-guest lab is started with `bridgelab serve` in a fresh
network namespace, from process start until the guest is ready (configured
and mesh-verified), read from the API; the boot stages say where the time
went. With --idle S, the guest is then left alone for S seconds (past its
TMOUT) and the next exec is timed next to execs on a live shell. Medians
over --reps. --build times a forced build of each image first.

    sudo .venv/bin/python bench/guests.py --reps 3 --idle 35 debian-riscv64 openeuler-like-riscv64
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml
from bridgelab.model import image_build, images
from common import fresh_ns, start_serve, stop_serve, wait_settled


def size_mib(d: Path) -> float:
    """Bytes the image takes on disk (qcow2 and firmware files), in MiB."""
    return sum(f.stat().st_blocks * 512 for f in d.iterdir() if f.is_file()) / (1 << 20)


def boot_once(image: str, arch: str, accel: str, idle: float) -> dict[str, Any]:
    ns = fresh_ns("blg")
    tmp = Path(tempfile.mkdtemp(prefix="bl-bench-guests-"))
    lab = tmp / "lab.yaml"
    lab.write_text(yaml.safe_dump({"name": "bg", "bridge": {"name": "br0", "address": "10.198.101.114/24"},
                                   "guests": [{"name": "g1", "arch": arch, "image": image, "accel": accel}]}))
    t0 = time.time()
    proc, api = start_serve(ns, tmp, lab, timeout=600)
    try:
        [g] = wait_settled(api, proc, 1800)
        if g["state"] != "ready":
            raise SystemExit(f"{image}: {g['reason']}")
        out: dict[str, Any] = {"ready": g["timestamps"]["ready"] - t0}
        st = g["stages"]
        out["to login prompt"] = st["login_prompt"] - t0
        out["login to ready"] = g["timestamps"]["ready"] - st["login_prompt"]
        if idle:
            live = [api.post("/guests/g1/exec", json={"argv": ["true"]}).json() for _ in range(5)]
            time.sleep(idle)
            after = api.post("/guests/g1/exec", json={"argv": ["true"]}).json()
            out["exec live"] = statistics.median(r["duration"] for r in live)
            out["exec after idle logout"] = after["duration"]
            out["via"] = after["via"]
        return out
    finally:
        stop_serve(proc, api, ns, tmp)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("images", nargs="+")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--idle", type=float, default=0.0, help="seconds to leave the guest idle (past its TMOUT)")
    ap.add_argument("--build", action="store_true", help="time a forced build of each image first")
    ap.add_argument("--accel", default="tcg", choices=["tcg", "kvm", "auto"],
                    help="tcg by default: the figures are for emulation, also of the host's own arch")
    a = ap.parse_args()
    for name in a.images:
        if a.build:
            t = time.monotonic()
            image_build.build_image(name, force=True)
            print(f"{name}: build {time.monotonic() - t:.0f} s")
        d = image_build.build_image(name)
        img = images.load_manifest(d / images.MANIFEST)
        runs = [boot_once(name, img.arch.value, a.accel, a.idle) for _ in range(a.reps)]
        keys = [k for k in runs[0] if k != "via"]
        cells = ", ".join(f"{k} {statistics.median(r[k] for r in runs):.2f} s" for k in keys)
        print(f"{name} ({img.style.value}{'+' + img.payload.name if img.payload else ''}, {size_mib(d):.0f} MiB): "
              f"median of {a.reps}: {cells}" + (f" (exec via {runs[0]['via']})" if a.idle else ""))


if __name__ == "__main__":
    main()
