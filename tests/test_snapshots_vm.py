"""Snapshots and warm starts of real riscv64 guests under TCG (QEMU as the
host has it: bookworm's 7.2, whose riscv64 timers need re-arming after a
restore), through `bridgelab serve` in a netns.

One two-guest lab for the module: booted cold, then stopped and started
again warm, then per-guest restores, then a changed lab file and a
truncated overlay, each of which must cold-boot only its guest.
"""

from __future__ import annotations

import os
import re
import stat
import time
from pathlib import Path
from typing import Any, Iterator

import pytest
import yaml
from bridgelab.model import image_build

from .labrun import RunningLab, running_lab, wait_settled

pytestmark = pytest.mark.vm

SPEC: dict[str, Any] = {
    "name": "snap", "bridge": {"name": "br0", "address": "10.198.103.114/24"},
    "guests": [{"name": "rv1", "arch": "riscv64", "image": "debian-riscv64"},
               {"name": "rv2", "arch": "riscv64", "image": "debian-riscv64"}]}


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningLab]:
    if os.geteuid() != 0:
        pytest.fail("VM tests need root")
    image_build.build_image("debian-riscv64")
    with running_lab(tmp_path_factory.mktemp("snap"), SPEC, "blsn") as running:
        yield running


def exec_in(lab: RunningLab, name: str, script: str, timeout: float = 60) -> dict[str, Any]:
    r = lab.api.post(f"/guests/{name}/exec", json={"argv": ["sh", "-c", script], "timeout": timeout})
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    return body


def snapshots(lab: RunningLab, path: str = "/snapshots") -> dict[tuple[str, str], dict[str, Any]]:
    return {(s["guest"], s["name"]): s for s in lab.api.get(path).raise_for_status().json()}


def wait_for_ready_snapshots(lab: RunningLab, guests: set[str]) -> dict[tuple[str, str], dict[str, Any]]:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        found = snapshots(lab)
        if {(g, "ready") for g in guests} <= set(found):
            return found
        time.sleep(0.5)
    pytest.fail(f"no ready snapshots after 60s: {snapshots(lab)}\n{lab.log.read_text()[-3000:]}")


def boot_kind(guest: dict[str, Any]) -> str:
    """'warm' for a guest restored from a snapshot, 'cold' for one that booted its firmware."""
    stages = guest["stages"]
    assert ("restored" in stages) != ("firmware" in stages), stages
    return "warm" if "restored" in stages else "cold"


def log_since(lab: RunningLab, mark: int) -> str:
    return lab.log.read_text()[mark:]


def test_a_cold_lab_keeps_a_ready_snapshot_of_each_guest(lab):
    g = lab.guests()
    assert {n: (v["state"], boot_kind(v)) for n, v in g.items()} == {"rv1": ("ready", "cold"),
                                                                      "rv2": ("ready", "cold")}
    ready = lab.api.get("/readyz")
    assert ready.status_code == 200 and ready.json()["ready"], ready.text
    found = wait_for_ready_snapshots(lab, {"rv1", "rv2"})
    for name in ("rv1", "rv2"):
        s = found[(name, "ready")]
        assert s["valid"] and s["invalid_because"] is None
        assert s["size"] > 50 * 2**20  # the guest's memory in use, at least
        assert s["valid_for"]["mac"] == g[name]["mac"]
        assert s["valid_for"]["network"].startswith(f"{g[name]['ip']}/24 ")
        assert "QEMU emulator version" in s["valid_for"]["qemu"]
        for f in ("overlay.qcow2", "snapshots.json"):
            mode = stat.S_IMODE((lab.state / "guests" / name / f).stat().st_mode)
            assert mode == 0o600, f"{name}/{f} is {oct(mode)}"


def test_the_next_start_restores_instead_of_booting(lab):
    mark = len(lab.log.read_text())
    lab.restart()
    wait_settled(lab)
    g = lab.guests()
    assert {n: (v["state"], boot_kind(v)) for n, v in g.items()} == {"rv1": ("ready", "warm"),
                                                                      "rv2": ("ready", "warm")}, g
    log = log_since(lab, mark)
    assert "guest rv1: warm start from ready snapshot" in log and "guest rv2: warm start" in log, log[-3000:]
    assert "cold boot" not in log


