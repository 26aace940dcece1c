"""The host-state guard must see what a careless run would leave: each
section is changed for real in a throwaway netns (or a /run of its own),
then put back."""

from __future__ import annotations

import subprocess
import time

import pytest

from . import hoststate


def ns_do(ns: str, *argv: str) -> None:
    subprocess.run(["ip", "netns", "exec", ns, *argv], check=True, capture_output=True)


@pytest.mark.netns
def test_the_guard_sees_links_addresses_routes_rules_and_sysctls(netns_name):
    ns = netns_name
    before = hoststate.capture(ns)
    assert hoststate.differences(before, hoststate.capture(ns)) == []
    ns_do(ns, "ip", "link", "add", "leftbr", "type", "bridge")
    ns_do(ns, "ip", "addr", "add", "10.9.9.1/24", "dev", "leftbr")
    ns_do(ns, "ip", "link", "set", "leftbr", "up")
    ns_do(ns, "iptables-legacy", "-w", "-A", "FORWARD", "-i", "leftbr", "-j", "ACCEPT")
    ns_do(ns, "iptables-nft", "-A", "FORWARD", "-o", "leftbr", "-j", "ACCEPT")
    ns_do(ns, "sysctl", "-qw", "net.ipv4.conf.leftbr.proxy_arp=1")
    changed = "\n".join(hoststate.differences(before, hoststate.capture(ns)))
    for words in ("links: leftbr: '(absent)' -> 'bridge'", "addresses: leftbr:", "10.9.9.1/24",
                  "routes: + 10.9.9.0/24 dev leftbr", "iptables-legacy: + -A FORWARD -i leftbr -j ACCEPT",
                  "iptables-nft: + -A FORWARD -o leftbr -j ACCEPT", "nftables: +",
                  "sysctls: ipv4/conf/leftbr/proxy_arp: '(absent)' -> '1'"):
        assert words in changed, (words, changed)
    ns_do(ns, "iptables-legacy", "-w", "-D", "FORWARD", "-i", "leftbr", "-j", "ACCEPT")
    ns_do(ns, "iptables-nft", "-D", "FORWARD", "-o", "leftbr", "-j", "ACCEPT")
    ns_do(ns, "ip", "link", "del", "leftbr")
    after = hoststate.capture(ns)
    # An emptied nft chain stays behind, and legacy tables stay loaded: the
    # guard reports what the tools show, not what one would like to see.
    assert [d for d in hoststate.differences(before, after) if not d.startswith(("nftables", "iptables"))] == []


@pytest.mark.netns
def test_the_guard_ignores_what_the_kernel_configures_when_a_link_gets_carrier(netns_name):
    """docker0's first container gives it carrier, and the kernel an IPv6
    link-local address and its routes: not a change anyone made."""
    ns = netns_name
    ns_do(ns, "ip", "link", "add", "va", "type", "veth", "peer", "name", "vb")
    quiet = hoststate.capture(ns)
    ns_do(ns, "ip", "link", "set", "va", "up")
    ns_do(ns, "ip", "link", "set", "vb", "up")
    deadline = time.monotonic() + 10
    while "fe80::" not in subprocess.run(["ip", "-n", ns, "-6", "addr", "show", "dev", "va"], capture_output=True,
                                         text=True).stdout:
        assert time.monotonic() < deadline, "no link-local address appeared"
        time.sleep(0.1)
    assert hoststate.differences(quiet, hoststate.capture(ns)) == []
    ns_do(ns, "ip", "addr", "add", "fd00:9::1/64", "dev", "va")  # one that somebody set is seen
    assert "addresses: va: [] -> ['fd00:9::1/64']" in hoststate.differences(quiet, hoststate.capture(ns))


def test_the_guard_tells_an_absent_lock_from_a_file_and_a_directory(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    absent = hoststate.run_paths(run)
    (run / "xtables.lock").mkdir()
    assert hoststate.differences({"run": absent}, {"run": hoststate.run_paths(run)}) == [
        "run: xtables.lock: 'absent' -> 'directory'"]
    (run / "xtables.lock").rmdir()
    (run / "xtables.lock").touch()
    (run / "bridgelab" / "lab").mkdir(parents=True)
    (run / "bridgelab" / "api-token").touch()
    assert hoststate.differences({"run": absent}, {"run": hoststate.run_paths(run)}) == [
        "run: bridgelab: 'absent' -> 'directory'", "run: bridgelab/api-token: '(absent)' -> 'file'",
        "run: bridgelab/lab: '(absent)' -> 'directory'", "run: xtables.lock: 'absent' -> 'file'"]


def test_the_guard_sees_binfmt_entries_mounts_and_processes(tmp_path):
    root = tmp_path / "binfmt"
    assert hoststate.binfmt(root) == {"(not mounted)": ""}
    root.mkdir()
    (root / "register").touch()
    (root / "status").write_text("enabled\n")
    (root / "qemu-riscv64").write_text("enabled\ninterpreter /usr/bin/qemu-riscv64-static\n")
    assert hoststate.binfmt(root) == {"qemu-riscv64": "enabled"}
    info = tmp_path / "mountinfo"
    info.write_text("22 1 0:20 / /proc rw - proc proc rw\n"
                    "90 26 0:45 / /proc/sys/fs/binfmt_misc rw - binfmt_misc binfmt_misc rw\n"
                    "91 26 0:4 net:[4026532] /run/netns/blt-1 rw shared:5 - nsfs nsfs rw\n"
                    "92 26 0:4 net:[4026531] /run/docker/netns/default rw - nsfs nsfs rw\n"
                    "93 26 0:4 net:[4026533] /run/docker/netns/1a2b3c rw - nsfs nsfs rw\n")
    # The engine's own host-network sandbox is the engine's; a container's is not.
    assert hoststate.mounts(info) == ["/proc/sys/fs/binfmt_misc binfmt_misc", "/run/docker/netns/1a2b3c nsfs",
                                      "/run/netns/blt-1 nsfs"]
    fake = tmp_path / "proc" / "4242"
    fake.mkdir(parents=True)
    (fake / "stat").write_text("4242 (qemu-system-ris) S " + " ".join(["0"] * 18) + " 777 0 0\n")
    assert hoststate.qemu_processes(tmp_path / "proc") == ["4242 qemu-system-ris started 777"]
    (fake / "stat").write_text("4242 (qemu-system-ris) Z " + " ".join(["0"] * 18) + " 777 0 0\n")
    assert hoststate.qemu_processes(tmp_path / "proc") == []  # a zombie only waits to be reaped


def test_differences_name_every_changed_item():
    before = {"netns": ["a", "b"], "docker": {"volumes": ["v1"]}, "run": {"x": "file"}}
    after = {"netns": ["b", "c"], "docker": {"volumes": ["v1", "v2"]}, "run": {"x": "file"}}
    assert hoststate.differences(before, after) == [
        "docker: volumes: ['v1'] -> ['v1', 'v2']", "netns: - a", "netns: + c"]
    assert hoststate.differences({"r": ["1", "2"]}, {"r": ["2", "1"]}) == [
        "r: the same lines in another order (or repeated)"]
