"""A lab run by `bridgelab serve` in its own network namespace, for the VM
tiers: started, awaited until every guest settled, and stopped (the daemon
by SIGTERM, the namespace deleted) whatever happened."""

from __future__ import annotations

import contextlib
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import httpx
import pytest
import yaml

from .conftest import netns, stop_process

BRING_UP_TIMEOUT = 900


@dataclass
class RunningLab:
    ns: str
    proc: subprocess.Popen[bytes]
    api: httpx.Client
    state: Path
    log: Path
    argv: list[str]

    @property
    def sock(self) -> Path:
        return self.state.parent / "api.sock"

    def cli(self, *args: str, timeout: float = 900) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "bridgelab.cli", *args[:1], "--api", f"unix:{self.sock}",
                               *args[1:]], capture_output=True, text=True, timeout=timeout)

    def restart(self, *extra: str) -> None:
        """SIGTERM the daemon and start it again on the same lab file and state."""
        self.stop()
        self.start(*extra)

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        assert self.proc.wait(120) == 0, self.log.read_text()[-3000:]

    def start(self, *extra: str) -> None:
        """`extra`: more `serve` arguments, e.g. --cold."""
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen([*self.argv, *extra], stdout=out, stderr=subprocess.STDOUT)

    def guests(self) -> dict[str, dict[str, Any]]:
        return {g["name"]: g for g in self.api.get("/guests").raise_for_status().json()}

    def host_ping(self, ip: str, deadline: int = 5) -> bool:
        return subprocess.run(["ip", "netns", "exec", self.ns, "ping", "-n", "-q", "-c", "1", "-w", str(deadline), ip],
                              capture_output=True).returncode == 0


def wait_settled(lab: RunningLab) -> None:
    deadline = time.monotonic() + BRING_UP_TIMEOUT
    while time.monotonic() < deadline:
        if lab.proc.poll() is not None:
            pytest.fail(f"bridgelab serve exited {lab.proc.returncode}:\n{lab.log.read_text()[-4000:]}")
        try:
            guests = lab.guests()
            if all(g["state"] in ("ready", "failed") for g in guests.values()):
                return
        except httpx.TransportError:
            pass
        time.sleep(1)
    pytest.fail(f"guests not settled after {BRING_UP_TIMEOUT}s:\n{lab.log.read_text()[-4000:]}")


@contextlib.contextmanager
def running_lab(tmp: Path, spec: dict[str, Any], prefix: str, ns: str | None = None,
                settle: bool = True) -> Iterator[RunningLab]:
    """`ns`: a namespace the caller made (else a fresh one named after
    `prefix`); `settle`: wait until every guest is ready or failed."""
    lab_file = tmp / "lab.yaml"
    lab_file.write_text(yaml.safe_dump(spec))
    with contextlib.ExitStack() as stack:
        ns = ns or stack.enter_context(netns(prefix))
        log = tmp / "serve.log"
        sock = tmp / "api.sock"
        argv = ["ip", "netns", "exec", ns, sys.executable, "-m", "bridgelab.cli", "serve",
                "--lab", str(lab_file), "--listen", f"unix:{sock}", "--state-dir", str(tmp / "s")]
        api = stack.enter_context(httpx.Client(transport=httpx.HTTPTransport(uds=str(sock)),
                                               base_url="http://bridgelab", timeout=600))
        with open(log, "wb") as out:
            running = RunningLab(ns, subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT), api, tmp / "s",
                                 log, argv)
        stack.callback(lambda: stop_process(running.proc, 120))  # the current daemon, after restarts
        if settle:
            wait_settled(running)
        yield running


__all__ = ["RunningLab", "running_lab", "wait_settled"]
