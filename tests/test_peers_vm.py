"""Real riscv64 guests on two "hosts" (network namespaces on one underlay),
each host running its own `bridgelab serve` with the other as its peer:
one L2 across hosts, checked from inside the guests; a third host whose
guest clashes is refused before it boots; a stopped host is named as the
underlay. Host-side checks use iproute2, not bridgelab's own code.

The underlay carries 1500 bytes, so the guests get MTU 1450 through their
own NetworkManager. (The 1472-byte DF ping on an underlay that carries
1550 is in test_peers.py, between namespace guests.)
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from typing import Any, Iterator

import httpx
import pytest
from bridgelab.model import image_build

from .labrun import RunningLab, running_lab
from .test_peers import UNDERLAY, Underlay, state_of, underlay

pytestmark = pytest.mark.vm

SUBNET = "10.198.60"
TOKEN = "peer-test-token-0123456789"


def lab_for(u: Underlay, i: int, guest: str, ip: str, peers: list[str]) -> dict[str, Any]:
    return {"name": "peervm", "bridge": {"name": "br0", "address": f"{SUBNET}.{250 + i}/24"},
            "peers": peers, "warm_start": False,
            "guests": [{"name": guest, "arch": "riscv64", "image": "debian-riscv64", "ip": ip, "memory": "512M"}]}


def exec_in(lab: RunningLab, guest: str, *argv: str) -> dict[str, Any]:
    r = lab.api.post(f"/guests/{guest}/exec", json={"argv": list(argv), "timeout": 60},
                     headers={"Authorization": f"Bearer {TOKEN}"})
    r.raise_for_status()
    return r.json()


def mesh(lab: RunningLab) -> dict[str, dict[str, Any]]:
    r = lab.api.post("/mesh", headers={"Authorization": f"Bearer {TOKEN}"})
    r.raise_for_status()
    return {f"{p['source']}->{p['target']}": p for p in r.json()["pairs"]}


def http_status(ns: str, url: str, token: str | None) -> int:
    """GET from inside a namespace (the underlay is not reachable from the test's own)."""
    code = ("import sys,urllib.request,urllib.error\n"
            "h={'Authorization':'Bearer '+sys.argv[2]} if sys.argv[2] else {}\n"
            "r=urllib.request.Request(sys.argv[1],headers=h)\n"
            "try: print(urllib.request.urlopen(r,timeout=5).status)\n"
            "except urllib.error.HTTPError as e: print(e.code)")
    out = subprocess.run(["ip", "netns", "exec", ns, sys.executable, "-c", code, url, token or ""],
                         capture_output=True, text=True, check=True).stdout
    return int(out.strip())


class Hosts:
    def __init__(self, u: Underlay, labs: list[RunningLab], stack: contextlib.ExitStack):
        self.u, self.labs, self.stack = u, labs, stack


@pytest.fixture(scope="module")
def hosts(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Hosts]:
    if os.geteuid() != 0:
        pytest.fail("VM tests need root")
    image_build.build_image("debian-riscv64")  # a no-op when the cache already has it
    env = pytest.MonkeyPatch()
    env.setenv("BRIDGELAB_TOKEN", TOKEN)  # one token on every peer, as docs/peers.md says
    try:
        with underlay(1500, count=2) as u, contextlib.ExitStack() as stack:
            before = {ns: state_of(ns) for ns in (*u.hosts, u.outsider)}
            labs = []
            for i, ns in enumerate(u.hosts):
                tmp = tmp_path_factory.mktemp(f"peer-h{i + 1}")
                spec = lab_for(u, i, f"rv{i + 1}", f"{SUBNET}.{i + 1}", [u.address(1 - i)])
                labs.append(stack.enter_context(running_lab(tmp, spec, "", ns=ns, settle=False)))
            for lab in labs:
                _wait(lab, lambda g: g["state"] in ("ready", "failed"))
            yield Hosts(u, labs, stack)
            stack.close()
            assert {ns: state_of(ns) for ns in (*u.hosts, u.outsider)} == before, "every host as it was found"
    finally:
        env.undo()


def _wait(lab: RunningLab, done: Any, timeout: float = 900) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert lab.proc.poll() is None, lab.log.read_text()[-4000:]
        try:
            guests = lab.guests()
        except httpx.TransportError:  # not listening yet
            guests = {}
        if guests and all(done(g) for g in guests.values()):
            return guests
        time.sleep(1)
    pytest.fail(f"not settled in {timeout}s:\n{lab.log.read_text()[-4000:]}")


def test_guests_on_two_hosts_are_ready_and_one_l2(hosts):
    h1, h2 = hosts.labs
    assert h1.guests()["rv1"]["state"] == "ready", h1.log.read_text()[-3000:]
    assert h2.guests()["rv2"]["state"] == "ready", h2.log.read_text()[-3000:]
    # A peer's guests are as it last declared them (asked every 10 s): rv2 may still show as on its way.
    deadline = time.monotonic() + 30
    while True:
        peers = h1.api.get("/peers").raise_for_status().json()
        assert [(p["address"], p["state"], p["clashes"]) for p in peers] == [(hosts.u.address(1), "up", [])]
        declared = [(g["name"], g["state"]) for g in peers[0]["declaration"]["guests"]]
        if declared == [("rv2", "ready")] or time.monotonic() > deadline:
            break
        time.sleep(1)
    assert declared == [("rv2", "ready")]
    cli = h1.cli("peers")
    assert cli.returncode == 0 and f"rv2 {SUBNET}.2 (ready)" in cli.stdout, cli.stdout + cli.stderr
    pairs = mesh(h1)
    assert pairs[f"rv1->rv2@{hosts.u.address(1)}"]["ok"], pairs
    assert pairs[f"rv1->bridge@{hosts.u.address(1)}"]["ok"], pairs
    # The peers' door on the underlay serves GET /peering with the token, and nothing else.
    door = f"http://{hosts.u.address(0)}:8700"
    assert http_status(hosts.u.hosts[1], f"{door}/peering", TOKEN) == 200
    assert http_status(hosts.u.hosts[1], f"{door}/peering", None) == 401
    assert http_status(hosts.u.hosts[1], f"{door}/guests", TOKEN) == 404
    # The guests' MTU leaves VXLAN its 50 bytes: a 1450-byte packet crosses
    # with DF set, one byte more does not leave the guest.
    mac = h1.guests()["rv1"]["mac"]
    mtu = exec_in(h1, "rv1", "sh", "-c", 'for d in /sys/class/net/*; do [ "$(cat $d/address)" = "$1" ] && '
                                      'cat $d/mtu; done', "mtu", mac)
    assert mtu["output"].strip() == "1450", mtu
    r = exec_in(h1, "rv1", "ping", "-n", "-c", "1", "-W", "5", "-M", "do", "-s", "1422", f"{SUBNET}.2")
    assert r["exit_code"] == 0, r
    r = exec_in(h1, "rv1", "ping", "-n", "-c", "1", "-W", "5", "-M", "do", "-s", "1423", f"{SUBNET}.2")
    assert r["exit_code"] != 0, r


def test_a_host_whose_guest_clashes_is_refused_before_it_boots(hosts, tmp_path):
    u = hosts.u
    spec = lab_for(u, 3, "rv9", f"{SUBNET}.1", [u.address(0), u.address(1)])  # rv1's address on host 1
    with running_lab(tmp_path, spec, "", ns=u.outsider, settle=False) as h3:
        guest = _wait(h3, lambda g: g["state"] == "failed", timeout=60)["rv9"]
    assert f"guest rv9 on this host ({UNDERLAY}.9) and guest rv1 on peer {u.address(0)} share the address " \
           f"{SUBNET}.1" in guest["reason"], guest
    assert "qemu_started" not in guest["timestamps"], "refused before its qemu started"
    assert hosts.labs[0].guests()["rv1"]["state"] == "ready"


def test_with_one_host_stopped_the_other_stays_ready_and_the_mesh_names_the_underlay(hosts):
    h1, h2 = hosts.labs
    h2.stop()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if h1.api.get("/peers").json()[0]["state"] == "unreachable":
            break
        time.sleep(1)
    assert h1.guests()["rv1"]["state"] == "ready"
    cli = h1.cli("peers")
    assert cli.returncode == 1 and "unreachable" in cli.stdout, cli.stdout + cli.stderr
    pairs = mesh(h1)
    lost = pairs[f"rv1->rv2@{hosts.u.address(1)}"]
    assert (lost["ok"], lost["diagnosis"]) == (False, "underlay"), lost
    assert f"peer {hosts.u.address(1)}" in lost["detail"]
    assert pairs["rv1->bridge"]["ok"], "the local bridge still answers"
