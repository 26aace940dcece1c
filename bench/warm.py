#!/usr/bin/env python3
"""Cold against warm `bridgelab serve` for examples/two-riscv64.yaml, in one run:

  cold     `serve --cold` from process start until every guest is ready
           (booted, configured, mesh-verified; the ready snapshots taken);
  warm     `serve` on the same state directory: every guest restored from
           its ready snapshot, then clock, address and mesh checked;
  restore  one guest put back to a named snapshot while the other runs on
           (POST /guests/rv1/snapshots/NAME/restore), as a CI job resets a
           guest between test cases; timed at the client.

Also reported: each snapshot's save time and size (from the API), each
guest's restore time inside the daemon (its log). Medians over --reps, all
in one fresh network namespace per rep.

    sudo .venv/bin/python bench/warm.py --reps 3
"""

from __future__ import annotations

import argparse
import re
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import httpx

from common import fresh_ns, start_serve, stop_serve, wait_settled

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "two-riscv64.yaml"
LOADED = re.compile(r"guest (\S+): snapshot '[^']+' loaded in ([\d.]+)s")
SETTLED = re.compile(r"guest (\S+): restored guest settled in ([\d.]+)s")


def serve_until_ready(ns: str, tmp: Path, *extra: str
                      ) -> tuple[float, list[dict], subprocess.Popen[bytes], httpx.Client]:
    t0 = time.monotonic()
    proc, api = start_serve(ns, tmp, EXAMPLE, extra=extra, timeout=60)
    guests = wait_settled(api, proc, 900)
    took = time.monotonic() - t0
    bad = [g["name"] for g in guests if g["state"] != "ready"]
    if bad:
        raise SystemExit(f"not ready: {bad}: {(tmp / 'serve.log').read_text()[-3000:]}")
    return took, guests, proc, api


def one_rep(resets: int) -> dict[str, list[float]]:
    out: dict[str, list[float]] = {"cold": [], "warm": [], "restore": [], "save": [], "size_mib": [],
                                   "load_in_daemon": [], "settle_in_daemon": []}
    ns = fresh_ns("blwm")
    tmp = Path(tempfile.mkdtemp(prefix="bl-warm-"))
    proc: subprocess.Popen[bytes] | None = None
    api: httpx.Client | None = None
    try:
        cold, _, proc, api = serve_until_ready(ns, tmp, "--cold")
        out["cold"].append(cold)
        for s in api.get("/snapshots").json():
            out["save"].append(s["save_seconds"])
            out["size_mib"].append(s["size"] / 2**20)
        proc.terminate()
        proc.wait(300)
        api.close()
        warm, guests, proc, api = serve_until_ready(ns, tmp)
        if not all("restored" in g["stages"] for g in guests):
            raise SystemExit(f"the second start was not warm: {[sorted(g['stages']) for g in guests]}")
        out["warm"].append(warm)
        api.post("/guests/rv1/snapshots", json={"name": "bench"}).raise_for_status()
        for _ in range(resets):
            t0 = time.monotonic()
            r = api.post("/guests/rv1/snapshots/bench/restore")
            took = time.monotonic() - t0
            if r.status_code != 200 or r.json()[0]["state"] != "ready":
                raise SystemExit(f"restore failed: {r.status_code} {r.text[:500]}")
            out["restore"].append(took)
        log = (tmp / "serve.log").read_text()
        out["load_in_daemon"] += [float(s) for _, s in LOADED.findall(log)]
        out["settle_in_daemon"] += [float(s) for _, s in SETTLED.findall(log)]
    finally:
        if proc is not None and api is not None:
            stop_serve(proc, api, ns, tmp)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--resets", type=int, default=5, help="per-guest restores per rep")
    args = ap.parse_args()
    runs: dict[str, list[float]] = {}
    for i in range(args.reps):
        rep = one_rep(args.resets)
        for k, v in rep.items():
            runs.setdefault(k, []).extend(v)
        print(f"rep {i + 1}: cold {rep['cold'][0]:.1f}s, warm {rep['warm'][0]:.2f}s, "
              f"restore {', '.join(f'{x:.2f}' for x in rep['restore'])}s", flush=True)

    def med(k: str) -> str:
        v = runs.get(k) or []
        return f"{statistics.median(v):.2f}" if v else "-"
    cold, warm = statistics.median(runs["cold"]), statistics.median(runs["warm"])
    print(f"\nmedians over {args.reps} reps (two riscv64 guests, TCG):")
    print("| what | median | n |\n|---|---|---|")
    print(f"| cold `serve --cold` -> all ready | {cold:.1f} s | {len(runs['cold'])} |")
    print(f"| warm `serve` -> all ready | {warm:.2f} s | {len(runs['warm'])} |")
    print(f"| warm / cold | {warm / cold:.3f} | |")
    print(f"| one guest restored (client, POST .../restore) | {med('restore')} s | {len(runs['restore'])} |")
    print(f"|   of which loadvm in the daemon | {med('load_in_daemon')} s | {len(runs['load_in_daemon'])} |")
    print(f"|   of which console, clock and address (warm starts included) | {med('settle_in_daemon')} s | "
          f"{len(runs['settle_in_daemon'])} |")
    print(f"| ready snapshot: save time | {med('save')} s | {len(runs['save'])} |")
    print(f"| ready snapshot: memory and device state | {med('size_mib')} MiB | {len(runs['size_mib'])} |")


if __name__ == "__main__":
    main()
