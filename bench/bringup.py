#!/usr/bin/env python3
"""Lab bring-up, examples/two-riscv64.yaml, three ways in one run:

  bridgelab  `bridgelab serve` from process start until every guest is ready
             (configured and mesh-verified), read from its own API;
  manual     the seed procedure, scripted with zero think time: one `ip`
             command per step for bridge and taps, both guests started at
             once, then each guest in turn: log in, the seed's five nmcli
             commands (con add / ipv4.address / gateway / method / up), ping
             the bridge and the other guest;
  floor      one guest alone on the machine, qemu started directly, until its
             login prompt: nothing that configures a guest can beat this;
  pair       both guests at once, qemu started directly, until both show
             their login prompts: what two boots cost on this machine's
             cores before anything configures them (bridgelab / pair is its
             own overhead, floor / pair what sharing the cores costs).

Every variant runs in its own fresh network namespace, the variants
interleaved. Medians over --reps.

    sudo .venv/bin/python bench/bringup.py --reps 3
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import statistics
import subprocess
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
from bridgelab.lab.loader import load_plan
from bridgelab.guest.console import Console
from bridgelab.guest.process import GuestProcess
from bridgelab.host.ledger import Ledger
from bridgelab.model.plan import GuestPlan, LabPlan
from common import end_daemon, fresh_ns, start_serve
from pyroute2 import netns as pr_netns

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "two-riscv64.yaml"


def run_bridgelab(ns: str, tmp: Path) -> dict[str, float]:
    t0 = time.monotonic()
    wall0 = time.time()
    proc, api = start_serve(ns, tmp, EXAMPLE)
    try:
        while True:
            if proc.poll() is not None:
                raise SystemExit(f"serve exited: {(tmp / 'serve.log').read_text()[-2000:]}")
            try:
                guests = api.get("/guests").json()
                if all(g["state"] in ("ready", "failed") for g in guests):
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.25)
        ready = time.monotonic() - t0
        if any(g["state"] != "ready" for g in guests):
            raise SystemExit(f"a guest failed: {guests}")
        out = {"all_ready": ready, "daemon_cpu": _cpu_seconds(proc.pid)}
        for g in guests:
            ts, st = g["timestamps"], g["stages"]
            out[f"{g['name']}_login_prompt"] = ts["login"] - wall0
            out[f"{g['name']}_configure"] = ts["ready"] - ts["login"]
            for a, b in STEPS:
                if a in st and b in st:
                    out[f"{g['name']}_{a}-{b}"] = st[b] - st[a]
            if "mesh_verified" in st:
                out[f"{g['name']}_mesh_verified-ready"] = ts["ready"] - st["mesh_verified"]
        t1 = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        proc.wait(120)
        out["shutdown"] = time.monotonic() - t1
        return out
    finally:
        api.close()
        end_daemon(proc)


# Where a guest's time from its login prompt to ready goes (its stage stamps):
# the console login (after ready when the agent configured the guest), the
# configuration (negative when the agent finished before the prompt), the mesh.
STEPS = [("login_prompt", "logged_in"), ("login_prompt", "configured"), ("configured", "mesh_verified")]


def _cpu_seconds(pid: int) -> float:
    """User + system CPU of the daemon: the process tree under `pid` (ip netns
    exec -> python), qemu processes left out."""
    total = 0.0
    tick = os.sysconf("SC_CLK_TCK")
    for task in [pid, *_children(pid)]:
        try:
            fields = Path(f"/proc/{task}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / tick
    return total


def _children(pid: int) -> list[int]:
    try:
        kids = [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []
    daemon = [k for k in kids if not Path(f"/proc/{k}/comm").read_text().startswith("qemu-system")]
    return [k for c in daemon for k in (c, *_children(c))]


SEED_NMCLI = [
    "nmcli c a type ethernet con-name eth0 ifname eth0",
    "nmcli c m eth0 ipv4.address {ip}",
    "nmcli c m eth0 ipv4.gateway {gw}",
    "nmcli c m eth0 ipv4.method manual",
    "nmcli c up eth0",
]


def seed_network(ns: str, plan: LabPlan) -> None:
    ip = ["ip", "-n", ns]
    subprocess.run([*ip, "link", "add", plan.bridge, "type", "bridge"], check=True)
    for g in plan.guests:
        subprocess.run([*ip, "tuntap", "add", g.tap, "mode", "tap"], check=True)
    subprocess.run([*ip, "addr", "add", str(plan.bridge_address), "dev", plan.bridge], check=True)
    for g in plan.guests:
        subprocess.run([*ip, "link", "set", g.tap, "master", plan.bridge], check=True)
    subprocess.run([*ip, "link", "set", plan.bridge, "up"], check=True)
    for g in plan.guests:
        subprocess.run([*ip, "link", "set", g.tap, "up"], check=True)


def start_qemu(ns: str, g: GuestPlan, ledger: Ledger) -> tuple[GuestProcess, Console]:
    pr_netns.pushns(ns)  # qemu opens its tap in the namespace it starts in
    try:
        gp = GuestProcess(g, ledger)
        gp.prepare()
        gp.spawn()
    finally:
        pr_netns.popns()

    async def attach_and_resume() -> Console:
        await gp.wait_sockets()  # qemu listens, paused (-S) until the console is read
        console = Console.connect_unix(g.paths.console_sock, g.name)
        await gp.resume()
        await gp.close_qmp()
        return console
    return gp, asyncio.run(attach_and_resume())


def run_manual(ns: str, tmp: Path) -> dict[str, float]:
    plan = load_plan(EXAMPLE, tmp / "s")
    ledger = Ledger(tmp / "s" / "ledger.json")
    t0 = time.monotonic()
    seed_network(ns, plan)
    started = [start_qemu(ns, g, ledger) for g in plan.guests]
    try:
        for g, (_, console) in zip(plan.guests, started, strict=True):
            console.login(g.login.user, g.login.password, 600)
            for cmd in SEED_NMCLI:
                console.check(cmd.format(ip=g.ip, gw=g.gateway), 120)
        for g, (_, console) in zip(plan.guests, started, strict=True):
            for peer in [plan.bridge_address.ip, *(o.ip.ip for o in plan.guests if o is not g)]:
                console.check(f"ping -c 1 -w 5 {peer}", 30)
        return {"all_ready": time.monotonic() - t0}
    finally:
        _end(started)


def _prompt_seen(g: GuestPlan, console: Console, t0: float) -> float:
    """Seconds from t0 to the guest's first login prompt."""
    seen: list[float] = []
    try:
        console.login(g.login.user, g.login.password, 600,
                      on_login_prompt=lambda: seen.append(time.monotonic() - t0))
    except Exception:
        if not seen:
            raise
    return seen[0]


