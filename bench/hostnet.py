#!/usr/bin/env python3
"""Host network setup for N taps: bridgelab (pyroute2, in-process) beside the
manual procedure as `ip` commands, one process per step (the seed's way), and
`ip -batch` (one process, the practical floor for iproute2). Each variant runs
in its own fresh network namespace; medians over --reps runs.

    sudo .venv/bin/python bench/hostnet.py --taps 64 --reps 15            # quiet
    sudo .venv/bin/python bench/hostnet.py --taps 64 --reps 15 --load 2   # under load
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bridgelab.host import links
from bridgelab.host.ledger import Ledger
from pyroute2 import netns as pr_netns

ADDR = ipaddress.IPv4Interface("10.198.101.114/24")


def fresh_ns() -> str:
    name = f"blb-{secrets.token_hex(3)}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    return name


def steps(taps: int) -> list[list[str]]:
    cmds = [["link", "add", "br0", "type", "bridge"], ["addr", "add", str(ADDR), "dev", "br0"],
            ["link", "set", "br0", "up"]]
    for i in range(taps):
        cmds += [["tuntap", "add", f"tap{i}", "mode", "tap"], ["link", "set", f"tap{i}", "master", "br0"],
                 ["link", "set", f"tap{i}", "up"]]
    return cmds


def run_bridgelab(ns: str, taps: int, ledger_dir: Path) -> float:
    pr_netns.pushns(ns)
    try:
        ledger = Ledger(ledger_dir / f"{ns}.json")
        t = time.perf_counter()
        net = links.HostNet(ledger, "bench")
        links.apply(net, "br0", ADDR, "02:00:00:00:00:01", [f"tap{i}" for i in range(taps)])
        elapsed = time.perf_counter() - t
        net.close()
    finally:
        pr_netns.popns()
    return elapsed


def run_per_command(ns: str, taps: int) -> float:
    t = time.perf_counter()
    for c in steps(taps):
        subprocess.run(["ip", "-n", ns, *c], check=True)
    return time.perf_counter() - t


def run_batch(ns: str, taps: int, tmp: Path) -> float:
    batch = tmp / f"{ns}.batch"
    batch.write_text("".join(" ".join(c) + "\n" for c in steps(taps)))
    t = time.perf_counter()
    subprocess.run(["ip", "-n", ns, "-batch", str(batch)], check=True)
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--taps", type=int, default=64)
    ap.add_argument("--reps", type=int, default=15)
    ap.add_argument("--load", type=int, default=0, help="run this many busy processes meanwhile (under load)")
    a = ap.parse_args()
    results: dict[str, list[float]] = {"bridgelab": [], "ip-batch": [], "ip-per-command": []}
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        burners = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(a.load)]
        try:
            for rep in range(a.reps):
                # Interleaved, so drift hits all variants alike, and rotated, so
                # none always follows the deletion of the same netns.
                order = list(results)[rep % 3:] + list(results)[:rep % 3]
                run_rep(order, results, a.taps, tmp)
        finally:
            for b in burners:
                b.terminate()
                b.wait()
    med = {k: statistics.median(v) for k, v in results.items()}
    load = f", {a.load} busy processes on {os.cpu_count()} cores" if a.load else ", quiet"
    print(f"bridge + {a.taps} taps, median of {a.reps} runs each, fresh netns per run{load}")
    for k, v in med.items():
        print(f"  {k:15} {v * 1000:8.1f} ms   ratio to bridgelab {v / med['bridgelab']:6.2f}x")
    print(f"  bridgelab / ip-batch (floor) = {med['bridgelab'] / med['ip-batch']:.2f}")


def run_rep(order: list[str], results: dict[str, list[float]], taps: int, tmp: Path) -> None:
    for variant in order:
        ns = fresh_ns()
        try:
            if variant == "bridgelab":
                results[variant].append(run_bridgelab(ns, taps, tmp))
            elif variant == "ip-batch":
                results[variant].append(run_batch(ns, taps, tmp))
            else:
                results[variant].append(run_per_command(ns, taps))
        finally:
            subprocess.run(["ip", "netns", "del", ns], check=True)

if __name__ == "__main__":
    main()
