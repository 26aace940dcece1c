"""Host network against the real kernel, each test in a throwaway netns."""

from __future__ import annotations

import ipaddress
import json
import os
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from bridgelab.errors import HostNetError
from bridgelab.host import links, netlink_batch, tuntap, undo
from bridgelab.host.ledger import Ledger, LinkEntry, ProcessEntry
from bridgelab.model.plan import derive_bridge_mac

from .conftest import junk_image, links_in

pytestmark = pytest.mark.netns
ADDR = ipaddress.IPv4Interface("10.198.101.114/24")
MAC = derive_bridge_mac("t")
TAPS = ["bltap0", "bltap1", "bltap2"]


def apply(ledger_path: Path, taps=TAPS, bridge="br0"):
    ledger = Ledger(ledger_path)
    net = links.HostNet(ledger, "bridgelab test")
    try:
        return links.apply(net, bridge, ADDR, MAC, taps), ledger
    finally:
        net.close()


def teardown(ledger_path: Path) -> list[str]:
    ledger = Ledger(ledger_path)
    net = links.HostNet(ledger, "bridgelab test")
    try:
        return net.teardown()
    finally:
        net.close()


def ip_json(ns: str, *args: str):
    out = subprocess.run(["ip", "-n", ns, "-j", *args], check=True, capture_output=True, text=True).stdout
    return json.loads(out)


def test_setup_creates_bridge_and_attached_taps(in_netns, tmp_path):
    states, ledger = apply(tmp_path / "ledger.json")
    ns = in_netns
    assert links_in(ns) == {"lo": "", "br0": "bridge", **{t: "tun" for t in TAPS}}
    br = ip_json(ns, "-d", "addr", "show", "dev", "br0")[0]
    assert br["address"] == MAC
    assert "UP" in br["flags"]
    assert [(a["local"], a["prefixlen"]) for a in br["addr_info"] if a["family"] == "inet"] == [("10.198.101.114", 24)]
    assert br["linkinfo"]["info_data"]["stp_state"] == 0
    for tap in TAPS:
        t = ip_json(ns, "-d", "link", "show", "dev", tap)[0]
        assert t["master"] == "br0" and "UP" in t["flags"]
        assert t["linkinfo"]["info_data"]["type"] == "tap"
        assert t["ifalias"] == "bridgelab test"
    assert sorted(e.ifname for e in ledger.of(LinkEntry)) == sorted(["br0", *TAPS])


def test_second_run_converges_without_recreating(in_netns, tmp_path):
    first, _ = apply(tmp_path / "ledger.json")
    subprocess.run(["ip", "-n", in_netns, "link", "set", "bltap1", "nomaster"], check=True)
    subprocess.run(["ip", "-n", in_netns, "link", "set", "br0", "down"], check=True)
    second, ledger = apply(tmp_path / "ledger.json")
    assert {k: v.index for k, v in first.items()} == {k: v.index for k, v in second.items()}
    assert len(ledger.of(LinkEntry)) == 1 + len(TAPS)
    assert ip_json(in_netns, "link", "show", "dev", "bltap1")[0]["master"] == "br0"
    assert "UP" in ip_json(in_netns, "link", "show", "dev", "br0")[0]["flags"]


def test_teardown_removes_exactly_what_it_created(in_netns, tmp_path):
    ns = in_netns
    subprocess.run(["ip", "-n", ns, "link", "add", "keep0", "type", "veth", "peer", "name", "keep1"], check=True)
    subprocess.run(["ip", "-n", ns, "link", "add", "userbr", "type", "bridge"], check=True)
    subprocess.run(["ip", "-n", ns, "tuntap", "add", "usertap", "mode", "tap"], check=True)
    subprocess.run(["ip", "-n", ns, "link", "set", "usertap", "master", "userbr"], check=True)
    apply(tmp_path / "ledger.json")
    removed = teardown(tmp_path / "ledger.json")
    assert sorted(removed) == sorted(["br0", *TAPS])
    assert links_in(ns) == {"lo": "", "keep0": "veth", "keep1": "veth", "userbr": "bridge", "usertap": "tun"}
    assert ip_json(ns, "link", "show", "dev", "usertap")[0]["master"] == "userbr"
    assert Ledger(tmp_path / "ledger.json").entries == []


