"""Peers on real kernel objects: three "hosts" (network namespaces) on one
underlay, each running bridgelab's host side for its own lab file, with the
lab bridges joined over the kernel's VXLAN.

    g1 --veth-- [br0 h1 vx] --eth0--+
    g2 --veth-- [br0 h2 vx] --eth0--+-- [sw in "wan"] -- eth0 h4 (not a peer)
    g3 --veth-- [br0 h3 vx] --eth0--+

Guests are network namespaces behind veths, as in test_uplink.py: the host
side cannot tell them from taps. Real guests across hosts are in
test_peers_vm.py.
"""

from __future__ import annotations

import contextlib
import dataclasses
import ipaddress
import json
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import pytest
from bridgelab.errors import SpecError
from bridgelab.host import firewall, vxlan
from bridgelab.lab.host_side import HostSide
from bridgelab.model.plan import HostFacts, LabPlan, make_plan
from bridgelab.model.spec import parse_lab_data
from pyroute2 import netns as pr_netns

from . import hoststate
from .conftest import delete_netns, links_in, make_netns, netns
from .test_plan import image

pytestmark = pytest.mark.netns

SUBNET = "10.198.50"
UNDERLAY = "172.31.0"
HOSTS = 3


def sh(ns: str, *cmd: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", "netns", "exec", ns, *cmd], capture_output=True, text=True, check=check)


@dataclass
class Underlay:
    wan: str
    hosts: list[str]
    outsider: str  # on the underlay, but nobody's peer
    guests: list[str] = field(default_factory=list)

    def address(self, i: int) -> str:
        return f"{UNDERLAY}.{i + 1}"


def _join(wan: str, ns: str, port: str, address: str, mtu: int) -> None:
    subprocess.run(["ip", "-n", wan, "link", "add", port, "mtu", str(mtu), "type", "veth", "peer", "name", "eth0",
                    "mtu", str(mtu), "netns", ns], check=True)
    subprocess.run(["ip", "-n", wan, "link", "set", port, "master", "sw", "up"], check=True)
    subprocess.run(["ip", "-n", ns, "addr", "add", f"{address}/24", "dev", "eth0"], check=True)
    subprocess.run(["ip", "-n", ns, "link", "set", "eth0", "up"], check=True)


@contextlib.contextmanager
def underlay(mtu: int, count: int = HOSTS) -> Iterator[Underlay]:
    """`count` hosts and an outsider on one switch, each link carrying `mtu`."""
    with contextlib.ExitStack() as stack:
        wan = stack.enter_context(netns("blp-w"))
        hosts = [stack.enter_context(netns(f"blp-h{i + 1}")) for i in range(count)]
        outsider = stack.enter_context(netns("blp-o"))
        u = Underlay(wan, hosts, outsider)
        stack.callback(lambda: list(map(delete_netns, u.guests)))
        subprocess.run(["ip", "-n", wan, "link", "add", "sw", "mtu", str(mtu), "type", "bridge"], check=True)
        subprocess.run(["ip", "-n", wan, "link", "set", "sw", "up"], check=True)
        for i, h in enumerate(hosts):
            _join(wan, h, f"p{i + 1}", u.address(i), mtu)
        _join(wan, outsider, "p9", f"{UNDERLAY}.9", mtu)
        yield u


def lab_for(u: Underlay, i: int, **peers: Any) -> dict[str, Any]:
    """Host i's lab file: its own bridge address and guest address in the
    shared subnet, the other hosts as peers."""
    others = [u.address(j) for j in range(HOSTS) if j != i]
    return {"name": "peer", "bridge": {"name": "br0", "address": f"{SUBNET}.{250 + i}/24"},
            "peers": {"hosts": others, **peers},
            "guests": [{"name": f"g{i + 1}", "image": "i", "ip": f"{SUBNET}.{i + 1}"}]}


def plan_in(ns: str, lab: dict[str, Any], state: Path) -> LabPlan:
    spec = parse_lab_data(lab)
    assert spec.peers is not None
    pr_netns.pushns(ns)
    try:
        facts = vxlan.detect(spec.peers)
    finally:
        pr_netns.popns()
    return make_plan(spec, {"i": image()}, HostFacts(arch="x86_64", kvm=False, underlay=facts), state)


class Host:
    """One "host": its plan, and HostSide run inside its namespace."""

    def __init__(self, ns: str, plan: LabPlan):
        self.ns, self.plan = ns, plan
        self.side = HostSide(plan)

    def up(self) -> None:
        pr_netns.pushns(self.ns)
        try:
            self.side.__enter__()
        finally:
            pr_netns.popns()

    def down(self) -> None:
        pr_netns.pushns(self.ns)
        try:
            self.side.__exit__(None, None, None)
        finally:
            pr_netns.popns()


def add_guest(u: Underlay, host: Host) -> str:
    """A netns guest on the host's bridge, with the plan's address and MTU."""
    g = make_netns("blp-g")
    u.guests.append(g)
    p = host.plan.guests[0]
    # The plan's tap is there too (HostSide made it), unused: no qemu holds it.
    subprocess.run(["ip", "-n", host.ns, "link", "add", "vguest", "type", "veth", "peer", "name", "eth0",
                    "netns", g], check=True)
    subprocess.run(["ip", "-n", host.ns, "link", "set", "vguest", "master", host.plan.bridge, "up"], check=True)
    subprocess.run(["ip", "-n", g, "addr", "add", str(p.ip), "dev", "eth0"], check=True)
    if p.mtu:
        subprocess.run(["ip", "-n", g, "link", "set", "eth0", "mtu", str(p.mtu)], check=True)
    subprocess.run(["ip", "-n", g, "link", "set", "eth0", "up"], check=True)
    return g


def state_of(ns: str) -> dict[str, Any]:
    """What teardown must restore on a host, read with the system's tools."""
    return {"links": links_in(ns),
            "iptables": {b: firewall.normalize_save(sh(ns, f"iptables-{b}-save", check=False).stdout)
                         for b in ("nft", "legacy")},
            "nftables": hoststate.nftables(ns)}


def ping(ns: str, target: str, size: int = 56, df: bool = False) -> bool:
    opts = ["-M", "do"] if df else []
    return sh(ns, "ping", "-n", "-c", "1", "-W", "2", "-s", str(size), *opts, target, check=False).returncode == 0


@contextlib.contextmanager
def three_hosts(tmp_path: Path, mtu: int, **peers: Any) -> Iterator[tuple[Underlay, list[Host], list[str]]]:
    with underlay(mtu) as u:
        before = {ns: state_of(ns) for ns in u.hosts}
        hosts = [Host(ns, plan_in(ns, lab_for(u, i, **peers), tmp_path / f"h{i}")) for i, ns in enumerate(u.hosts)]
        up: list[Host] = []
        try:
            for h in hosts:
                h.up()
                up.append(h)
            guests = [add_guest(u, h) for h in hosts]
            yield u, hosts, guests
        finally:
            for h in up:
                h.down()
        for h in hosts:  # the test's own veths (a netns goes away asynchronously, its veths with it)
            sh(h.ns, "ip", "link", "del", "vguest", check=False)
        assert {ns: state_of(ns) for ns in u.hosts} == before, "teardown must leave every host as it found it"


def fdb_floods(ns: str, dev: str) -> set[str]:
    out = sh(ns, "bridge", "-j", "fdb", "show", "dev", dev).stdout
    return {e["dst"] for e in json.loads(out) if e.get("mac") == "00:00:00:00:00:00"}


def test_three_hosts_form_one_l2_and_leave_no_trace(tmp_path):
    with three_hosts(tmp_path, mtu=1550) as (u, hosts, guests):
        h1 = hosts[0]
        ov = h1.plan.overlay
        assert ov is not None and ov.guest_mtu is None and "guests keep MTU 1500" in ov.mtu_reason
        assert ov.interface == "eth0" and str(ov.local) == u.address(0)
        # One VXLAN port on the bridge, as the plan says, and one flood entry per peer.
        link = json.loads(sh(h1.ns, "ip", "-d", "-j", "link", "show", "dev", ov.device).stdout)[0]
        data = link["linkinfo"]["info_data"]
        assert (data["id"], data["port"], data["local"], data["learning"]) == (ov.vni, ov.port, u.address(0), True)
        assert link["master"] == "br0" and link["ifalias"] == firewall.lab_tag("peer")
        assert fdb_floods(h1.ns, ov.device) == {u.address(1), u.address(2)}
        # Every guest reaches every other, across hosts, and each host's bridge address.
        for i, g in enumerate(guests):
            for j in range(HOSTS):
                if j != i:
                    assert ping(g, f"{SUBNET}.{j + 1}"), f"g{i + 1} -> g{j + 1}"
                    assert ping(g, f"{SUBNET}.{250 + j}"), f"g{i + 1} -> host {j + 1}'s bridge"
        # A full-size frame crosses with DF set: the underlay carries the 50 bytes.
        assert ping(guests[0], f"{SUBNET}.3", size=1472, df=True)
        # Learning: after the pings, h1 knows where g3's MAC lives.
        g3_mac = json.loads(sh(guests[2], "ip", "-j", "link", "show", "dev", "eth0").stdout)[0]["address"]
        learned = json.loads(sh(h1.ns, "bridge", "-j", "fdb", "show", "dev", ov.device).stdout)
        assert any(e.get("mac") == g3_mac and e.get("dst") == u.address(2) for e in learned)


def test_a_small_underlay_lowers_the_guests_mtu(tmp_path):
    with three_hosts(tmp_path, mtu=1500) as (u, hosts, guests):
        ov = hosts[0].plan.overlay
        assert ov is not None and ov.guest_mtu == 1450 and ov.mtu == 1450
        assert hosts[0].plan.guests[0].mtu == 1450
        assert "eth0 carries only 1500 bytes" in ov.mtu_reason
        assert ping(guests[0], f"{SUBNET}.2", size=1422, df=True), "a 1450-byte packet crosses"
        assert not ping(guests[0], f"{SUBNET}.2", size=1423, df=True), "the guest's MTU bounds it"


def test_check_refuses_a_small_underlay_before_anything_is_made(tmp_path):
    with underlay(1500) as u:
        before = state_of(u.hosts[0])
        with pytest.raises(SpecError, match=r"peers\.mtu: check: eth0 carries 1500 bytes"):
            plan_in(u.hosts[0], lab_for(u, 0, mtu="check"), tmp_path)
        assert state_of(u.hosts[0]) == before


def test_the_vxlan_port_is_open_to_the_peers_only(tmp_path):
    """A host on the underlay that is nobody's peer sends this lab's VNI to
    h1: the lab's INPUT chain drops it, so it never reaches a guest."""
    with three_hosts(tmp_path, mtu=1550) as (u, hosts, guests):
        ov = hosts[0].plan.overlay
        assert ov is not None
        o = u.outsider
        sh(o, "ip", "link", "add", "vx", "type", "vxlan", "id", str(ov.vni), "dstport", str(ov.port),
           "remote", u.address(0), "local", f"{UNDERLAY}.9")
        sh(o, "ip", "addr", "add", f"{SUBNET}.99/24", "dev", "vx")
        sh(o, "ip", "link", "set", "vx", "up")
        assert not ping(o, f"{SUBNET}.1")
        cmd = hosts[0].side.ruleset.cmd
        assert cmd is not None
        chain = firewall.chain_prefix("peer") + "IN"
        counts = firewall_counts(hosts[0].ns, cmd, chain)
        assert counts[-1] > 0, "the outsider's frames hit the drop"
        neighbours = sh(guests[0], "ip", "-j", "neigh", "show").stdout
        assert f"{SUBNET}.99" not in neighbours, "no frame of the outsider reached g1"
        # The peers' own traffic went through the accept rules.
        assert ping(guests[1], f"{SUBNET}.1")
        assert sum(firewall_counts(hosts[0].ns, cmd, chain)[:-1]) > 0


def firewall_counts(ns: str, cmd: str, chain: str) -> list[int]:
    out = sh(ns, cmd, "-w", "-t", "filter", "-L", chain, "-n", "-v", "-x").stdout
    return [int(line.split()[0]) for line in out.splitlines()[2:] if line.strip()]


def test_a_peer_name_resolves_to_every_address_but_this_hosts_own(tmp_path, monkeypatch):
    """One DNS name for all nodes (a headless Service): each node finds the
    others, not itself."""
    with underlay(1550) as u:
        records = [u.address(i) for i in range(HOSTS)]
        monkeypatch.setattr(vxlan.socket, "getaddrinfo",
                            lambda *a, **k: [(2, 2, 17, "", (r, 0)) for r in records])
        lab = lab_for(u, 0)
        lab["peers"]["hosts"] = ["bridgelab-peers.lab.svc.cluster.local"]
        plan = plan_in(u.hosts[0], lab, tmp_path)
        assert plan.overlay is not None
        assert [str(p) for p in plan.overlay.peers] == records[1:]


def test_a_vni_in_use_by_another_device_is_named(tmp_path):
    with underlay(1550) as u:
        plan = plan_in(u.hosts[0], lab_for(u, 0), tmp_path)
        ov = plan.overlay
        assert ov is not None
        sh(u.hosts[0], "ip", "link", "add", "theirs", "type", "vxlan", "id", str(ov.vni), "dstport", str(ov.port),
           "local", u.address(0))
        before = state_of(u.hosts[0])
        host = Host(u.hosts[0], plan)
        with pytest.raises(Exception, match=f"another VXLAN device already uses VNI {ov.vni}"):
            host.up()
        assert state_of(u.hosts[0]) == before, "the failed start undid what it had made"
        assert ipaddress.IPv4Address(u.address(0)) == ov.local


def test_a_new_peer_is_taken_in_without_a_restart(tmp_path):
    """A DNS name that lists one more node: the flood list and the firewall
    follow (what peering.py does when a resolution changes)."""
    with underlay(1550) as u:
        plans = [plan_in(ns, lab_for(u, i), tmp_path / f"h{i}") for i, ns in enumerate(u.hosts)]
        ov = plans[0].overlay
        assert ov is not None
        first = dataclasses.replace(plans[0], overlay=dataclasses.replace(ov, peers=ov.peers[:1]))
        hosts = [Host(u.hosts[0], first), *(Host(ns, p) for ns, p in zip(u.hosts[1:], plans[1:], strict=True))]
        try:
            for h in hosts:
                h.up()
            guests = [add_guest(u, h) for h in hosts]
            assert fdb_floods(u.hosts[0], ov.device) == {u.address(1)}
            assert ping(guests[1], f"{SUBNET}.1") and not ping(guests[2], f"{SUBNET}.1")
            pr_netns.pushns(u.hosts[0])
            try:
                hosts[0].side.set_peers(ov)
            finally:
                pr_netns.popns()
            assert fdb_floods(u.hosts[0], ov.device) == {u.address(1), u.address(2)}
            assert ping(guests[2], f"{SUBNET}.1"), "the new peer's guest reaches g1"
        finally:
            for h in hosts:
                h.down()


def test_a_lost_ledger_is_cleaned_up_by_marks_vxlan_port_and_input_chain_too(tmp_path):
    """A host side left by a killed daemon whose state directory is gone:
    `bridgelab cleanup` finds the VXLAN port by its alias and the INPUT
    chain by its tag, as it finds the bridge and taps."""
    with underlay(1550, count=2) as u:
        before = state_of(u.hosts[0])
        host = Host(u.hosts[0], plan_in(u.hosts[0], lab_for(u, 0), tmp_path / "h0"))
        host.up()  # and never down: the daemon was killed
        ov = host.plan.overlay
        assert ov is not None and ov.device in links_in(u.hosts[0])
        host.side._lock.release()
        subprocess.run(["rm", "-r", str(tmp_path / "h0")], check=True)
        p = sh(u.hosts[0], sys.executable, "-m", "bridgelab.cli", "cleanup", "--all", check=False)
        assert p.returncode == 0, p.stdout + p.stderr
        assert f"lab peer: removed VXLAN port {ov.device} (not in a ledger: found by its alias)" in p.stdout, p.stdout
        after = state_of(u.hosts[0])
        assert after["links"] == before["links"]
        # Every rule and chain of the lab is gone. (The empty table iptables-nft
        # made for them stays: without the ledger nothing says it was new.)
        assert not any("bridgelab lab=peer" in line or "BL-" in line
                       for lines in after["iptables"].values() for line in lines), after["iptables"]


def test_a_base_chain_iptables_nft_made_for_the_vxlan_port_goes_too(tmp_path, monkeypatch):
    """A host whose filter table exists without an INPUT chain (Docker's
    iptables-nft makes FORWARD only): iptables-nft makes INPUT for the lab's
    jump and would leave it behind. `nft list ruleset` must read as before."""
    monkeypatch.setenv("BRIDGELAB_IPTABLES", "nft")
    with underlay(1550, count=2) as u:
        h = u.hosts[0]
        sh(h, "iptables-nft", "-w", "-A", "FORWARD", "-i", "eth0", "-j", "ACCEPT")
        assert "chain INPUT" not in "\n".join(hoststate.nftables(h))
        before = state_of(h)
        host = Host(h, plan_in(h, lab_for(u, 0), tmp_path / "h0"))
        host.up()
        assert "chain INPUT" in "\n".join(hoststate.nftables(h))
        host.down()
        assert state_of(h) == before