def test_a_restored_guest_has_the_hosts_time_and_working_timers(lab):
    for name in ("rv1", "rv2"):
        t0 = time.time()
        out = exec_in(lab, name, "date +%s.%N; sleep 2; date +%s.%N")
        t1 = time.time()
        before, after = (float(x) for x in out["output"].split())
        assert t0 - 2 <= before <= t1 + 2, (t0, before, t1)  # the clock was set to the host's
        assert 1.5 <= after - before <= 2.5, after - before   # and its timers fire on time
        assert abs(after - t1) < 2, (after, t1)


def test_a_restored_lab_meshes_and_execs_by_agent_and_console(lab):
    report = lab.api.post("/mesh").json()
    assert report["ok"], report
    assert exec_in(lab, "rv1", "echo agent")["via"] == "agent"
    # With its agent stopped, the guest is reached on the console the
    # restored session was taken over on.
    # (stopped after the exec that asks for it has answered)
    exec_in(lab, "rv1", "systemd-run --on-active=1 systemctl stop qemu-guest-agent >/dev/null")
    deadline = time.monotonic() + 60
    while True:
        r = lab.api.post("/guests/rv1/exec", json={"argv": ["sh", "-c", "echo console"], "timeout": 60})
        # An exec the agent had taken when it stopped is answered 502: its outcome is unknown.
        assert r.status_code == 200 or (r.status_code == 502 and "lost the guest agent" in r.text), r.text
        out = r.json()
        if (r.status_code == 200 and out["via"] == "console") or time.monotonic() > deadline:
            break
        time.sleep(1)
    assert out["via"] == "console" and out["exit_code"] == 0 and "console" in out["output"], out
    assert exec_in(lab, "rv1", "systemctl start qemu-guest-agent")["exit_code"] == 0


def test_a_restored_guest_takes_a_new_address(lab):
    r = lab.api.put("/guests/rv2/network", json={"ip": "10.198.103.50"})
    assert r.status_code == 200 and r.json()["state"] == "ready", r.text
    assert lab.host_ping("10.198.103.50")
    r = lab.api.put("/guests/rv2/network", json={"ip": "10.198.103.2"})
    assert r.status_code == 200 and r.json()["state"] == "ready", r.text


def test_restore_drops_what_was_written_after_the_snapshot(lab):
    r = lab.api.post("/guests/rv1/snapshots", json={"name": "clean"})
    assert r.status_code == 201, r.text
    assert r.json()[0]["valid"] and r.json()[0]["save_seconds"] > 0
    rv2_before = lab.guests()["rv2"]
    rv2_boot = exec_in(lab, "rv2", "cat /proc/sys/kernel/random/boot_id")["output"]
    exec_in(lab, "rv1", "echo dirty > /root/after-snapshot && sync")
    r = lab.api.post("/guests/rv1/snapshots/clean/restore")
    assert r.status_code == 200 and r.json()[0]["state"] == "ready", r.text
    out = exec_in(lab, "rv1", "test -e /root/after-snapshot; echo $?")
    assert out["output"].strip() == "1", out
    # The other guest ran on untouched: same qemu, same boot, never left ready.
    rv2_after = lab.guests()["rv2"]
    assert rv2_after["pid"] == rv2_before["pid"]
    assert rv2_after["timestamps"]["ready"] == rv2_before["timestamps"]["ready"]
    assert exec_in(lab, "rv2", "cat /proc/sys/kernel/random/boot_id")["output"] == rv2_boot
    out = exec_in(lab, "rv1", "date +%s.%N; sleep 1; date +%s.%N")
    before, after = (float(x) for x in out["output"].split())
    assert abs(before - time.time()) < 3 and 0.7 <= after - before <= 1.5, out


