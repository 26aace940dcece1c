#!/usr/bin/env python3
"""Uplink modes, in one run, in throwaway namespaces (never the real NIC):

  setup / teardown   host side of each mode (sysctls, rules, routes), with two
                     netns "guests" on the bridge:
                       bridgelab  firewall.apply + uplink.apply (backend detection,
                                  sweep by tag, ledger, one iptables-restore)
                       manual     the seed's way: one sysctl / iptables / ip
                                  command per step (what the README's users typed)
  ping RTT           guest -> LAN host, median of 20 pings per run:
                       floor      a netns wired straight to the LAN (no bridge,
                                  no forwarding): the physical floor
                       nat, proxy-arp  through the host, netns guests
                       riscv64    a real TCG guest per mode (--vm), via the API

    sudo .venv/bin/python bench/uplink.py --reps 5 [--vm]
"""

from __future__ import annotations

import argparse
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bridgelab.host import firewall, links, uplink  # noqa: E402
from pyroute2 import netns as pr_netns  # noqa: E402

from tests.conftest import delete_netns, make_netns  # noqa: E402
from tests.test_uplink import (  # noqa: E402
    LAN_HOST,
    LAN_ROUTER,
    Lab,
    Topology,
    add_guest,
    hostile_firewall,
    nat_lab,
    plan_in,
    proxy_lab,
    sh,
)

_RTT = re.compile(r"time=([\d.]+) ms")


def topology() -> Topology:
    t = Topology(host=make_netns("blbu-h"), lan=make_netns("blbu-l"))
    subprocess.run(["ip", "-n", t.host, "link", "add", "up0", "type", "veth", "peer", "name", "eth0",
                    "netns", t.lan], check=True)
    for a in (f"{LAN_ROUTER}/24", f"{LAN_HOST}/24"):
        subprocess.run(["ip", "-n", t.lan, "addr", "add", a, "dev", "eth0"], check=True)
    for cmd in (["ip", "-n", t.lan, "link", "set", "eth0", "up"],
                ["ip", "-n", t.host, "addr", "add", "10.77.0.10/24", "dev", "up0"],
                ["ip", "-n", t.host, "link", "set", "up0", "up"],
                ["ip", "-n", t.host, "route", "add", "default", "via", LAN_ROUTER]):
        subprocess.run(cmd, check=True)
    hostile_firewall(t.host, "iptables-nft")  # a Docker host: the realistic case
    sh(t.host, "sysctl", "-q", "-w", "net.ipv4.ip_forward=0")
    return t


def rtts(ns: str, target: str, count: int = 20) -> list[float]:
    """Steady-state RTTs: one ping first resolves ARP (proxy-ARP answers the
    LAN after up to proxy_delay, 0.8 s), which is not what the median is for."""
    sh(ns, "ping", "-n", "-c", "1", "-w", "3", target, check=False)
    out = sh(ns, "ping", "-n", "-c", str(count), "-i", "0.05", target, check=False).stdout
    return [float(x) for x in _RTT.findall(out)]


def manual_commands(mode: str) -> tuple[list[list[str]], list[list[str]]]:
    """The seed procedure's commands (setup, teardown), one process each."""
    ipt = ["iptables-nft", "-w"]
    if mode == "nat":
        net = "10.198.101.0/24"
        up = [["sysctl", "-w", "net.ipv4.ip_forward=1"],
              [*ipt, "-t", "nat", "-A", "POSTROUTING", "-s", net, "!", "-d", net, "-o", "up0", "-j", "MASQUERADE"],
              [*ipt, "-I", "DOCKER-USER", "-i", "br0", "-j", "ACCEPT"],
              [*ipt, "-I", "DOCKER-USER", "-o", "br0", "-j", "ACCEPT"]]
        down = [[*ipt, "-t", "nat", "-D", "POSTROUTING", "-s", net, "!", "-d", net, "-o", "up0", "-j", "MASQUERADE"],
                [*ipt, "-D", "DOCKER-USER", "-i", "br0", "-j", "ACCEPT"],
                [*ipt, "-D", "DOCKER-USER", "-o", "br0", "-j", "ACCEPT"],
                ["sysctl", "-w", "net.ipv4.ip_forward=0"]]
    else:
        up = [["sysctl", "-w", "net.ipv4.ip_forward=1"], ["sysctl", "-w", "net.ipv4.conf.up0.proxy_arp=1"],
              ["sysctl", "-w", "net.ipv4.conf.br0.proxy_arp=1"],
              ["ip", "route", "add", "10.77.0.201/32", "dev", "br0"],
              ["ip", "route", "add", "10.77.0.202/32", "dev", "br0"],
              [*ipt, "-I", "DOCKER-USER", "-i", "br0", "-j", "ACCEPT"],
              [*ipt, "-I", "DOCKER-USER", "-o", "br0", "-j", "ACCEPT"]]
        down = [[*ipt, "-D", "DOCKER-USER", "-i", "br0", "-j", "ACCEPT"],
                [*ipt, "-D", "DOCKER-USER", "-o", "br0", "-j", "ACCEPT"],
                ["ip", "route", "del", "10.77.0.201/32", "dev", "br0"],
                ["ip", "route", "del", "10.77.0.202/32", "dev", "br0"],
                ["sysctl", "-w", "net.ipv4.conf.up0.proxy_arp=0"], ["sysctl", "-w", "net.ipv4.ip_forward=0"]]
    return up, down


