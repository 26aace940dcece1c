"""The guests users bring, booted for real under TCG in one mixed-arch lab:

- oe1: the openEuler-like riscv64 image (images/openeuler-like-riscv64):
  OpenSBI -> U-Boot -> extlinux.conf from a partitioned disk, openEuler's
  console (banner, welcome script, prompt, a 30 s TMOUT) and no guest agent,
  so everything runs on the serial console;
- arm: Debian aarch64 (virt, -cpu max) with NetworkManager and the agent;
- nd: Debian x86_64 (q35, virtio-pci) run by systemd-networkd instead of
  NetworkManager (the variant of the debian-x86_64 recipe).

Three guests at bring-up, because every TCG boot costs this 2-core machine
minutes and the whole suite must fit CI's time; a fourth, oe2 with a wrong
password in its `login`, is added last, when the others are idle. Idle
logouts before a reboot are covered against a scripted openEuler console in
the pure tier (test_console.py, test_runner.py).

nd runs `accel: tcg` explicitly: this build VM has /dev/kvm, but nested KVM
hangs its guests, and `auto` would pick it for the native arch.
"""

from __future__ import annotations

import os
import time
from typing import Any, Iterator

import pytest
from bridgelab.model import image_build

from .labrun import RunningLab, running_lab

pytestmark = pytest.mark.vm
TMOUT = 30  # images/openeuler-like-riscv64/tmout.sh


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningLab]:
    if os.geteuid() != 0:
        pytest.fail("VM tests need root")
    for image in ("openeuler-like-riscv64", "debian-aarch64", "debian-x86_64-networkd"):
        image_build.build_image(image)  # a no-op when the cache already has it
    spec = {"name": "mixed", "bridge": {"name": "br0", "address": "10.198.101.114/24"},
            "guests": [{"name": "oe1", "arch": "riscv64", "image": "openeuler-like-riscv64", "ip": "10.198.101.1"},
                       {"name": "arm", "arch": "aarch64", "image": "debian-aarch64", "ip": "10.198.101.4"},
                       {"name": "nd", "arch": "x86_64", "image": "debian-x86_64-networkd", "ip": "10.198.101.5",
                        "accel": "tcg"}]}
    with running_lab(tmp_path_factory.mktemp("mixed"), spec, "blmx") as running:
        yield running


def exec_(lab: RunningLab, *argv: str, guest: str = "oe1", **kw: object) -> dict[str, Any]:
    r = lab.api.post(f"/guests/{guest}/exec", json={"argv": list(argv), **kw})
    assert r.status_code == 200, r.text
    return r.json()


def transcript(lab: RunningLab, name: str) -> str:
    return (lab.state / "guests" / name / "transcript.log").read_text(errors="replace")


def console_log(lab: RunningLab, name: str) -> str:
    return (lab.state / "guests" / name / "console.log").read_text(errors="replace")


def test_it_boots_through_opensbi_and_u_boot_and_is_ready(lab):
    g = lab.guests()["oe1"]
    assert (g["state"], g["ip"]) == ("ready", "10.198.101.1"), g
    assert g["mesh"] == {"10.198.101.114": True, "10.198.101.4": True, "10.198.101.5": True}
    log = console_log(lab, "oe1")
    assert log.index("OpenSBI") < log.index("U-Boot") < log.index("/boot/extlinux/extlinux.conf")
    assert "Authorized users only" in log and "openeuler-riscv64 login:" in log
    assert lab.host_ping("10.198.101.1")


def test_x86_64_and_aarch64_are_ready_mesh_across_arches_and_run_commands(lab):
    g = lab.guests()
    for name, arch, ip in (("nd", "x86_64", "10.198.101.5"), ("arm", "aarch64", "10.198.101.4")):
        assert (g[name]["state"], g[name]["ip"], g[name]["accel"]) == ("ready", ip, "tcg"), g[name]
        others = {"10.198.101.114", "10.198.101.1", "10.198.101.4", "10.198.101.5"} - {ip}
        assert g[name]["mesh"] == dict.fromkeys(sorted(others), True), g[name]
        r = exec_(lab, "uname", "-m", guest=name)  # by agent or console: either must do
        assert (r["exit_code"], r["output"]) == (0, f"{arch}\n"), r
        r = exec_(lab, "ping", "-c", "1", "-w", "5", "10.198.101.1", guest=name)
        assert r["exit_code"] == 0, r
    mesh = lab.api.post("/mesh").json()
    assert mesh["ok"] and not mesh["skipped"], mesh
    assert len(mesh["pairs"]) == 3 * 3, mesh  # the host and two peers, from each of three


