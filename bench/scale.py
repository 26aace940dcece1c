#!/usr/bin/env python3
"""N riscv64 guests on this machine's cores under TCG, for a sweep of N: do
they all reach `ready`, how long until the last one does, how long each
guest takes from its login prompt to ready (median and maximum; and from
its turn at the lab's login slots, lab/turns.py, to ready), and the
daemon's peak memory. Each N is one lab, started at once, in a fresh
network namespace. A table on stdout and a PNG (matplotlib: pip install -e '.[bench]').

Guests boot a core's worth at a time (lab/boot_slots.py). `--unbounded N..`
also runs those counts with every qemu running at once (the behaviour
before the boot slots), in the same run, and prints the ratio.

    sudo .venv/bin/python bench/scale.py --guests 1 2 4 8 16 --unbounded 4 8   # writes bench/results/scale.png
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import yaml
from bridgelab.model import image_build
from common import fresh_ns, start_serve, stop_serve, wait_settled


@dataclass
class Point:
    guests: int
    boot_slots: str  # "cores" (the default) or "unbounded"
    ready: int
    all_ready: float  # serve start -> last guest ready, s
    configure_median: float  # login prompt -> ready, per guest, s
    configure_max: float
    own_median: float  # turn -> ready: the guest's own login and configuration, once it had its slot
    own_max: float
    daemon_peak_mib: float
    failures: list[str]


def peak_rss(pid: int, stop: threading.Event, out: list[float]) -> None:
    """The daemon's peak resident memory (VmHWM), its `ip netns exec` wrapper
    being the same process (exec)."""
    while not stop.wait(1.0):
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    out.append(int(line.split()[1]) / 1024)
        except OSError:
            return


def keep_transcripts(tmp: Path, guests: list[dict], keep: Path, n: str) -> None:
    """The console transcripts of guests that did not get ready, kept for
    reading (bench/results is git-ignored)."""
    keep.mkdir(parents=True, exist_ok=True)
    for g in guests:
        if g["state"] != "ready":
            src = tmp / "s" / "guests" / g["name"] / "transcript.log"
            if src.exists():
                (keep / f"scale-{n}-{g['name']}.log").write_bytes(src.read_bytes())


UNBOUNDED = "4096"  # BRIDGELAB_BOOT_CONCURRENCY's maximum: every qemu runs at once


def run(n: int, image: str, memory: str, timeout: float, keep: Path, unbounded: bool = False) -> Point:
    if unbounded:
        os.environ["BRIDGELAB_BOOT_CONCURRENCY"] = UNBOUNDED
    else:
        os.environ.pop("BRIDGELAB_BOOT_CONCURRENCY", None)
    ns = fresh_ns("blsc")
    tmp = Path(tempfile.mkdtemp(prefix="bl-bench-scale-"))
    lab = tmp / "lab.yaml"
    lab.write_text(yaml.safe_dump({"name": "scale", "bridge": {"name": "br0", "address": "10.198.101.114/24"},
                                   "guests": [{"name": f"g{i}", "arch": "riscv64", "image": image, "memory": memory}
                                              for i in range(1, n + 1)]}))
    t0 = time.time()
    proc, api = start_serve(ns, tmp, lab, timeout=60)
    stop, rss = threading.Event(), [0.0]
    threading.Thread(target=peak_rss, args=(proc.pid, stop, rss), daemon=True).start()
    try:
        guests = wait_settled(api, proc, timeout)
        keep_transcripts(tmp, guests, keep, f"{n}-unbounded" if unbounded else str(n))
    finally:
        stop.set()
        stop_serve(proc, api, ns, tmp)
    ready = [g for g in guests if g["state"] == "ready"]
    configure = [g["timestamps"]["ready"] - g["timestamps"]["login"] for g in ready] or [float("nan")]
    own = [g["timestamps"]["ready"] - g["stages"]["turn"] for g in ready if "turn" in g["stages"]] or [float("nan")]
    return Point(guests=n, boot_slots="unbounded" if unbounded else "cores", ready=len(ready),
                 all_ready=max((g["timestamps"]["ready"] - t0 for g in ready), default=float("nan")),
                 configure_median=statistics.median(configure), configure_max=max(configure),
                 own_median=statistics.median(own), own_max=max(own),
                 daemon_peak_mib=max(rss), failures=[f"{g['name']}: {g['state']}: {g['reason']}"
                                                     for g in guests if g["state"] != "ready"])


def plot(points: list[Point], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    unbounded = [p for p in points if p.boot_slots == "unbounded"]
    points = [p for p in points if p.boot_slots == "cores"]
    xs = [p.guests for p in points]
    left.plot(xs, [p.all_ready for p in points], "o-", label="a core's worth booting at a time")
    if unbounded:
        left.plot([p.guests for p in unbounded], [p.all_ready for p in unbounded], "x--", label="all at once")
        left.legend()
    left.set(xlabel="guests", ylabel="s", title="serve -> every guest ready", xscale="log", xticks=xs)
    left.set_xticklabels([str(x) for x in xs])
    right.plot(xs, [p.configure_median for p in points], "o-", label="median")
    right.plot(xs, [p.configure_max for p in points], "s--", label="max")
    right.plot(xs, [p.own_median for p in points], "^:", label="median from its turn")
    right.set(xlabel="guests", ylabel="s", title="per guest: login prompt -> ready", xscale="log", xticks=xs)
    right.set_xticklabels([str(x) for x in xs])
    right.legend()
    fig.suptitle(f"riscv64 guests under TCG on {os.cpu_count()} cores")
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def _s(seconds: float) -> str:
    """A figure, or "-" where no guest had it (a guest its agent configured
    takes no login turn before it is ready)."""
    return "-" if math.isnan(seconds) else f"{seconds:.1f} s"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--guests", type=int, nargs="+", default=[1, 2, 4, 8, 16])
    ap.add_argument("--image", default="debian-riscv64")
    ap.add_argument("--memory", default="512M")
    ap.add_argument("--unbounded", type=int, nargs="*", default=[],
                    help="also run these of the guest counts with every qemu running at once")
    ap.add_argument("--timeout", type=float, default=3600)
    ap.add_argument("--plot", type=Path, default=Path(__file__).parent / "results" / "scale.png",
                    help="where the PNG goes (default bench/results/scale.png, which git ignores); the "
                         "transcripts of guests that did not get ready go beside it")
    a = ap.parse_args()
    image_build.build_image(a.image)
    points = []
    runs = [(n, unbounded) for n in a.guests for unbounded in (False, True) if not unbounded or n in a.unbounded]
    for n, unbounded in runs:  # each count's two runs side by side: the machine drifts over an hour
        p = run(n, a.image, a.memory, a.timeout, a.plot.parent, unbounded)
        points.append(p)
        print(f"{n} guests, boot slots {p.boot_slots}: {p.ready} ready, all ready after {p.all_ready:.1f} s, "
              f"login prompt -> ready median {p.configure_median:.1f} s, max {p.configure_max:.1f} s, "
              f"from its turn median {_s(p.own_median)}, max {_s(p.own_max)}, "
              f"daemon peak {p.daemon_peak_mib:.0f} MiB", flush=True)
        for f in p.failures:
            print(f"  {f}")
    points.sort(key=lambda p: (p.boot_slots, p.guests))
    print(f"\n{a.image}, {a.memory} each, 1 vCPU, TCG, {os.cpu_count()} host cores")
    print("| guests | boot slots | ready | serve -> all ready | per guest, login prompt -> ready: median / max "
          "| per guest, its turn -> ready: median / max | daemon peak RSS |")
    print("|---|---|---|---|---|---|---|")
    for p in points:
        print(f"| {p.guests} | {p.boot_slots} | {p.ready} | {_s(p.all_ready)} "
              f"| {p.configure_median:.1f} / {p.configure_max:.1f} s "
              f"| {_s(p.own_median)} / {_s(p.own_max)} | {p.daemon_peak_mib:.0f} MiB |")
    for u in (p for p in points if p.boot_slots == "unbounded"):
        cores = next((p for p in points if p.boot_slots == "cores" and p.guests == u.guests), None)
        if cores is not None:
            print(f"{u.guests} guests, serve -> all ready: a core's worth at a time / all at once = "
                  f"{cores.all_ready / u.all_ready:.2f}")
    a.plot.parent.mkdir(parents=True, exist_ok=True)
    plot(points, a.plot)
    print(f"\nplot: {a.plot}")


if __name__ == "__main__":
    main()
