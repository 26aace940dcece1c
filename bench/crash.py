#!/usr/bin/env python3
"""Crash safety, as a table: the daemon is SIGKILLed at each stage of
bring-up and in the middle of each runtime change (tests/crashdrill.py), and
for each: did the next `serve` converge (and a SIGTERM after it leave
nothing), how long it took to ready, and what the kill had left for it to
sweep. The floor is a start from nothing, on the same lab in the same run.

    sudo .venv/bin/python bench/crash.py [--reps 1]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # the drill lives with the tests that assert it

from bridgelab.model import image_build  # noqa: E402

from tests.crashdrill import SCENARIOS, Drill, Outcome, run  # noqa: E402


def cold_start(d: Drill) -> float:
    """Floor: a start with nothing to sweep, to every guest ready."""
    t0 = time.monotonic()
    d.start()
    d.wait_for("all guests ready", lambda g: all(x["state"] == "ready" for x in g.values()), 900, every=0.2)
    elapsed = time.monotonic() - t0
    problems = d.clean_after_sigterm()
    if problems:
        raise SystemExit("\n".join(problems))
    return elapsed


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=1, help="runs of the whole table (medians are reported)")
    args = ap.parse_args()
    image_build.build_image("debian-riscv64")
    outcomes: dict[str, list[Outcome]] = {s: [] for s in SCENARIOS}
    floors = []
    with tempfile.TemporaryDirectory(prefix="bl-crash-") as tmp:
        for rep in range(args.reps):
            d = Drill(Path(tmp) / f"rep{rep}")
            try:
                floors.append(cold_start(d))
                for scenario in SCENARIOS:
                    outcomes[scenario].append(o := run(d, scenario))
                    print(f"{scenario}: {'converged' if o.converged else 'NOT converged'} in {o.ready_after:.1f} s "
                          f"({o.killed_at}; left: {o.left.summary()})", file=sys.stderr, flush=True)
            finally:
                d.close()
    floor = statistics.median(floors)
    print(f"\nfloor: a start with nothing to sweep, to all ready: {floor:.1f} s (median of {len(floors)})\n")
    print("| killed at | guests at the kill | converged | restart → ready (median) | ratio to floor | "
          "what the kill left for the restart to sweep |")
    print("|---|---|---|---|---|---|")
    for scenario, runs in outcomes.items():
        t = statistics.median(o.ready_after for o in runs)
        ok = sum(o.converged for o in runs)
        print(f"| {scenario} | {runs[-1].killed_at} | {ok}/{len(runs)} | {t:.1f} s | {t / floor:.2f} | "
              f"{runs[-1].left.summary()} |")
        for o in runs:
            for p in o.problems:
                print(f"|   | problem: {p} | | | | |")
    print("\n(converged: the lab as declared, all ready, nothing twice, the killed run's qemu gone, and a "
          "SIGTERM after it left nothing)")
    return 0 if all(o.converged for runs in outcomes.values() for o in runs) else 1


if __name__ == "__main__":
    sys.exit(main())
