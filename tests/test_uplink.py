"""Uplink plumbing on real kernel objects: NAT and proxy-ARP, both iptables
backends, under a hostile (Docker-like) firewall, with exact restoration.

The topology, all in throwaway namespaces (never the machine's real NIC):

    guest netns g1, g2 --veth-- [bridge in "host" netns] --up0 veth-- "lan" netns
                                                                    10.77.0.1 (router)
                                                                    10.77.0.50 (LAN host)

Guests here are network namespaces behind veths: the host side (bridge,
rules, sysctls, routes) is what is under test, and it cannot tell them from
taps. The same modes with real riscv64 guests are in test_uplink_vm.py.
"""

from __future__ import annotations

import contextlib
import ipaddress
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import pytest
from bridgelab.host import firewall, links, undo, uplink
from bridgelab.host.ledger import Ledger
from bridgelab.model.plan import HostFacts, LabPlan, make_plan
from bridgelab.model.spec import parse_lab_data
from pyroute2 import netns as pr_netns

from .conftest import delete_netns, junk_image, make_netns, netns
from .test_plan import image

pytestmark = pytest.mark.netns

LAN_ROUTER, LAN_HOST, HOST_UP = "10.77.0.1", "10.77.0.50", "10.77.0.10"


def sh(ns: str, *cmd: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", "netns", "exec", ns, *cmd], capture_output=True, text=True, check=check)


@dataclass
class Topology:
    host: str
    lan: str
    guests: list[str] = field(default_factory=list)


@pytest.fixture
def topo() -> Iterator[Topology]:
    with contextlib.ExitStack() as stack:
        t = Topology(host=stack.enter_context(netns("blu-h")), lan=stack.enter_context(netns("blu-l")))
        stack.callback(lambda: list(map(delete_netns, t.guests)))
        subprocess.run(["ip", "-n", t.host, "link", "add", "up0", "type", "veth", "peer", "name", "eth0",
                        "netns", t.lan], check=True)
        for a in (f"{LAN_ROUTER}/24", f"{LAN_HOST}/24"):
            subprocess.run(["ip", "-n", t.lan, "addr", "add", a, "dev", "eth0"], check=True)
        subprocess.run(["ip", "-n", t.lan, "link", "set", "eth0", "up"], check=True)
        subprocess.run(["ip", "-n", t.host, "addr", "add", f"{HOST_UP}/24", "dev", "up0"], check=True)
        subprocess.run(["ip", "-n", t.host, "link", "set", "up0", "up"], check=True)
        subprocess.run(["ip", "-n", t.host, "route", "add", "default", "via", LAN_ROUTER], check=True)
        yield t


def add_guest(t: Topology, i: int, addr: str, gateway: str, bridge: str = "br0") -> str:
    g = make_netns(f"blu-g{i}")
    t.guests.append(g)
    subprocess.run(["ip", "-n", t.host, "link", "add", f"vg{i}", "type", "veth", "peer", "name", "eth0",
                    "netns", g], check=True)
    subprocess.run(["ip", "-n", t.host, "link", "set", f"vg{i}", "master", bridge, "up"], check=True)
    subprocess.run(["ip", "-n", g, "addr", "add", addr, "dev", "eth0"], check=True)
    subprocess.run(["ip", "-n", g, "link", "set", "eth0", "up"], check=True)
    subprocess.run(["ip", "-n", g, "route", "add", "default", "via", gateway], check=True)
    return g


def hostile_firewall(ns: str, ipt: str) -> None:
    """What Docker leaves: FORWARD policy DROP, FORWARD jumping to DOCKER-USER
    first, and its own NAT chain."""
    sh(ns, ipt, "-w", "-P", "FORWARD", "DROP")
    sh(ns, ipt, "-w", "-N", "DOCKER-USER")
    sh(ns, ipt, "-w", "-A", "DOCKER-USER", "-j", "RETURN")
    sh(ns, ipt, "-w", "-A", "FORWARD", "-j", "DOCKER-USER")
    sh(ns, ipt, "-w", "-t", "nat", "-N", "DOCKER")
    sh(ns, ipt, "-w", "-t", "nat", "-A", "POSTROUTING", "-s", "172.17.0.0/16", "!", "-o", "docker0",
       "-j", "MASQUERADE")


def host_state(ns: str) -> dict[str, object]:
    """Everything teardown must restore, read with the system's tools."""
    saves = {b: firewall.normalize_save(sh(ns, f"iptables-{b}-save", check=False).stdout)
             for b in ("nft", "legacy")}
    sysctls = {k: sh(ns, "sysctl", "-n", k).stdout.strip()
               for k in ("net.ipv4.ip_forward", "net.ipv4.conf.up0.proxy_arp", "net.ipv4.conf.up0.forwarding")}
    routes = sh(ns, "ip", "-4", "route", "show", "table", "all").stdout
    return {"iptables": saves, "sysctls": sysctls, "routes": routes}


def ping(ns: str, target: str, source: str | None = None) -> bool:
    src = ["-I", source] if source else []
    return sh(ns, "ping", "-n", "-c", "1", "-w", "3", *src, target, check=False).returncode == 0


def seen_source(lan: str, sender: str | Callable[[], bool], target: str) -> str:
    """The source address of an ICMP echo request as the LAN sees it: a raw
    socket in the lan netns, while `sender` (a netns, or a function that
    sends the ping) pings `target`."""
    listener = subprocess.Popen(
        ["ip", "netns", "exec", lan, sys.executable, "-c",
         "import socket;s=socket.socket(socket.AF_INET,socket.SOCK_RAW,socket.IPPROTO_ICMP);s.settimeout(10)\n"
         "while True:\n"
         " d,a=s.recvfrom(2048)\n"
         " if d[20]==8: print(a[0],flush=True);break"],
        stdout=subprocess.PIPE, text=True)
    try:
        time.sleep(0.3)  # the socket is open before the echo leaves
        assert sender() if callable(sender) else ping(sender, target)
        out, _ = listener.communicate(timeout=10)
        return out.strip()
    finally:
        if listener.poll() is None:
            listener.kill()
            listener.wait()


class Lab:
    """bridgelab's host side for one plan, run inside the host netns."""

    def __init__(self, t: Topology, plan: LabPlan, state: Path):
        self.t, self.plan = t, plan
        self.ledger = Ledger(state / "ledger.json")

    def up(self) -> firewall.Ruleset:
        pr_netns.pushns(self.t.host)
        try:
            net = links.HostNet(self.ledger, "bridgelab test")
            try:
                links.apply(net, self.plan.bridge, self.plan.bridge_address, self.plan.bridge_mac, [])
            finally:
                net.close()
            rs = firewall.apply(self.ledger, self.plan)
            uplink.apply(self.ledger, self.plan)
            return rs
        finally:
            pr_netns.popns()

    def down(self) -> None:
        pr_netns.pushns(self.t.host)
        try:
            undo.undo_recorded(self.ledger)
        finally:
            pr_netns.popns()


def plan_in(t: Topology, lab: dict[str, object], state: Path) -> LabPlan:
    spec = parse_lab_data(lab)
    pr_netns.pushns(t.host)
    try:
        facts = uplink.detect(spec.uplink.interface) if spec.uplink.mode.value != "none" else None
    finally:
        pr_netns.popns()
    return make_plan(spec, {g.image: image(g.arch) for g in spec.guests},
                     HostFacts(arch="x86_64", kvm=False, uplink=facts), state)


def nat_lab(**uplink_extra: object) -> dict[str, object]:
    return {"name": "upt", "bridge": {"name": "br0", "address": "10.198.101.254/24"},
            "uplink": {"mode": "nat", **uplink_extra},
            "guests": [{"name": "a", "image": "i", "ip": "10.198.101.1"},
                       {"name": "b", "image": "i", "ip": "10.198.101.2"}]}


def proxy_lab() -> dict[str, object]:
    return {"name": "upt", "bridge": {"name": "br0"}, "uplink": {"mode": "proxy-arp", "interface": "up0"},
            "guests": [{"name": "a", "image": "i", "ip": "10.77.0.201"},
                       {"name": "b", "image": "i", "ip": "10.77.0.202"}]}


def br_netfilter_on(ns: str) -> bool:
    return sh(ns, "cat", str(firewall.BRIDGE_NF), check=False).stdout.strip() == "1"


@pytest.mark.parametrize("backend", ["nft", "legacy"])
def test_nat_under_a_hostile_firewall(topo, tmp_path, backend, monkeypatch):
    monkeypatch.delenv("BRIDGELAB_IPTABLES", raising=False)
    ipt = f"iptables-{backend}"
    hostile_firewall(topo.host, ipt)
    sh(topo.host, "sysctl", "-q", "-w", "net.ipv4.ip_forward=0")  # as on a host without Docker: ours to change
    before = host_state(topo.host)
    plan = plan_in(topo, nat_lab(), tmp_path)  # the interface is detected from the default route
    assert plan.uplink is not None and plan.uplink.interface == "up0" and "default route" in plan.uplink.reason
    assert plan.uplink.target == ipaddress.IPv4Address(LAN_ROUTER)
    lab = Lab(topo, plan, tmp_path)
    rs = lab.up()
    try:
        assert rs.cmd == ipt, "rules must go where the host's DROP lives"
        g1 = add_guest(topo, 1, "10.198.101.1/24", "10.198.101.254")
        g2 = add_guest(topo, 2, "10.198.101.2/24", "10.198.101.254")
        assert seen_source(topo.lan, g1, LAN_HOST) == HOST_UP, "the LAN must see the host's uplink address"
        assert ping(g2, LAN_HOST)
        if br_netfilter_on(topo.host):
            assert ping(g1, "10.198.101.2"), "bridged guest<->guest through FORWARD DROP"
        # Our jump sits in DOCKER-USER, and the policy is still DROP.
        save = sh(topo.host, f"{ipt}-save").stdout
        assert ":FORWARD DROP" in save
        assert f'-A DOCKER-USER -m comment --comment "bridgelab lab=upt" -j {firewall.chain_prefix("upt")}FWD' \
            in save
        # Applying again (a restart) replaces, never duplicates.
        lab.up()
        assert sh(topo.host, f"{ipt}-save").stdout.count("lab=upt\" -j MASQUERADE") == 1
    finally:
        lab.down()
    assert host_state(topo.host) == before


@pytest.mark.parametrize("backend", ["nft", "legacy"])
def test_proxy_arp_puts_guests_on_the_lan(topo, tmp_path, backend, monkeypatch):
    monkeypatch.setenv("BRIDGELAB_IPTABLES", backend)
    hostile_firewall(topo.host, f"iptables-{backend}")
    sh(topo.host, "sysctl", "-q", "-w", "net.ipv4.ip_forward=0")
    before = host_state(topo.host)
    plan = plan_in(topo, proxy_lab(), tmp_path)
    assert plan.bridge_address is None and str(plan.host_address) == f"{HOST_UP}/24"
    assert all(g.gateway == ipaddress.IPv4Address(LAN_ROUTER) for g in plan.guests)
    lab = Lab(topo, plan, tmp_path)
    lab.up()
    try:
        # The uplink is a plain veth, not a bridge port: as on Wi-Fi.
        assert "master" not in sh(topo.host, "ip", "link", "show", "up0").stdout
        g1 = add_guest(topo, 1, "10.77.0.201/24", LAN_ROUTER)
        g2 = add_guest(topo, 2, "10.77.0.202/24", LAN_ROUTER)
        assert ping(topo.lan, "10.77.0.201", source=LAN_HOST), "a LAN host reaches a guest directly"
        assert seen_source(topo.lan, g2, LAN_HOST) == "10.77.0.202", "no NAT: the LAN sees the guest itself"
        assert ping(g1, HOST_UP), "the guest reaches the host at its LAN address"
        if br_netfilter_on(topo.host):
            assert ping(g1, "10.77.0.202")
        assert sh(topo.host, "sysctl", "-n", "net.ipv4.conf.up0.proxy_arp").stdout.strip() == "1"
        assert "10.77.0.201 dev br0" in sh(topo.host, "ip", "-4", "route").stdout
    finally:
        lab.down()
    assert host_state(topo.host) == before


def test_nat_on_a_host_without_rules_leaves_iptables_save_empty(topo, tmp_path, monkeypatch):
    """iptables-nft creates the nat table on first use; bridgelab deletes it
    again when it brought it in and it is empty. (With the legacy backend a
    table is a kernel module that stays loaded: not undoable, so not tested.)"""
    monkeypatch.setenv("BRIDGELAB_IPTABLES", "nft")
    before = host_state(topo.host)
    assert before["iptables"] == {"nft": [], "legacy": []}
    lab = Lab(topo, plan_in(topo, nat_lab(interface="up0"), tmp_path), tmp_path)
    lab.up()
    try:
        g1 = add_guest(topo, 1, "10.198.101.1/24", "10.198.101.254")
        assert seen_source(topo.lan, g1, LAN_HOST) == HOST_UP
    finally:
        lab.down()
    assert host_state(topo.host) == before


def test_a_killed_runs_rules_are_swept_at_the_next_start_even_without_its_ledger(topo, tmp_path, monkeypatch):
    """The killed run wrote to legacy; its state volume is lost; the next run
    uses nft. Starting must clear the old copy from legacy (found by tag) and
    install exactly one copy in nft; stopping then leaves no trace of ours."""
    plan = plan_in(topo, nat_lab(interface="up0"), tmp_path)
    monkeypatch.setenv("BRIDGELAB_IPTABLES", "legacy")
    Lab(topo, plan, tmp_path).up()
    assert "lab=upt" in sh(topo.host, "iptables-legacy-save").stdout
    (tmp_path / "ledger.json").unlink()  # the state volume was lost with the container
    # Without the ledger the bridge is no longer provably ours: bridgelab
    # refuses to adopt it, so the admin removes it (docs/appliance.md, "how to undo").
    sh(topo.host, "ip", "link", "del", "br0")
    monkeypatch.setenv("BRIDGELAB_IPTABLES", "nft")
    again = Lab(topo, plan, tmp_path)
    assert again.up().cmd == "iptables-nft"
    assert "lab=upt" not in sh(topo.host, "iptables-legacy-save").stdout
    assert sh(topo.host, "iptables-nft-save").stdout.count('lab=upt" -j BL-') == 2  # FWD and NAT jumps, once each
    again.down()
    for backend in ("nft", "legacy"):
        save = sh(topo.host, f"iptables-{backend}-save").stdout
        assert "bridgelab" not in save and "BL-" not in save
    pr_netns.pushns(topo.host)
    try:
        assert not firewall.remove_lab("upt")  # nothing left anywhere
    finally:
        pr_netns.popns()


def test_sysctl_changed_by_someone_else_is_left_alone(topo, tmp_path):
    pr_netns.pushns(topo.host)
    try:
        ledger = Ledger(tmp_path / "ledger.json")
        # A new netns inherits the host's ip_forward: start from a known 0 (ours to change).
        Path("/proc/sys/net/ipv4/ip_forward").write_text("0\n")
        assert uplink.set_sysctl(ledger, uplink.IP_FORWARD, "1")
        assert not uplink.set_sysctl(ledger, "net/ipv4/conf/up0/forwarding", "1")  # ip_forward did it: no record
        assert uplink.restore_sysctls(ledger) == ["net.ipv4.ip_forward=0"]
        # A new netns inherits the host's ip_forward: start from a known 0 (ours to change).
        Path("/proc/sys/net/ipv4/ip_forward").write_text("0\n")
        assert uplink.set_sysctl(ledger, "net/ipv4/conf/up0/proxy_arp", "1")
        Path("/proc/sys/net/ipv4/conf/up0/proxy_arp").write_text("0\n")  # an admin changed it after us
        assert uplink.restore_sysctls(ledger) == []
        assert uplink.read_sysctl("net/ipv4/conf/up0/proxy_arp") == "0" and not ledger.entries
    finally:
        pr_netns.popns()


def test_uplink_detection_and_errors(topo):
    pr_netns.pushns(topo.host)
    try:
        facts = uplink.detect(None)
        assert (facts.interface, str(facts.address), str(facts.gateway), facts.wireless, facts.detected) == \
            ("up0", f"{HOST_UP}/24", LAN_ROUTER, False, True)
        assert uplink.detect("up0").detected is False
        with pytest.raises(Exception, match="does not exist"):
            uplink.detect("nosuch0")
        subprocess.run(["ip", "-n", topo.host, "route", "del", "default"], check=True)
        with pytest.raises(Exception, match="no IPv4 default route"):
            uplink.detect(None)
    finally:
        pr_netns.popns()


def test_cli_reports_the_auto_choice_and_refuses_a_missing_uplink(topo, tmp_path):
    img = junk_image(tmp_path)
    lab = tmp_path / "lab.yaml"
    cli = [sys.executable, "-m", "bridgelab.cli"]
    lab.write_text(f"name: t\nbridge: {{address: 10.198.101.114/24}}\nuplink: {{mode: auto}}\n"
                   f"guests:\n  - {{name: a, image: {img}, user_nic: {{ssh_port: 2222}}}}\n")
    shown = sh(topo.host, *cli, "validate", "--lab", str(lab))
    assert "uplink: nat via up0 (auto: up0 (the default route's interface) is wired" in shown.stdout
    header, row = shown.stdout.splitlines()[-2:]
    assert dict(zip(header.split(), row.split(), strict=True)) | {"MAC": "-", "TAP": "-"} == {
        "NAME": "a", "ARCH": "riscv64", "ACCEL": "tcg", "IP": "10.198.101.1/24", "GATEWAY": "10.198.101.114",
        "MAC": "-", "TAP": "-", "IMAGE": "junk", "SSH": "127.0.0.1:2222"}, shown.stdout
    lab.write_text(f"name: t\nbridge: {{address: 10.198.101.114/24}}\nuplink: {{mode: nat, interface: wlan9}}\n"
                   f"guests:\n  - {{name: a, image: {img}}}\n")
    served = sh(topo.host, *cli, "serve", "--lab", str(lab), "--state-dir", str(tmp_path / "s"),
                "--listen", f"unix:{tmp_path}/api.sock", check=False)
    assert served.returncode == 2 and "uplink.interface" in served.stderr and "wlan9 does not exist" in served.stderr
    assert "br0" not in sh(topo.host, "ip", "-o", "link").stdout and not (tmp_path / "s" / "ledger.json").exists()
