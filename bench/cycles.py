#!/usr/bin/env python3
"""Stop/start cycles of the appliance: `docker compose up` with the default
lab (./lab.yaml) until every guest is ready, then `docker compose down`, N
times. After each `down` it checks every guest's overlay with `qemu-img
check` and compares the host with its state before the first `up`, through
the tests' host-state guard (tests/hoststate.py). The only difference
allowed is the project's own state volume, which `down` keeps by design
(`down -v` at the end removes it, and the last comparison allows nothing).

Needs a running dockerd and the bridgelab:latest image (tests/run and
tests/test_container.py make both). The guest image comes from the host's
cache, hard-linked into a temporary images directory.

    sudo .venv/bin/python bench/cycles.py --cycles 20
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
from container import DOCKER, ROOT, sh, wait_ready, warm_images_dir

sys.path.insert(0, str(ROOT))  # the guard lives with the tests
from tests import hoststate  # noqa: E402

PROJECT = "blcycles"
PORT = 18742
VOLUME = f"{PROJECT}_bridgelab-state"


def overlay_failures(images_dir: Path, guests: list[str]) -> list[str]:
    bad = []
    for g in guests:
        check = subprocess.run([DOCKER, "run", "--rm", "--network", "none", "-v", f"{VOLUME}:/s", "-v",
                                f"{images_dir}:/var/lib/bridgelab/images:ro", "--entrypoint", "qemu-img",
                                "bridgelab:latest", "check", f"/s/default/guests/{g}/overlay.qcow2"],
                               capture_output=True, text=True)
        if check.returncode != 0:
            bad.append(f"{g}: qemu-img check exited {check.returncode}: {check.stdout.strip()[-200:]}")
    return bad


def without_state_volume(state: dict[str, object]) -> dict[str, object]:
    docker = dict(state["docker"])  # type: ignore[call-overload]
    docker["volumes"] = [v for v in docker.get("volumes", []) if v != VOLUME]
    return {**state, "docker": docker}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cycles", type=int, default=20)
    args = ap.parse_args()
    compose = ["docker-compose", "-f", str(ROOT / "compose.yaml")]
    with tempfile.TemporaryDirectory(prefix="bl-cycles-") as t:
        # The default lab file and lab directory; only the images, the port and the project are the bench's.
        env = {k: v for k, v in os.environ.items() if not k.startswith(("BRIDGELAB_", "XTABLES_"))}
        env |= {"BRIDGELAB_IMAGES_DIR": str(warm_images_dir(Path(t))), "BRIDGELAB_PORT": str(PORT),
                "COMPOSE_PROJECT_NAME": PROJECT}
        api = httpx.Client(base_url=f"http://127.0.0.1:{PORT}", timeout=10)
        before = hoststate.capture()
        cycles, ups, downs, failed_overlays, changed = [], [], [], 0, 0
        try:
            for i in range(args.cycles):
                t0 = time.monotonic()
                sh(*compose, "up", "-d", "--no-build", env=env, cwd=ROOT)
                guests = [g["name"] for g in wait_ready(api)]
                t1 = time.monotonic()
                sh(*compose, "down", env=env, cwd=ROOT)
                t2 = time.monotonic()
                bad = overlay_failures(Path(env["BRIDGELAB_IMAGES_DIR"]), guests)
                diff = hoststate.differences(without_state_volume(before), without_state_volume(hoststate.capture()))
                ups.append(t1 - t0)
                downs.append(t2 - t1)
                cycles.append(t2 - t0)
                failed_overlays += len(bad)
                changed += bool(diff)
                print(f"cycle {i + 1}: up→ready {t1 - t0:.1f} s, down {t2 - t1:.1f} s, overlays "
                      f"{'clean' if not bad else bad}, host {'unchanged' if not diff else diff}", flush=True)
        finally:
            subprocess.run([*compose, "down", "-v"], env=env, cwd=ROOT, capture_output=True)
        final = hoststate.differences(before, hoststate.capture())
    n = len(cycles)
    print(f"\n{n} cycles of the default lab (2 riscv64 guests, TCG):")
    print(f"  cycle (up→ready + down), median   {statistics.median(cycles):6.1f} s")
    print(f"  up → ready, median                {statistics.median(ups):6.1f} s")
    print(f"  down, median                      {statistics.median(downs):6.1f} s")
    print(f"  overlays failing qemu-img check   {failed_overlays} of {2 * n}")
    print(f"  downs after which the host differed (besides the state volume): {changed} of {n}")
    print(f"  after `down -v`, the host differed in: {final or 'nothing'}")
    return 0 if not (failed_overlays or changed or final) else 1


if __name__ == "__main__":
    sys.exit(main())