def timed(fn: Callable[[], object]) -> float:
    t0 = time.perf_counter()
    fn()
    return (time.perf_counter() - t0) * 1000


def run_mode(mode: str, variant: str, tmp: Path) -> dict[str, float]:
    t = topology()
    try:
        lab = Lab(t, plan_in(t, nat_lab(interface="up0") if mode == "nat" else proxy_lab(), tmp), tmp)
        guest_ips = (["10.198.101.1/24", "10.198.101.2/24"] if mode == "nat" else ["10.77.0.201/24", "10.77.0.202/24"])
        gw = "10.198.101.254" if mode == "nat" else LAN_ROUTER
        if variant == "bridgelab":
            # The bridge exists first in both variants: only the uplink is timed.
            pr_netns.pushns(t.host)  # before any netlink socket opens: it binds to the current netns
            try:
                net = links.HostNet(lab.ledger, "bench")
                links.apply(net, "br0", lab.plan.bridge_address, lab.plan.bridge_mac, [])
                net.close()
                setup = timed(lambda: (firewall.apply(lab.ledger, lab.plan), uplink.apply(lab.ledger, lab.plan)))
            finally:
                pr_netns.popns()
        else:
            subprocess.run(["ip", "-n", t.host, "link", "add", "br0", "type", "bridge"], check=True)
            if mode == "nat":
                subprocess.run(["ip", "-n", t.host, "addr", "add", "10.198.101.254/24", "dev", "br0"], check=True)
            subprocess.run(["ip", "-n", t.host, "link", "set", "br0", "up"], check=True)
            up, down = manual_commands(mode)
            setup = timed(lambda: [sh(t.host, *c) for c in up])
        for i, ip in enumerate(guest_ips, 1):
            add_guest(t, i, ip, gw)
        samples = rtts(t.guests[0], LAN_HOST)
        if variant == "bridgelab":
            pr_netns.pushns(t.host)
            try:
                teardown = timed(lambda: (firewall.remove_recorded(lab.ledger), uplink.teardown(lab.ledger)))
            finally:
                pr_netns.popns()
        else:
            teardown = timed(lambda: [sh(t.host, *c) for c in down])
        return {"setup_ms": setup, "teardown_ms": teardown, "rtt_ms": statistics.median(samples)}
    finally:
        for ns in (*t.guests, t.host, t.lan):
            delete_netns(ns)


def run_floor() -> dict[str, float]:
    """A guest netns wired straight into the LAN: no bridge, no forwarding."""
    lan, g = make_netns("blbu-l"), make_netns("blbu-g")
    try:
        subprocess.run(["ip", "-n", g, "link", "add", "eth0", "type", "veth", "peer", "name", "eth0", "netns", lan],
                       check=True)
        subprocess.run(["ip", "-n", lan, "addr", "add", f"{LAN_HOST}/24", "dev", "eth0"], check=True)
        subprocess.run(["ip", "-n", g, "addr", "add", "10.77.0.201/24", "dev", "eth0"], check=True)
        for ns in (lan, g):
            subprocess.run(["ip", "-n", ns, "link", "set", "eth0", "up"], check=True)
        return {"rtt_ms": statistics.median(rtts(g, LAN_HOST))}
    finally:
        delete_netns(lan)
        delete_netns(g)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--vm", action="store_true", help="also ping from a real riscv64 guest per mode")
    a = ap.parse_args()
    results: dict[str, list[dict[str, float]]] = {}
    for rep in range(a.reps):
        for mode in ("nat", "proxy-arp"):
            for variant in ("bridgelab", "manual"):
                with tempfile.TemporaryDirectory(prefix="blbu") as d:
                    results.setdefault(f"{mode} {variant}", []).append(run_mode(mode, variant, Path(d)))
        results.setdefault("floor", []).append(run_floor())
        print(f"rep {rep + 1}/{a.reps} done", flush=True)

    def med(key: str, field: str) -> float:
        return statistics.median(r[field] for r in results[key])

    floor = med("floor", "rtt_ms")
    print(f"\nmedians of {a.reps} runs; host side with 2 netns guests, a Docker-like firewall (nft)")
    print(f"{'':22}{'setup ms':>10}{'teardown ms':>13}{'RTT ms':>9}{'RTT/floor':>11}")
    for mode in ("nat", "proxy-arp"):
        for variant in ("bridgelab", "manual"):
            k = f"{mode} {variant}"
            print(f"{k:22}{med(k, 'setup_ms'):10.1f}{med(k, 'teardown_ms'):13.1f}{med(k, 'rtt_ms'):9.3f}"
                  f"{med(k, 'rtt_ms') / floor:11.2f}")
        b, m = f"{mode} bridgelab", f"{mode} manual"
        print(f"{'':22}bridgelab/manual setup {med(b, 'setup_ms') / med(m, 'setup_ms'):.2f}, "
              f"teardown {med(b, 'teardown_ms') / med(m, 'teardown_ms'):.2f}")
    print(f"{'floor (veth to LAN)':22}{'':23}{floor:9.3f}{1:11.2f}")
    if a.vm:
        from uplink_vm import guest_rtts  # a real guest per mode: minutes, so opt-in
        for mode, rtt in guest_rtts().items():
            print(f"{'riscv64 TCG ' + mode:22}{'':23}{rtt:9.3f}{rtt / floor:11.2f}")


if __name__ == "__main__":
    main()
