"""The openEuler-like riscv64 guest (images/openeuler-like-riscv64) under TCG:
OpenSBI -> U-Boot -> extlinux.conf from a partitioned disk, openEuler's
console (banner, welcome script, prompt, a 30 s TMOUT) and no guest agent,
so everything runs on the serial console.

One lab for the module: oe1 with the image's login, and oe2 with a wrong
password, booting side by side.
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
    image_build.build_image("openeuler-like-riscv64")  # a no-op when the cache already has it
    spec = {"name": "oe", "bridge": {"name": "br0", "address": "10.198.101.114/24"},
            "guests": [{"name": "oe1", "arch": "riscv64", "image": "openeuler-like-riscv64", "ip": "10.198.101.1"},
                       {"name": "oe2", "arch": "riscv64", "image": "openeuler-like-riscv64", "ip": "10.198.101.2",
                        "login": {"user": "root", "password": "not-the-password"}}]}
    with running_lab(tmp_path_factory.mktemp("oe"), spec, "bloe") as running:
        yield running


def exec_(lab: RunningLab, *argv: str, **kw: object) -> dict[str, Any]:
    r = lab.api.post("/guests/oe1/exec", json={"argv": list(argv), **kw})
    assert r.status_code == 200, r.text
    return r.json()


def transcript(lab: RunningLab, name: str) -> str:
    return (lab.state / "guests" / name / "transcript.log").read_text(errors="replace")


def console_log(lab: RunningLab, name: str) -> str:
    return (lab.state / "guests" / name / "console.log").read_text(errors="replace")


def test_it_boots_through_opensbi_and_u_boot_and_is_ready(lab):
    g = lab.guests()["oe1"]
    assert (g["state"], g["ip"]) == ("ready", "10.198.101.1"), g
    assert g["mesh"] == {"10.198.101.114": True}  # oe2 failed: not a peer
    log = console_log(lab, "oe1")
    assert log.index("OpenSBI") < log.index("U-Boot") < log.index("/boot/extlinux/extlinux.conf")
    assert "Authorized users only" in log and "openeuler-riscv64 login:" in log
    assert lab.host_ping("10.198.101.1")


def test_a_wrong_password_fails_the_guest_after_exactly_one_attempt(lab):
    g = lab.guests()["oe2"]
    assert g["state"] == "failed" and "not tried again" in g["reason"], g
    assert transcript(lab, "oe2").count("[bridgelab] login as root") == 1


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
    # For the README's table: the re-login's cost next to a live shell's.
    print(f"\nexec on a live shell: {sorted(live)[1]:.2f} s; first exec after the idle logout: {r['duration']:.2f} s")


def test_put_network_on_the_console(lab):
    r = lab.api.put("/guests/oe1/network", json={"ip": "10.198.101.50"})
    assert r.status_code == 200, r.text
    g = r.json()
    assert (g["state"], g["ip"], g["changed"]) == ("ready", "10.198.101.50", True), g
    assert lab.host_ping("10.198.101.50")


def test_reboot_after_an_idle_logout(lab):
    time.sleep(TMOUT + 5)
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
