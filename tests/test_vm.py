"""Real riscv64 guests under TCG, driven through `bridgelab serve` in a netns.

One lab is booted for the whole module: examples/two-riscv64.yaml plus a
third guest whose qemu cannot start, to show one failure does not stop the
others. Host-side checks use iproute2/ping, not bridgelab's own code.
"""

from __future__ import annotations

import json
import os
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

from bridgelab import images

from .conftest import delete_netns, links_in, make_netns

pytestmark = pytest.mark.vm
ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "two-riscv64.yaml"
BRING_UP_TIMEOUT = 900


@dataclass
class RunningLab:
    ns: str
    proc: subprocess.Popen[bytes]
    api: httpx.Client
    state: Path
    log: Path

    def guests(self) -> dict[str, dict[str, Any]]:
        return {g["name"]: g for g in self.api.get("/guests").raise_for_status().json()}

    def host_ping(self, ip: str, deadline: int = 5) -> bool:
        return subprocess.run(["ip", "netns", "exec", self.ns, "ping", "-n", "-q", "-c", "1", "-w", str(deadline), ip],
                              capture_output=True).returncode == 0


def _wait_settled(lab: RunningLab) -> None:
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


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningLab]:
    if os.geteuid() != 0:
        pytest.fail("VM tests need root")
    images.build_image("debian-riscv64")  # a no-op when the cache already has it
    tmp = tmp_path_factory.mktemp("vm")
    spec = yaml.safe_load(EXAMPLE.read_text())
    spec["guests"].append({"name": "broken", "arch": "riscv64", "image": "debian-riscv64",
                           "qemu_args": ["-device", "no-such-device"]})
    lab_file = tmp / "lab.yaml"
    lab_file.write_text(yaml.safe_dump(spec))
    ns = make_netns("blvm")
    log = tmp / "serve.log"
    sock = tmp / "api.sock"
    with open(log, "wb") as out:
        proc = subprocess.Popen(["ip", "netns", "exec", ns, sys.executable, "-m", "bridgelab.cli", "serve",
                                 "--lab", str(lab_file), "--listen", f"unix:{sock}", "--state-dir", str(tmp / "s")],
                                stdout=out, stderr=subprocess.STDOUT)
    api = httpx.Client(transport=httpx.HTTPTransport(uds=str(sock)), base_url="http://bridgelab", timeout=600)
    running = RunningLab(ns, proc, api, tmp / "s", log)
    try:
        _wait_settled(running)
        yield running
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(120)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        api.close()
        delete_netns(ns)


def test_guests_come_up_ready_and_a_broken_one_fails_alone(lab):
    g = lab.guests()
    assert (g["rv1"]["state"], g["rv1"]["ip"]) == ("ready", "10.198.101.1"), g["rv1"]
    assert (g["rv2"]["state"], g["rv2"]["ip"]) == ("ready", "10.198.101.2"), g["rv2"]
    assert g["broken"]["state"] == "failed"
    assert "no-such-device" in g["broken"]["reason"]
    for name in ("rv1", "rv2"):
        stamps = g[name]["timestamps"]
        assert stamps["booting"] <= stamps["login"] <= stamps["configuring"] <= stamps["ready"]
        tail = g[name]["console_tail"]
        assert tail and "\x1b" not in tail  # the serial log, escape sequences stripped
    assert lab.api.get("/guests/rv1").json()["mac"] == g["rv1"]["mac"]
    assert lab.api.get("/guests/nope").status_code == 404
    health = lab.api.get("/healthz").json()
    assert health["status"] == "ok" and health["states"] == {"ready": 2, "failed": 1}


def test_each_guest_pinged_the_bridge_and_the_other(lab):
    g = lab.guests()
    assert g["rv1"]["mesh"] == {"10.198.101.114": True, "10.198.101.2": True}
    assert g["rv2"]["mesh"] == {"10.198.101.114": True, "10.198.101.1": True}


def test_host_reaches_both_guests_at_their_own_macs(lab):
    g = lab.guests()
    assert lab.host_ping("10.198.101.1") and lab.host_ping("10.198.101.2")
    neigh = json.loads(subprocess.run(["ip", "-n", lab.ns, "-j", "neigh", "show", "dev", "br0"],
                                      capture_output=True, text=True, check=True).stdout)
    seen = {n["dst"]: n.get("lladdr") for n in neigh}
    assert seen["10.198.101.1"] == g["rv1"]["mac"]
    assert seen["10.198.101.2"] == g["rv2"]["mac"]


