#!/usr/bin/env python3
"""The API under load and the cost of its operations, on a real two-guest lab.

  status     GET /guests from 100 concurrent clients for --seconds: p50, p99,
             requests/s, errors; beside GET /healthz from one client (the
             HTTP floor: no guest data);
  exec       POST /guests/NAME/exec ["true"] on an idle guest, --reps times:
             median round trip through qemu-guest-agent (rv1) and through the
             serial console (rv2, after its agent is stopped), beside the HTTP
             floor;
  add        POST /guests (a third guest) until it is ready (API long-poll),
             beside the lab's own bring-up of its first guests.

    sudo .venv/bin/python bench/api.py --seconds 30 --reps 20
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import httpx
from common import fresh_ns, start_serve

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "two-riscv64.yaml"


def pct(values: list[float], p: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(round(p / 100 * (len(s) - 1))))]


async def status_load(sock: Path, clients: int, seconds: float) -> dict[str, float]:
    latencies: list[float] = []
    errors = 0

    async def one(stop: float) -> None:
        nonlocal errors
        async with httpx.AsyncClient(transport=httpx.AsyncHTTPTransport(uds=str(sock)), base_url="http://b",
                                     timeout=30) as c:
            while time.monotonic() < stop:
                t0 = time.perf_counter()
                try:
                    r = await c.get("/guests")
                    r.raise_for_status()
                    latencies.append(time.perf_counter() - t0)
                except httpx.HTTPError:
                    errors += 1
    stop = time.monotonic() + seconds
    await asyncio.gather(*(one(stop) for _ in range(clients)))
    return {"p50_ms": pct(latencies, 50) * 1e3, "p99_ms": pct(latencies, 99) * 1e3,
            "rps": len(latencies) / seconds, "errors": float(errors)}


def timed(c: httpx.Client, method: str, path: str, reps: int, **kw: object) -> list[float]:
    out = []
    for _ in range(reps):
        t0 = time.perf_counter()
        r = c.request(method, path, **kw)  # type: ignore[arg-type]
        r.raise_for_status()
        out.append(time.perf_counter() - t0)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=30)
    ap.add_argument("--clients", type=int, default=100)
    ap.add_argument("--reps", type=int, default=20)
    args = ap.parse_args()
    ns = fresh_ns("blba")
    with tempfile.TemporaryDirectory(prefix="blbench-") as t:
        tmp = Path(t)
        sock = tmp / "api.sock"
        t_start = time.monotonic()
        proc, c = start_serve(ns, tmp, EXAMPLE, timeout=1200)
        try:
            while True:
                try:
                    r = c.get("/wait", params={"timeout": 600})
                    break
                except httpx.TransportError:
                    if proc.poll() is not None:
                        raise SystemExit((tmp / "serve.log").read_text()[-3000:]) from None
                    time.sleep(0.2)
            assert r.status_code == 200 and r.json()["ready"] == ["rv1", "rv2"], r.text
            lab_ready = time.monotonic() - t_start

            load = asyncio.run(status_load(sock, args.clients, args.seconds))
            health = timed(c, "GET", "/healthz", args.reps)
            execs = timed(c, "POST", "/guests/rv1/exec", args.reps, json={"argv": ["true"]})
            assert c.post("/guests/rv1/exec", json={"argv": ["true"]}).json()["via"] == "agent"
            # the agent stops itself, so that exec is lost (502); later ones use the console
            c.post("/guests/rv2/exec", json={"argv": ["systemctl", "stop", "qemu-guest-agent"]})
            assert c.post("/guests/rv2/exec", json={"argv": ["true"]}).json()["via"] == "console"
            console_execs = timed(c, "POST", "/guests/rv2/exec", args.reps, json={"argv": ["true"]})

            t0 = time.monotonic()
            c.post("/guests", json={"name": "rv3", "image": "debian-riscv64"}).raise_for_status()
            r = c.get("/guests/rv3/wait", params={"timeout": 900})
            assert r.status_code == 200 and r.json()["ready"] == ["rv3"], r.text
            add_ready = time.monotonic() - t0
        finally:
            c.close()
            proc.send_signal(signal.SIGTERM)
            proc.wait(120)
            subprocess.run(["ip", "netns", "del", ns], check=False)
    print(f"GET /guests, {args.clients} clients, {args.seconds:.0f} s: p50 {load['p50_ms']:.1f} ms, "
          f"p99 {load['p99_ms']:.1f} ms, {load['rps']:.0f} req/s, {load['errors']:.0f} errors")
    print(f"GET /healthz, one client (HTTP floor): median {statistics.median(health) * 1e3:.2f} ms")
    floor = statistics.median(health)
    for via, values in (("guest agent", execs), ("console", console_execs)):
        print(f"exec ['true'] on an idle guest via the {via}: median {statistics.median(values) * 1e3:.0f} ms "
              f"(n={args.reps}, {statistics.median(values) / floor:.0f}x the HTTP floor)")
    print(f"add a guest until ready: {add_ready:.1f} s (lab start to both guests ready: {lab_ready:.1f} s, "
          f"ratio {add_ready / lab_ready:.2f})")


if __name__ == "__main__":
    main()