def test_existing_foreign_link_is_refused_and_left_alone(in_netns, tmp_path):
    ns = in_netns
    subprocess.run(["ip", "-n", ns, "link", "add", "br0", "type", "bridge"], check=True)
    subprocess.run(["ip", "-n", ns, "addr", "add", "192.0.2.1/24", "dev", "br0"], check=True)
    with pytest.raises(HostNetError, match="did not create"):
        apply(tmp_path / "ledger.json")
    assert links_in(ns) == {"lo": "", "br0": "bridge"}
    addrs = [a["local"] for a in ip_json(ns, "addr", "show", "dev", "br0")[0]["addr_info"] if a["family"] == "inet"]
    assert addrs == ["192.0.2.1"]


def test_foreign_tap_with_our_name_is_refused(in_netns, tmp_path):
    subprocess.run(["ip", "-n", in_netns, "tuntap", "add", "bltap1", "mode", "tap"], check=True)
    with pytest.raises(HostNetError, match="bltap1 already exists"):
        apply(tmp_path / "ledger.json")
    assert "master" not in ip_json(in_netns, "link", "show", "dev", "bltap1")[0]


def test_killed_run_is_swept_at_next_start(netns_name, tmp_path):
    """A separate process builds the network and a qemu stand-in, records them,
    and is SIGKILLed; the next start finds and removes all of it."""
    ledger_path = tmp_path / "ledger.json"
    script = textwrap.dedent(f"""
        import ipaddress, os, pathlib, signal, subprocess, sys
        from bridgelab.host import ledger as lg, links
        from bridgelab.guest.process import proc_start_time
        ledger = lg.Ledger(pathlib.Path({str(ledger_path)!r}))
        net = links.HostNet(ledger, "bridgelab test")
        links.apply(net, "br0", ipaddress.IPv4Interface("10.198.101.114/24"), "02:00:00:00:00:01", {TAPS!r})
        child = subprocess.Popen(["sleep", "600"], start_new_session=True,
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        ledger.add(lg.ProcessEntry(pid=child.pid, start_time=proc_start_time(child.pid), what="qemu"))
        print(child.pid, flush=True)
        os.kill(os.getpid(), signal.SIGKILL)
    """)
    p = subprocess.run(["ip", "netns", "exec", netns_name, sys.executable, "-c", script],
                       capture_output=True, text=True)
    assert p.returncode == -9, p.stderr
    leftover_pid = int(p.stdout.split()[0])
    assert os.path.exists(f"/proc/{leftover_pid}")
    assert set(links_in(netns_name)) == {"lo", "br0", *TAPS}

    from pyroute2 import netns as pr_netns
    pr_netns.pushns(netns_name)
    try:
        undone = undo.undo_recorded(Ledger(ledger_path))
    finally:
        pr_netns.popns()
    assert undone.killed == [f"qemu (pid {leftover_pid})"]
    assert sorted(undone.links) == sorted(["br0", *TAPS])
    assert links_in(netns_name) == {"lo": ""}
    stat = Path(f"/proc/{leftover_pid}/stat")
    assert not stat.exists() or "Z" in stat.read_text().split()[2]  # gone, or a zombie awaiting its reaper


def test_sweep_never_touches_lookalikes(in_netns, tmp_path):
    """Ledger entries whose object was replaced (other ifindex), that come from
    another boot, or name a reused PID, are dropped without touching anything."""
    ns = in_netns
    ledger_path = tmp_path / "ledger.json"
    apply(ledger_path, taps=["bltap0"])
    subprocess.run(["ip", "-n", ns, "link", "del", "bltap0"], check=True)
    subprocess.run(["ip", "-n", ns, "tuntap", "add", "bltap0", "mode", "tap"], check=True)  # someone else's now
    ledger = Ledger(ledger_path)
    br = ledger.find_link("br0")
    assert br is not None
    ledger.entries[ledger.entries.index(br)] = br.model_copy(update={"boot_id": "another-boot"})
    sleeper = subprocess.Popen(["sleep", "600"])
    try:
        ledger.add(ProcessEntry(pid=sleeper.pid, start_time=1, what="reused pid"))
        ledger._rewrite()
        assert not undo.undo_recorded(Ledger(ledger_path))
        assert sleeper.poll() is None
        assert links_in(ns) == {"lo": "", "br0": "bridge", "bltap0": "tun"}
        assert Ledger(ledger_path).entries == []
    finally:
        sleeper.kill()
        sleeper.wait()