def _end(started: list[tuple[GuestProcess, Console]]) -> None:
    for gp, console in started:
        console.close()
        if gp.popen:
            gp.popen.kill()
            gp.popen.wait()


def run_pair(ns: str, tmp: Path) -> dict[str, float]:
    plan = load_plan(EXAMPLE, tmp / "s")
    ledger = Ledger(tmp / "s" / "ledger.json")
    for g in plan.guests:
        subprocess.run(["ip", "-n", ns, "tuntap", "add", g.tap, "mode", "tap"], check=True)
    t0 = time.monotonic()
    started = [start_qemu(ns, g, ledger) for g in plan.guests]
    try:
        with ThreadPoolExecutor(len(started)) as pool:
            prompts = list(pool.map(lambda g, s: _prompt_seen(g, s[1], t0), plan.guests, started))
        return {"both_prompts": max(prompts),
                **{f"{g.name}_login_prompt": p for g, p in zip(plan.guests, prompts, strict=True)}}
    finally:
        _end(started)


def run_floor(ns: str, tmp: Path) -> dict[str, float]:
    plan = load_plan(EXAMPLE, tmp / "s")
    g = plan.guests[0]
    ledger = Ledger(tmp / "s" / "ledger.json")
    subprocess.run(["ip", "-n", ns, "tuntap", "add", g.tap, "mode", "tap"], check=True)
    t0 = time.monotonic()
    started = [start_qemu(ns, g, ledger)]
    try:
        return {"login_prompt": _prompt_seen(g, started[0][1], t0)}
    finally:
        _end(started)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--only", nargs="*", choices=["bridgelab", "manual", "floor", "pair"],
                    help="run only these variants (a ratio needs both of its variants)")
    a = ap.parse_args()
    variants = {"bridgelab": run_bridgelab, "manual": run_manual, "floor": run_floor, "pair": run_pair}
    variants = {k: v for k, v in variants.items() if not a.only or k in a.only}
    results: dict[str, list[dict[str, float]]] = {k: [] for k in variants}
    for rep in range(a.reps):
        for name, fn in variants.items():  # interleaved, so drift hits all alike
            ns = fresh_ns()
            try:
                with tempfile.TemporaryDirectory(prefix="blb") as d:
                    r = fn(ns, Path(d))
            finally:
                subprocess.run(["ip", "netns", "del", ns], check=True)
            results[name].append(r)
            print(f"rep {rep + 1} {name}: " + ", ".join(f"{k}={v:.1f}s" for k, v in r.items()), flush=True)

    def med(name: str, key: str) -> float:
        return statistics.median(r[key] for r in results[name])

    print(f"\nmedians of {a.reps} runs (2 riscv64 guests, TCG, {os.cpu_count()} host cores)")
    if "bridgelab" in results:
        print(f"  bridgelab serve -> all ready        {med('bridgelab', 'all_ready'):6.1f} s")
        for key in sorted(results["bridgelab"][0]):
            if key != "all_ready":
                print(f"    {key:32} {med('bridgelab', key):6.1f} s")
    b = med("bridgelab", "all_ready") if "bridgelab" in results else None
    if b is not None and "manual" in results:
        m = med("manual", "all_ready")
        print(f"  manual seed procedure (scripted)    {m:6.1f} s   bridgelab/manual = {b / m:.2f}")
    if "floor" in results:
        f = med("floor", "login_prompt")
        print(f"  floor: one guest to login prompt    {f:6.1f} s" + (f"   bridgelab/floor  = {b / f:.2f}" if b else ""))
    if "pair" in results:
        p = med("pair", "both_prompts")
        shared = f"   floor/pair = {med('floor', 'login_prompt') / p:.2f}" if "floor" in results else ""
        print(f"  pair: both guests to login prompts  {p:6.1f} s" + (f"   bridgelab/pair   = {b / p:.2f}" if b else "")
              + shared)


if __name__ == "__main__":
    main()