def test_a_networkd_guest_gets_its_address_from_a_network_file_and_can_move(lab):
    g = lab.guests()["nd"]
    assert (g["state"], g["ip"]) == ("ready", "10.198.101.5"), g
    unit = exec_(lab, "cat", "/etc/systemd/network/10-bridgelab-" + g["mac"].replace(":", "") + ".network", guest="nd")
    assert unit["exit_code"] == 0 and "Address=10.198.101.5/24" in unit["output"], unit
    assert exec_(lab, "sh", "-c", "command -v nmcli", guest="nd")["exit_code"] != 0  # no NetworkManager at all
    r = lab.api.put("/guests/nd/network", json={"ip": "10.198.101.60"})
    assert r.status_code == 200, r.text
    assert (r.json()["state"], r.json()["ip"], r.json()["changed"]) == ("ready", "10.198.101.60", True), r.json()
    assert lab.host_ping("10.198.101.60") and not lab.host_ping("10.198.101.5", deadline=2)


def test_console_exec_keeps_exit_codes_and_literal_arguments(lab):
    r = exec_(lab, "sh", "-c", "echo out; echo err >&2; exit 7")
    assert (r["via"], r["exit_code"], r["output"]) == ("console", 7, "out\nerr\n"), r
    hostile = ["$(reboot)", "`id`", "; poweroff", "a'b\"c", "*", "$HOME"]
    r = exec_(lab, "printf", "%s|", *hostile)
    assert r["output"] == "|".join(hostile) + "|" and r["exit_code"] == 0, r


def test_exec_after_an_idle_logout_logs_in_again(lab):
    live = [exec_(lab, "true")["duration"] for _ in range(3)]
    time.sleep(TMOUT + 5)
    r = exec_(lab, "hostname")
    assert (r["exit_code"], r["output"]) == (0, "openeuler-riscv64\n"), r
    text = transcript(lab, "oe1")
    assert "[bridgelab] the shell is gone (logged out?): logging in again" in text
    assert "timed out waiting for input: auto-logout" in text
    # For docs/benchmarks.md's table: the re-login's cost next to a live shell's.
    print(f"\nexec on a live shell: {sorted(live)[1]:.2f} s; first exec after the idle logout: {r['duration']:.2f} s")


def test_put_network_on_the_console(lab):
    r = lab.api.put("/guests/oe1/network", json={"ip": "10.198.101.50"})
    assert r.status_code == 200, r.text
    g = r.json()
    assert (g["state"], g["ip"], g["changed"]) == ("ready", "10.198.101.50", True), g
    assert lab.host_ping("10.198.101.50")


def test_reboot_through_the_firmware_chain(lab):
    r = lab.api.post("/guests/oe1/reboot")
    assert r.status_code == 200, r.text
    g = r.json()
    assert (g["state"], g["ip"]) == ("ready", "10.198.101.50"), g
    assert console_log(lab, "oe1").count("U-Boot 20") >= 2  # through the firmware chain again


def test_stop_after_an_idle_logout_powers_off_through_the_shell(lab):
    time.sleep(TMOUT + 5)
    r = lab.api.post("/guests/oe1/stop")
    assert r.status_code == 200, r.text
    assert r.json()["state"] == "stopped"
    # riscv64 virt has no ACPI button: only the shell's poweroff ends it
    # before qemu would be told to quit.
    assert "guest oe1 powered down" in lab.log.read_text()
    assert "systemctl poweroff" in transcript(lab, "oe1").rsplit("logging in again", 1)[-1]


def test_a_wrong_password_fails_the_guest_after_exactly_one_attempt(lab):
    # Added last, at runtime, so its boot does not slow the lab's bring-up.
    r = lab.api.post("/guests", json={"name": "oe2", "arch": "riscv64", "image": "openeuler-like-riscv64",
                                      "ip": "10.198.101.6", "login": {"user": "root", "password": "not-the-password"}})
    assert r.status_code == 201, r.text
    assert lab.cli("wait", "oe2", "--timeout", "900").returncode != 0
    g = lab.guests()["oe2"]
    assert g["state"] == "failed" and "not tried again" in g["reason"], g
    assert transcript(lab, "oe2").count("[bridgelab] login as root") == 1
    assert "not-the-password" not in transcript(lab, "oe2") + console_log(lab, "oe2")
    assert lab.api.delete("/guests/oe2").status_code == 204