@pytest.mark.parametrize("body, words", [
    ({"ip": "10.198.102.9"}, "outside"),
    ({"ip": "10.198.101.1"}, "already used by guest rv1"),
    ({"ip": "10.198.101.114"}, "bridge's own"),
    ({"ip": "10.198.101.255"}, "broadcast"),
    ({"ip": "10.198.101.9\u001b[2J"}, "IPv4"),
    ({"ip": "10.198.101.9; reboot"}, "IPv4"),
    ({"ip": "10.198.101.9", "gateway": "192.0.2.1"}, "gateway"),
    ({"ip": "10.198.101.9", "mtu": 9000}, "Extra inputs"),
])
def test_bad_network_request_is_422_and_guest_unchanged(lab, body, words):
    r = lab.api.put("/guests/rv2/network", json=body)
    assert r.status_code == 422, r.text
    assert words in r.text
    g = lab.guests()["rv2"]
    assert (g["state"], g["ip"]) == ("ready", "10.198.101.2")


def test_network_request_for_unknown_guest_is_404(lab):
    assert lab.api.put("/guests/nope/network", json={"ip": "10.198.101.9"}).status_code == 404


def test_put_network_moves_a_guest_and_the_mesh_holds(lab):
    r = lab.api.put("/guests/rv2/network", json={"ip": "10.198.101.50"})
    assert r.status_code == 200, r.text
    g = r.json()
    assert (g["state"], g["ip"], g["changed"]) == ("ready", "10.198.101.50", True), g
    assert g["mesh"] == {"10.198.101.114": True, "10.198.101.1": True}
    assert lab.host_ping("10.198.101.50")
    assert not lab.host_ping("10.198.101.2", deadline=2)
    again = lab.api.put("/guests/rv2/network", json={"ip": "10.198.101.50"}).json()
    assert (again["state"], again["changed"]) == ("ready", False), again


def test_reboot_keeps_the_address(lab):
    before = lab.guests()["rv1"]["timestamps"]["booting"]
    r = lab.api.post("/guests/rv1/reboot")
    assert r.status_code == 200, r.text
    g = r.json()
    assert (g["state"], g["ip"]) == ("ready", "10.198.101.1"), g
    assert g["timestamps"]["booting"] > before
    assert g["mesh"] == {"10.198.101.114": True, "10.198.101.50": True}
    assert lab.host_ping("10.198.101.1")


def test_status_cli_reads_the_api(lab):
    p = subprocess.run([sys.executable, "-m", "bridgelab.cli", "status", "--api", f"unix:{lab.state.parent}/api.sock"],
                       capture_output=True, text=True)
    assert p.returncode == 1  # not all ready: the broken guest
    lines = {ln.split()[0]: ln.split() for ln in p.stdout.splitlines()[1:]}
    assert lines["rv1"][1:3] == ["ready", "10.198.101.1"]
    assert lines["broken"][1] == "failed"


def test_a_qemu_crash_fails_only_that_guest(lab):
    pid = lab.guests()["rv2"]["pid"]
    os.kill(pid, signal.SIGKILL)  # a qemu bridgelab started, by its PID
    deadline = time.monotonic() + 10
    while lab.guests()["rv2"]["state"] != "failed" and time.monotonic() < deadline:
        time.sleep(0.2)
    g = lab.guests()
    assert g["rv2"]["state"] == "failed" and "qemu exited with status -9" in g["rv2"]["reason"]
    assert g["rv1"]["state"] == "ready"
    assert lab.host_ping("10.198.101.1")


def test_sigterm_leaves_no_taps_bridge_or_qemu(lab):
    pids = [g["pid"] for g in lab.guests().values() if g["pid"]]
    assert len(pids) == 3
    assert set(links_in(lab.ns)) == {"lo", "br0", "bl1f06-rv1", "bl1f06-rv2", "bl1f06-broken"}
    lab.proc.send_signal(signal.SIGTERM)
    assert lab.proc.wait(120) == 0, lab.log.read_text()[-3000:]
    assert links_in(lab.ns) == {"lo": ""}
    for pid in pids:
        assert not Path(f"/proc/{pid}").exists(), f"qemu {pid} survived"
    assert not (lab.state / "ledger.json").exists()
    assert not any(lab.state.glob("guests/*/*.sock"))
    # Overlays survive for inspection: a cleanly powered-off guest's is clean;
    # the one whose qemu was SIGKILLed may leak clusters (3) but is never corrupt (2).
    for name, allowed in (("rv1", {0}), ("broken", {0}), ("rv2", {0, 3})):
        check = subprocess.run(["qemu-img", "check", str(lab.state / "guests" / name / "overlay.qcow2")],
                               capture_output=True, text=True)
        assert check.returncode in allowed, (name, check.stdout, check.stderr)
