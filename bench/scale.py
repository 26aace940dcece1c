#!/usr/bin/env python3
"""N riscv64 guests on this machine's cores under TCG: do they all reach
`ready`, how long does the last one take, and what failed (with the
console's own reason)?

    sudo .venv/bin/python bench/scale.py --guests 8
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import yaml
from bridgelab.model import image_build
from common import fresh_ns, start_serve, stop_serve, wait_settled


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--guests", type=int, default=8)
    ap.add_argument("--image", default="debian-riscv64")
    ap.add_argument("--timeout", type=float, default=1800)
    a = ap.parse_args()
    image_build.build_image(a.image)
    ns = fresh_ns("bls")
    tmp = Path(tempfile.mkdtemp(prefix="bl-bench-scale-"))
    lab = tmp / "lab.yaml"
    lab.write_text(yaml.safe_dump({"name": "scale", "bridge": {"name": "br0", "address": "10.198.101.114/24"},
                                   "guests": [{"name": f"g{i}", "arch": "riscv64", "image": a.image}
                                              for i in range(1, a.guests + 1)]}))
    t0 = time.time()
    proc, api = start_serve(ns, tmp, lab, timeout=60)
    try:
        guests = wait_settled(api, proc, a.timeout)
        ready = [g for g in guests if g["state"] == "ready"]
        print(f"{a.guests} x {a.image} on {os.cpu_count()} cores: {len(ready)} ready", end="")
        if ready:
            times = sorted(g["timestamps"]["ready"] - t0 for g in ready)
            print(f"; first ready after {times[0]:.0f} s, last after {times[-1]:.0f} s", end="")
        print()
        for g in guests:
            if g["state"] != "ready":
                print(f"  {g['name']}: {g['state']}: {g['reason']}")
    finally:
        stop_serve(proc, api, ns, tmp)


if __name__ == "__main__":
    main()