def test_invalid_lab_exits_2_and_creates_nothing(netns_name, tmp_path):
    lab = tmp_path / "bad.yaml"
    lab.write_text("name: t\nbridge: {name: br0, address: 10.198.101.114/24}\n"
                   "guests:\n  - {name: a, image: x, ip: 10.0.0.1}\n  - {name: a, image: x, tap: 'bad tap'}\n")
    state = tmp_path / "state"
    p = subprocess.run(["ip", "netns", "exec", netns_name, sys.executable, "-m", "bridgelab.cli", "serve",
                        "--lab", str(lab), "--state-dir", str(state), "--listen", f"unix:{tmp_path}/api.sock"],
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 2
    assert "guests[0].ip" in p.stderr and "guests[1].name" in p.stderr and "guests[1].tap" in p.stderr
    assert links_in(netns_name) == {"lo": ""}
    assert not state.exists() and not (tmp_path / "api.sock").exists()


def test_status_and_down_are_api_clients_and_down_cleans_up(netns_name, tmp_path):
    """A daemon whose only guest cannot even get an overlay (its base disk is
    not a qcow2): the daemon keeps serving, `status` reports the failure, and
    `down` stops it and removes the bridge and tap."""
    img = junk_image(tmp_path)
    lab = tmp_path / "lab.yaml"
    lab.write_text(f"name: t\nbridge: {{address: 10.198.101.114/24}}\nguests:\n  - {{name: a, image: {img}}}\n")
    sock = f"unix:{tmp_path}/api.sock"
    cli = [sys.executable, "-m", "bridgelab.cli"]
    daemon = subprocess.Popen(["ip", "netns", "exec", netns_name, *cli, "serve", "--lab", str(lab),
                               "--state-dir", str(tmp_path / "s"), "--listen", sock],
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 30
        status = None
        while time.monotonic() < deadline:
            status = subprocess.run([*cli, "status", "--api", sock, "--json"], capture_output=True, text=True)
            if status.returncode in (0, 1) and '"failed"' in status.stdout:
                break
            time.sleep(0.2)
        assert status is not None and status.returncode == 1, status
        guest = json.loads(status.stdout)[0]
        assert guest["state"] == "failed" and "qemu-img" in guest["reason"]
        assert set(links_in(netns_name)) == {"lo", "br0", guest["tap"]}
        down = subprocess.run([*cli, "down", "--api", sock, "--timeout", "30"], capture_output=True, text=True)
        assert down.returncode == 0, down.stderr
        assert daemon.wait(30) == 0
        assert links_in(netns_name) == {"lo": ""}
        assert not (tmp_path / "api.sock").exists()
    finally:
        if daemon.poll() is None:
            daemon.kill()
            daemon.wait()


def _ns_sh(ns: str, *cmd: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", "netns", "exec", ns, *cmd], capture_output=True, text=True, check=check)


@pytest.mark.parametrize("backend", ["nft", "legacy"])
def test_forward_drop_with_br_netfilter_is_opened_for_our_bridge_only(in_netns, tmp_path, backend, monkeypatch):
    """Docker's setup, reproduced in a netns: br_netfilter on (the netns
    default here) and FORWARD policy DROP. Two 'guests' (netns behind veths)
    on our bridge cannot ping each other until bridgelab adds its one tagged
    rules; teardown removes exactly those and leaves the policy alone.
    The DROP sits in either backend; bridgelab must find which on its own."""
    from bridgelab.host import firewall

    from .test_plan import plan_of

    ns = in_netns
    ipt = f"iptables-{backend}"
    monkeypatch.delenv("BRIDGELAB_IPTABLES", raising=False)
    if _ns_sh(ns, "cat", str(firewall.BRIDGE_NF), check=False).stdout.strip() != "1":
        pytest.skip("br_netfilter is not active in this kernel; bridged frames never see iptables here")
    _ns_sh(ns, ipt, "-w", "-P", "FORWARD", "DROP")
    ledger = Ledger(tmp_path / "ledger.json")
    net = links.HostNet(ledger, "bridgelab test")
    links.apply(net, "br0", ADDR, MAC, [])
    net.close()
    guests = []
    try:
        for i in (1, 2):
            g = f"{ns}-g{i}"
            subprocess.run(["ip", "netns", "add", g], check=True)
            guests.append(g)
            subprocess.run(["ip", "-n", ns, "link", "add", f"vg{i}", "type", "veth", "peer", "name", "eth0",
                            "netns", g], check=True)
            subprocess.run(["ip", "-n", ns, "link", "set", f"vg{i}", "master", "br0", "up"], check=True)
            subprocess.run(["ip", "-n", g, "addr", "add", f"10.198.101.{i}/24", "dev", "eth0"], check=True)
            subprocess.run(["ip", "-n", g, "link", "set", "eth0", "up"], check=True)

        def ping() -> bool:
            return _ns_sh(guests[0], "ping", "-c", "1", "-w", "2", "10.198.101.2", check=False).returncode == 0
        assert not ping(), "FORWARD DROP should cut bridged traffic (the problem being fixed)"
        plan = plan_of([{"name": "a", "image": "i"}])
        assert firewall.apply(ledger, plan).cmd == ipt
        firewall.apply(ledger, plan)  # again, as a restart would: replaced, not duplicated
        assert _ns_sh(ns, f"{ipt}-save").stdout.count('--comment "bridgelab lab=t" -j BL-') == 1
        assert ping()
        assert firewall.remove_recorded(ledger) == [ipt]
        rules = _ns_sh(ns, ipt, "-w", "-S").stdout.splitlines()
        assert rules == ["-P INPUT ACCEPT", "-P FORWARD DROP", "-P OUTPUT ACCEPT"]
        assert not ping()
    finally:
        for g in guests:
            subprocess.run(["ip", "netns", "del", g], check=False)


def test_backend_choice_follows_the_hosts_rules():
    from bridgelab.errors import HostNetError
    from bridgelab.host.firewall import choose_backend

    both = {"nft", "legacy"}
    assert choose_backend(None, {"nft": 0, "legacy": 0}, both)[0] == "nft"
    assert choose_backend(None, {"nft": 0, "legacy": 3}, both)[0] == "legacy"
    assert choose_backend(None, {"nft": 9, "legacy": 3}, both)[0] == "nft"
    assert choose_backend(None, {"legacy": 0}, {"legacy"})[0] == "legacy"
    assert choose_backend("legacy", {"nft": 9}, both) == ("legacy", "BRIDGELAB_IPTABLES")
    with pytest.raises(HostNetError, match="BRIDGELAB_IPTABLES"):
        choose_backend("xt", {}, both)
    with pytest.raises(HostNetError, match="neither"):
        choose_backend(None, {}, set())


def test_a_batch_reports_each_link_the_kernel_refused_and_applies_the_rest(in_netns, tmp_path):
    """The taps are attached in one netlink batch: one bad request (a master
    that does not exist) is reported by name, the others still take effect."""
    states, _ = apply(tmp_path / "ledger.json")
    batch = netlink_batch.LinkBatch()
    try:
        tuntap.create_tap("bltap9")
        index = socket.if_nametoindex("bltap9")
        with pytest.raises(HostNetError, match=r"cannot attach and bring up bltap9: Invalid argument$"):
            batch.set_links([netlink_batch.LinkSet("bltap9", index, 999999, "x"),
                             netlink_batch.LinkSet("bltap0", states["bltap0"].index, states["br0"].index, "again")])
    finally:
        batch.close()
    link = ip_json(in_netns, "-d", "link", "show", "dev", "bltap0")[0]
    assert link["master"] == "br0" and link["ifalias"] == "again"
    assert "master" not in ip_json(in_netns, "link", "show", "dev", "bltap9")[0]
    with pytest.raises(HostNetError, match="bltap9"):  # the name is taken: refused, not reused
        tuntap.create_tap("bltap9")
    subprocess.run(["ip", "-n", in_netns, "link", "del", "bltap9"], check=True)


def test_the_batch_encodes_a_link_change_as_pyroute2_does():
    """The hand-packed RTM_NEWLINK is byte for byte pyroute2's own message."""
    from pyroute2.netlink.rtnl.ifinfmsg import ifinfmsg
    msg = ifinfmsg()
    msg["index"], msg["flags"], msg["change"] = 5, 1, 1
    msg["attrs"] = [("IFLA_MASTER", 3), ("IFLA_IFALIAS", "bridgelab lab=t")]
    msg["header"]["type"], msg["header"]["flags"], msg["header"]["sequence_number"] = 16, 5, 7
    msg.encode()
    assert netlink_batch._encode(netlink_batch.LinkSet("tap0", 5, 3, "bridgelab lab=t"), 7) == bytes(msg.data)
