"""What the benchmarks share: a fresh netns, and `bridgelab serve` in it on a unix socket."""

from __future__ import annotations

import secrets
import shutil
import subprocess
import sys
import time
from pathlib import Path

import httpx


def fresh_ns(prefix: str = "blb") -> str:
    name = f"{prefix}-{secrets.token_hex(3)}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    subprocess.run(["ip", "-n", name, "link", "set", "lo", "up"], check=True)
    return name


def start_serve(ns: str, tmp: Path, lab: Path, timeout: float = 10,
                extra: tuple[str, ...] = ()) -> tuple[subprocess.Popen[bytes], httpx.Client]:
    """The daemon in `ns`, its API on tmp/api.sock, its log appended to tmp/serve.log."""
    sock = tmp / "api.sock"
    proc = subprocess.Popen(["ip", "netns", "exec", ns, sys.executable, "-m", "bridgelab.cli", "serve",
                             "--lab", str(lab), "--listen", f"unix:{sock}", "--state-dir", str(tmp / "s"),
                             "--token-file", str(tmp / "api-token"), *extra],
                            stdout=subprocess.DEVNULL, stderr=open(tmp / "serve.log", "ab"))
    return proc, httpx.Client(transport=httpx.HTTPTransport(uds=str(sock)), base_url="http://b", timeout=timeout)


def wait_settled(api: httpx.Client, proc: subprocess.Popen[bytes], timeout: float) -> list[dict]:
    """Every guest ready or failed (or the deadline): the guests as the API shows them."""
    deadline = time.monotonic() + timeout
    guests: list[dict] = []
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"bridgelab serve exited with {proc.returncode}")
        try:
            guests = api.get("/guests").json()
            if guests and all(g["state"] in ("ready", "failed") for g in guests):
                break
        except httpx.TransportError:
            pass
        time.sleep(0.25)
    return guests


def end_daemon(proc: subprocess.Popen[bytes], timeout: float = 120) -> None:
    """A daemon a bench gave up on: SIGTERM, so it powers its guests off and
    removes what it made; SIGKILL only if it does not end (its qemu would
    then be left for the next start to sweep)."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def stop_serve(proc: subprocess.Popen[bytes], api: httpx.Client, ns: str, tmp: Path, timeout: float = 300) -> None:
    """SIGTERM the daemon this bench started (its guests power off), then
    remove the namespace and the scratch directory."""
    proc.terminate()
    proc.wait(timeout)
    api.close()
    subprocess.run(["ip", "netns", "del", ns], check=False)
    shutil.rmtree(tmp, ignore_errors=True)
