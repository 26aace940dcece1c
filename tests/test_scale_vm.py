"""More guests than cores: four debian-riscv64 guests of 512 MiB on this
2-core machine under TCG, started at once, must all reach `ready` (logged
in, configured, mesh-verified), booting a core's worth at a time
(BRIDGELAB_BOOT_CONCURRENCY unset), with the console logins bounded to one
guest per core (BRIDGELAB_CONFIGURE_CONCURRENCY unset) and boot deadlines
paced by the host's load. One point of bench/scale.py's sweep (1 to 16 guests), kept
small for CI's time; the timings are the bench's business, not this test's.
"""

from __future__ import annotations

import os
from typing import Iterator

import pytest
from bridgelab.model import image_build

from .labrun import RunningLab, running_lab

pytestmark = pytest.mark.vm
GUESTS = 4


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningLab]:
    if os.geteuid() != 0:
        pytest.fail("VM tests need root")
    image_build.build_image("debian-riscv64")
    spec = {"name": "scale", "bridge": {"name": "br0", "address": "10.198.101.114/24"},
            "guests": [{"name": f"g{i}", "arch": "riscv64", "image": "debian-riscv64", "memory": "512M"}
                       for i in range(1, GUESTS + 1)]}
    with running_lab(tmp_path_factory.mktemp("scale"), spec, "blsc") as running:
        yield running


def test_every_guest_is_ready_and_reaches_every_other(lab):
    guests = lab.guests()
    assert sorted(guests) == [f"g{i}" for i in range(1, GUESTS + 1)]
    addresses = {g["ip"] for g in guests.values()} | {"10.198.101.114"}
    for name, g in guests.items():
        assert g["state"] == "ready", (name, g["reason"], g["console_tail"])
        assert g["mesh"] == dict.fromkeys(sorted(addresses - {g["ip"]}), True), g
        assert lab.host_ping(g["ip"])


def test_no_more_guests_booted_at_once_than_the_host_has_cores(lab):
    """Each qemu ran (boot_slot) only while fewer than a core per guest were
    between their own slot and their login prompt."""
    stages = [g["stages"] for g in lab.guests().values()]
    cores = os.cpu_count() or 1
    for s in stages:
        booting = [o for o in stages if o["boot_slot"] <= s["boot_slot"] < o["login_prompt"]]
        assert len(booting) <= cores, stages
    if GUESTS > cores:
        assert max(s["boot_slot"] for s in stages) > min(s["login_prompt"] for s in stages), \
            "with more guests than cores, some waited for a slot"


def test_each_guest_was_configured_once_through_its_agent(lab):
    """The configuration ran once per guest, through the agent, and NetworkManager
    started the profile once: no second activation took the address away."""
    started = "journalctl -b -u NetworkManager --no-pager | grep -c \"Activation: starting connection 'bridgelab-\""
    for name in lab.guests():
        r = lab.api.post(f"/guests/{name}/exec", json={"argv": ["sh", "-c", started]})
        assert r.status_code == 200, r.text
        assert (r.json()["exit_code"], r.json()["output"].strip(), r.json()["via"]) == (0, "1", "agent"), name