def test_snapshot_requests_are_checked(lab):
    bad = [("/guests/rv1/snapshots", {"name": "a b"}), ("/guests/rv1/snapshots", {"name": "x;reboot"}),
           ("/guests/rv1/snapshots", {"name": "bridgelab-base"}), ("/snapshots", {"name": ""}),
           ("/guests/rv1/snapshots", {"name": "ok", "extra": 1})]
    for path, body in bad:
        assert lab.api.post(path, json=body).status_code == 422, (path, body)
    assert lab.api.post("/guests/rv1/snapshots/nope/restore").status_code == 404
    assert lab.api.post("/guests/rv9/snapshots", json={"name": "x"}).status_code == 404
    assert lab.api.delete("/guests/rv1/snapshots/bridgelab-base").status_code == 404
    assert set(snapshots(lab, "/guests/rv1/snapshots")) == {("rv1", "ready"), ("rv1", "clean")}


def test_the_cli_lists_saves_restores_and_removes(lab):
    p = lab.cli("snapshot", "save", "both")
    assert p.returncode == 0, p.stderr
    listed = lab.cli("snapshot", "list").stdout
    assert re.search(r"^rv1\s+both\s", listed, re.M) and re.search(r"^rv2\s+both\s", listed, re.M), listed
    p = lab.cli("snapshot", "restore", "both", "rv2")
    assert p.returncode == 0 and "rv2: ready" in p.stdout, p.stdout + p.stderr
    assert lab.cli("snapshot", "rm", "both").returncode == 0
    assert not any(name == "both" for _, name in snapshots(lab))
    assert lab.cli("snapshot", "save", "a;b").returncode == 2


def test_a_changed_address_cold_boots_only_that_guest(lab):
    lab.stop()
    spec = yaml.safe_load((lab.state.parent / "lab.yaml").read_text())
    spec["guests"][1]["ip"] = "10.198.103.60"
    (lab.state.parent / "lab.yaml").write_text(yaml.safe_dump(spec))
    mark = len(lab.log.read_text())
    lab.start()
    wait_settled(lab)
    g = lab.guests()
    assert (g["rv1"]["state"], boot_kind(g["rv1"])) == ("ready", "warm"), g["rv1"]
    assert (g["rv2"]["state"], boot_kind(g["rv2"]), g["rv2"]["ip"]) == ("ready", "cold", "10.198.103.60")
    log = log_since(lab, mark)
    assert re.search(r"guest rv2: cold boot \(its ready snapshot is not valid for it: network", log), log[-3000:]
    # The cold boot keeps a new ready snapshot, valid for the new address.
    found = wait_for_ready_snapshots(lab, {"rv2"})
    assert found[("rv2", "ready")]["valid"], found[("rv2", "ready")]


def test_a_truncated_snapshot_falls_back_to_a_cold_boot(lab):
    lab.stop()
    overlay = lab.state / "guests" / "rv1" / "overlay.qcow2"
    with open(overlay, "r+b") as f:
        f.truncate(overlay.stat().st_size // 2)
    mark = len(lab.log.read_text())
    lab.start()
    wait_settled(lab)
    g = lab.guests()
    assert (g["rv1"]["state"], boot_kind(g["rv1"])) == ("ready", "cold"), g["rv1"]
    assert (g["rv2"]["state"], boot_kind(g["rv2"])) == ("ready", "warm"), g["rv2"]
    log = log_since(lab, mark)
    assert "guest rv1: cold boot" in log or "guest rv1: warm start failed, booting cold" in log, log[-3000:]
    assert lab.api.post("/mesh").json()["ok"]


def test_serve_cold_boots_every_guest(lab):
    assert lab.api.post("/guests/rv2/snapshots", json={"name": "keep"}).status_code == 201
    lab.stop()
    mark = len(lab.log.read_text())
    lab.start("--cold")
    wait_settled(lab)
    g = lab.guests()
    assert {n: boot_kind(v) for n, v in g.items()} == {"rv1": "cold", "rv2": "cold"}
    assert "cold boot (serve --cold)" in log_since(lab, mark)
    # Named snapshots outlive cold boots: the overlay reverts to its empty base.
    assert snapshots(lab)[("rv2", "keep")]["valid"]
    assert not (Path(lab.state) / "guests" / "rv1" / "gdb.sock").exists()
