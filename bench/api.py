#!/usr/bin/env python3
"""The API under load and the cost of its operations, on a real two-guest lab.

  status     GET /guests from 100 concurrent clients for --seconds: p50, p99,
             requests/s, errors; beside the same load on a bare uvicorn app
             that answers the same bytes (bare_app.py: the floor, same
             loop and parser), and GET /healthz from one client;
  open loop  GET /guests sent at a fixed --rate (200/s) whatever the answers
             do, for --seconds: latency from each request's scheduled time
             (no coordinated omission), p50 and p99, against the bare app;
  exec       POST /guests/NAME/exec ["true"] on an idle guest, --reps times:
             median round trip through qemu-guest-agent (rv1) and through the
             serial console (rv2, after its agent is stopped), beside the HTTP
             floor;
  add        POST /guests (a third guest) until it is ready (API long-poll),
             beside the lab's own bring-up of its first guests.

    sudo .venv/bin/python bench/api.py --seconds 30 --reps 20
    sudo .venv/bin/python bench/api.py --seconds 10 --rounds 5 --no-vm   # the loads only
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Iterator

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


WARM_UP = 2.0  # seconds of the open loop not counted: the client opens its connections then


async def open_loop(sock: Path, rate: float, seconds: float) -> tuple[list[float], int]:
    """Requests started on a fixed schedule; a slow answer does not delay the
    next start, so queueing shows in the latency instead of hiding in a
    lower rate."""
    latencies: list[float] = []
    errors = 0
    limits = httpx.Limits(max_connections=200, max_keepalive_connections=200)
    async with httpx.AsyncClient(transport=httpx.AsyncHTTPTransport(uds=str(sock), limits=limits),
                                 base_url="http://b", timeout=30) as c:
        async def one(at: float) -> None:
            nonlocal errors
            await asyncio.sleep(max(0.0, at - time.perf_counter()))
            try:
                (await c.get("/guests")).raise_for_status()
                if at >= start + WARM_UP:
                    latencies.append(time.perf_counter() - at)
            except httpx.HTTPError:
                errors += 1
        start = time.perf_counter() + 0.5
        await asyncio.gather(*(one(start + i / rate) for i in range(int(rate * (seconds + WARM_UP)))))
    return latencies, errors


@contextlib.contextmanager
def bare_app(tmp: Path, body: bytes) -> Iterator[Path]:
    """bare_app.py serving `body` on a unix socket, for as long as the block runs."""
    (tmp / "body.json").write_bytes(body)
    sock = tmp / "bare.sock"
    proc = subprocess.Popen([sys.executable, str(Path(__file__).with_name("bare_app.py")), str(tmp / "body.json"),
                             str(sock)])
    try:
        deadline = time.monotonic() + 30
        while not sock.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        yield sock
    finally:
        proc.terminate()
        proc.wait(30)


def median_of(runs: list[dict[str, float]]) -> dict[str, float]:
    return {k: statistics.median(r[k] for r in runs) for k in runs[0]}


def loads(sock: Path, bare: Path, args: argparse.Namespace) -> tuple[dict[str, float], ...]:
    """Both loads on bridgelab and on the bare app, alternating for --rounds
    rounds (the load generator shares the cores, so drift must hit both):
    the closed loop's medians per server, the open loop's latencies pooled
    over the rounds."""
    closed: dict[Path, list[dict[str, float]]] = {sock: [], bare: []}
    opened: dict[Path, tuple[list[float], int]] = {sock: ([], 0), bare: ([], 0)}
    for _ in range(args.rounds):
        for target in (sock, bare):
            closed[target].append(asyncio.run(status_load(target, args.clients, args.seconds)))
            latencies, errors = asyncio.run(open_loop(target, args.rate, args.seconds))
            opened[target] = (opened[target][0] + latencies, opened[target][1] + errors)

    def summary(target: Path) -> dict[str, float]:
        latencies, errors = opened[target]
        return {"p50_ms": pct(latencies, 50) * 1e3, "p99_ms": pct(latencies, 99) * 1e3, "errors": float(errors),
                "n": float(len(latencies))}
    return median_of(closed[sock]), summary(sock), median_of(closed[bare]), summary(bare)


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
    ap.add_argument("--rate", type=float, default=200, help="open-loop requests per second")
    ap.add_argument("--rounds", type=int, default=3, help="alternating rounds of each load on both servers")
    ap.add_argument("--no-vm", action="store_true", help="only the API loads: skip exec and add-guest")
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

            with bare_app(tmp, c.get("/guests").content) as bare:
                load, opened, bare_load, bare_opened = loads(sock, bare, args)
            health = timed(c, "GET", "/healthz", args.reps)
            if args.no_vm:
                report_loads(args, load, opened, bare_load, bare_opened, health)
                return
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
    report_loads(args, load, opened, bare_load, bare_opened, health)
    floor = statistics.median(health)
    for via, values in (("guest agent", execs), ("console", console_execs)):
        print(f"exec ['true'] on an idle guest via the {via}: median {statistics.median(values) * 1e3:.0f} ms "
              f"(n={args.reps}, {statistics.median(values) / floor:.0f}x the HTTP floor)")
    print(f"add a guest until ready: {add_ready:.1f} s (lab start to both guests ready: {lab_ready:.1f} s, "
          f"ratio {add_ready / lab_ready:.2f})")


def report_loads(args: argparse.Namespace, load: dict[str, float], opened: dict[str, float],
                 bare_load: dict[str, float], bare_opened: dict[str, float], health: list[float]) -> None:
    print(f"{args.rounds} alternating rounds: closed loop, medians of the rounds; open loop, all rounds pooled")
    for who, closed, opn in (("bridgelab", load, opened), ("bare uvicorn, same bytes", bare_load, bare_opened)):
        print(f"GET /guests, {who}: {args.clients} clients for {args.seconds:.0f} s: p50 {closed['p50_ms']:.1f} ms, "
              f"p99 {closed['p99_ms']:.1f} ms, {closed['rps']:.0f} req/s, {closed['errors']:.0f} errors; "
              f"open loop at {args.rate:.0f}/s ({opn['n']:.0f} requests): p50 {opn['p50_ms']:.2f} ms, "
              f"p99 {opn['p99_ms']:.2f} ms, "
              f"{opn['errors']:.0f} errors")
    print(f"throughput bridgelab / bare uvicorn = {load['rps'] / bare_load['rps']:.2f}")
    print(f"GET /healthz, one client (HTTP floor): median {statistics.median(health) * 1e3:.2f} ms")


if __name__ == "__main__":
    main()
