"""Uplinks with real riscv64 guests: `bridgelab serve` runs in a "host" netns
whose uplink veth leads to a "lan" netns (router 10.77.0.1, LAN host
10.77.0.50). Never the machine's real NIC, never an outside address.

Two labs boot side by side, each behind a Docker-like firewall (FORWARD
policy DROP, DOCKER-USER, br_netfilter where the kernel has it):
  nat    one guest with a user-mode ssh NIC; the hostile rules are in the
         legacy backend and bridgelab must find that on its own;
  proxy  two guests on the LAN's subnet; the hostile rules are in nft and
         the lab file names the backend.
The last test of each lab stops it and checks that iptables-save, the
sysctls and the routes are exactly as before.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Mapping

import httpx
import pytest
import yaml
from bridgelab.host import firewall
from bridgelab.model import image_build

from .conftest import netns, stop_process
from .test_uplink import HOST_UP, LAN_HOST, LAN_ROUTER, host_state, hostile_firewall, ping, seen_source, sh
from .labrun import RunningLab, wait_settled

pytestmark = pytest.mark.vm

NAT_LAB = {"name": "upnat", "bridge": {"name": "br0", "address": "10.198.102.254/24"},
           "uplink": {"mode": "auto", "target": LAN_HOST},
           "guests": [{"name": "n1", "image": "debian-riscv64", "ip": "10.198.102.1", "user_nic": True}]}
PROXY_LAB = {"name": "upproxy", "bridge": {"name": "br0"},
             "uplink": {"mode": "auto", "lan_reachable": True, "target": LAN_HOST},
             "firewall": {"backend": "nft"},
             "guests": [{"name": "p1", "image": "debian-riscv64", "ip": "10.77.0.201"},
                        {"name": "p2", "image": "debian-riscv64", "ip": "10.77.0.202"}]}


@dataclass
class UplinkLab:
    lab: RunningLab
    lan: str
    before: dict[str, object]

    def exec(self, guest: str, *argv: str, timeout: float = 60) -> dict[str, object]:
        r = self.lab.api.post(f"/guests/{guest}/exec", json={"argv": list(argv), "timeout": timeout})
        return r.raise_for_status().json()

    def stop(self) -> None:
        if self.lab.proc.poll() is None:
            stop_process(self.lab.proc, 120)
            assert self.lab.proc.returncode == 0, self.lab.log.read_text()[-3000:]


def _start(stack: contextlib.ExitStack[Any], tmp: Path, spec: Mapping[str, Any], hostile_backend: str) -> UplinkLab:
    """Everything made is handed to `stack` as soon as it exists, so a setup
    that fails halfway still removes it."""
    tmp.mkdir(parents=True, exist_ok=True)
    host, lan = stack.enter_context(netns("bluv-h")), stack.enter_context(netns("bluv-l"))
    subprocess.run(["ip", "-n", host, "link", "add", "up0", "type", "veth", "peer", "name", "eth0", "netns", lan],
                   check=True)
    for a in (f"{LAN_ROUTER}/24", f"{LAN_HOST}/24"):
        subprocess.run(["ip", "-n", lan, "addr", "add", a, "dev", "eth0"], check=True)
    subprocess.run(["ip", "-n", lan, "link", "set", "eth0", "up"], check=True)
    subprocess.run(["ip", "-n", host, "addr", "add", f"{HOST_UP}/24", "dev", "up0"], check=True)
    subprocess.run(["ip", "-n", host, "link", "set", "up0", "up"], check=True)
    subprocess.run(["ip", "-n", host, "route", "add", "default", "via", LAN_ROUTER], check=True)
    hostile_firewall(host, f"iptables-{hostile_backend}")
    sh(host, "sysctl", "-q", "-w", "net.ipv4.ip_forward=0")  # a host bridgelab must switch forwarding on
    before = host_state(host)
    lab_file = tmp / "lab.yaml"
    lab_file.write_text(yaml.safe_dump(spec))
    sock, log = tmp / "api.sock", tmp / "serve.log"
    argv = ["ip", "netns", "exec", host, sys.executable, "-m", "bridgelab.cli", "serve",
            "--lab", str(lab_file), "--listen", f"unix:{sock}", "--state-dir", str(tmp / "s")]
    env = {k: v for k, v in os.environ.items() if k != "BRIDGELAB_IPTABLES"}
    with open(log, "wb") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=env)
    stack.callback(stop_process, proc, 120)
    api = stack.enter_context(httpx.Client(transport=httpx.HTTPTransport(uds=str(sock)), base_url="http://bridgelab",
                                           timeout=600))
    return UplinkLab(RunningLab(host, proc, api, tmp / "s", log, argv), lan, before)


@pytest.fixture(scope="module")
def labs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, UplinkLab]]:
    image_build.build_image("debian-riscv64")
    with contextlib.ExitStack() as stack:
        # Both labs boot at once: the suite's time is the slower one's, not the sum.
        started = {"nat": _start(stack, tmp_path_factory.mktemp("upnat"), NAT_LAB, "legacy"),
                   "proxy": _start(stack, tmp_path_factory.mktemp("upproxy"), PROXY_LAB, "nft")}
        for u in started.values():
            wait_settled(u.lab)
        yield started


def _ready(u: UplinkLab) -> dict[str, dict[str, object]]:
    g = u.lab.guests()
    assert all(x["state"] == "ready" for x in g.values()), {k: (v["state"], v["reason"]) for k, v in g.items()}
    return g


# ---------------------------------------------------------------- nat


def test_auto_picks_nat_on_a_wired_uplink_and_says_why(labs):
    up = labs["nat"].lab.api.get("/healthz").json()["uplink"]
    assert (up["mode"], up["interface"], up["target"]) == ("nat", "up0", LAN_HOST)
    assert "wired" in up["reason"] and "default route" in up["reason"]
    assert "legacy" in labs["nat"].lab.log.read_text().split("iptables backend:", 1)[1].splitlines()[0]


def test_nat_guest_reaches_the_lan_as_the_host(labs):
    u = labs["nat"]
    _ready(u)
    src = seen_source(u.lan, lambda: u.exec("n1", "ping", "-n", "-c", "1", "-w", "5", LAN_HOST)["exit_code"] == 0,
                      LAN_HOST)
    assert src == HOST_UP


def test_user_nic_forwards_ssh_and_never_takes_the_default_route(labs, tmp_path):
    u = labs["nat"]
    g = _ready(u)["n1"]
    host, port = str(g["ssh"]).split(":")
    assert host == "127.0.0.1"
    banner = sh(u.lab.ns, sys.executable, "-c",
                f"import socket;s=socket.create_connection(('127.0.0.1',{port}),30);s.settimeout(60);"
                "print(s.recv(64).decode(errors='replace'))").stdout
    assert banner.startswith("SSH-2.0-OpenSSH"), banner
    # docs/uplinks.md's way in: a key installed through exec (argv, no shell on
    # the host side), then a real ssh login through the forward.
    key = tmp_path / "id"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    install = u.exec("n1", "sh", "-c", 'mkdir -p ~/.ssh && printf "%s\\n" "$1" >> ~/.ssh/authorized_keys', "sh",
                     (tmp_path / "id.pub").read_text().strip())
    assert install["exit_code"] == 0, install
    login = sh(u.lab.ns, "ssh", "-i", str(key), "-p", port, "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=no",
               "-o", "UserKnownHostsFile=/dev/null", "-o", "ConnectTimeout=60", "root@127.0.0.1", "hostname",
               check=False)
    assert login.returncode == 0 and login.stdout.strip(), login.stderr
    # `bridgelab inventory` writes what that took by hand: ssh -F FILE NAME.
    config = tmp_path / "ssh_config"
    config.write_text(u.lab.cli("inventory", "--format", "ssh-config").stdout)
    by_name = sh(u.lab.ns, "ssh", "-F", str(config), "-i", str(key), "-o", "BatchMode=yes", "n1", "hostname",
                 check=False)
    assert by_name.returncode == 0 and by_name.stdout == login.stdout, by_name.stderr + config.read_text()
    defaults = str(u.exec("n1", "ip", "-4", "route", "show", "default")["output"]).strip().splitlines()
    assert defaults and all("via 10.198.102.254" in line for line in defaults), defaults
    addrs = u.exec("n1", "ip", "-4", "-o", "addr")["output"]
    assert "10.0.2.15/24" in str(addrs), addrs  # the user NIC did get its DHCP address


def test_mesh_self_test_reports_the_uplink(labs):
    report = labs["nat"].lab.api.post("/mesh").json()
    assert report["ok"], report
    assert [(p["source"], p["target"], p["layer"]) for p in report["uplink"]] == [("n1", LAN_HOST, "ok")]
    cli = labs["nat"].lab.cli("mesh")
    assert cli.returncode == 0 and ["ok", "n1", "uplink", LAN_HOST, "ok"] in [
        line.split() for line in cli.stdout.splitlines()], cli.stdout


def test_self_test_names_nat_when_masquerade_is_gone(labs):
    u = labs["nat"]
    chain = firewall.chain_prefix("upnat") + "NAT"
    saved = sh(u.lab.ns, "iptables-legacy", "-w", "-t", "nat", "-S", chain).stdout.splitlines()
    rule = next(line for line in saved if "MASQUERADE" in line)
    sh(u.lab.ns, "iptables-legacy", "-w", "-t", "nat", "-F", chain)
    try:
        probe = u.lab.api.post("/mesh").json()["uplink"][0]
        assert (probe["ok"], probe["layer"]) == (False, "nat_route") and "MASQUERADE" in probe["detail"], probe
    finally:
        sh(u.lab.ns, "iptables-legacy", "-w", "-t", "nat", *__import__("shlex").split(rule))


def test_nat_lab_stops_and_leaves_the_host_as_found(labs):
    u = labs["nat"]
    u.stop()
    assert host_state(u.lab.ns) == u.before


# ---------------------------------------------------------------- proxy-arp


def test_auto_picks_proxy_arp_when_the_lab_wants_lan_reachable_guests(labs):
    up = labs["proxy"].lab.api.get("/healthz").json()["uplink"]
    assert up["mode"] == "proxy-arp" and "lan_reachable" in up["reason"]
    g = _ready(labs["proxy"])
    assert (g["p1"]["ip"], g["p1"]["prefix"], g["p1"]["gateway"]) == ("10.77.0.201", 24, LAN_ROUTER)


def test_lan_host_and_proxy_arp_guests_reach_each_other_directly(labs):
    u = labs["proxy"]
    _ready(u)
    assert "master" not in sh(u.lab.ns, "ip", "link", "show", "up0").stdout  # not a bridge port, as on Wi-Fi
    assert ping(u.lan, "10.77.0.201", source=LAN_HOST) and ping(u.lan, "10.77.0.202", source=LAN_HOST)
    src = seen_source(u.lan, lambda: u.exec("p2", "ping", "-n", "-c", "1", "-w", "5", LAN_HOST)["exit_code"] == 0,
                      LAN_HOST)
    assert src == "10.77.0.202", "no NAT: the LAN sees the guest's own address"
    report = u.lab.api.post("/mesh").json()
    assert report["ok"], report  # guest<->guest across the DROP policy, and both to the LAN host
    assert {p["layer"] for p in report["uplink"]} == {"ok"}


def test_self_test_names_netfilter_when_another_table_drops(labs):
    """firewalld's way: its own nftables table with a forward hook. An
    ACCEPT in iptables is not final there."""
    u = labs["proxy"]
    sh(u.lab.ns, "nft", "add table inet blfwtest")
    sh(u.lab.ns, "nft", "add chain inet blfwtest blfwd { type filter hook forward priority 10 ; policy drop ; }")
    try:
        probes = u.lab.api.post("/mesh").json()["uplink"]
        assert [p["layer"] for p in probes] == ["netfilter", "netfilter"], probes
    finally:
        sh(u.lab.ns, "nft", "delete table inet blfwtest")


def test_proxy_lab_stops_and_restores_sysctls_routes_and_rules(labs):
    u = labs["proxy"]
    u.stop()
    assert host_state(u.lab.ns) == u.before
