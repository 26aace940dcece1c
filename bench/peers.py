#!/usr/bin/env python3
"""Peers (VXLAN between hosts), in one run, every "host" a network namespace
on one underlay switch, guests as namespaces behind veths:

  path    RTT (median of --pings echoes) and TCP throughput (iperf3, --seconds)
          between two guests on one bridge, and the same pair across two
          hosts over VXLAN: the ratio is what crossing hosts costs;
  setup   the host side of a lab with 1, 2 and 4 peers (bridge, one tap,
          VXLAN port, flood entries, firewall chains) through bridgelab's
          HostSide, beside the same links by `ip -batch` and `bridge -batch`
          (the iproute2 floor, without the firewall); medians over --reps.

The underlay carries 1550 bytes (guests keep MTU 1500). Needs iperf3
(`apt install iperf3`).

    sudo .venv/bin/python bench/peers.py --reps 15
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator, TypeVar

from bridgelab.host import vxlan
from bridgelab.lab.host_side import HostSide
from bridgelab.model.plan import HostFacts, LabPlan, make_plan
from bridgelab.model.images import BootStyle, Image
from bridgelab.model.spec import Arch, Login, parse_lab_data
from common import fresh_ns
from pyroute2 import netns as pr_netns

SUBNET, UNDERLAY = "10.198.70", "172.30.0"
T = TypeVar("T")
IMAGE = Image(name="bench", arch=Arch.riscv64, style=BootStyle.kernel, kernel=Path("/k"), initrd=Path("/i"),
              firmware=None, payload=None, append="", disk=Path("/d"), disk_format="qcow2",
              login=Login(user="root", password="pw"))


def ip(ns: str, *args: str) -> None:
    subprocess.run(["ip", "-n", ns, *args], check=True)


def sh(ns: str, *argv: str) -> str:
    return subprocess.run(["ip", "netns", "exec", ns, *argv], check=True, capture_output=True, text=True).stdout


@contextmanager
def underlay(hosts: int) -> Iterator[list[str]]:
    """`hosts` namespaces on one switch, host i at UNDERLAY.(i+1), MTU 1550."""
    with ExitStack() as stack:
        def made(prefix: str) -> str:
            ns = fresh_ns(prefix)
            stack.callback(subprocess.run, ["ip", "netns", "del", ns], check=False)
            return ns
        wan = made("blbp-w")
        ip(wan, "link", "add", "sw", "mtu", "1550", "type", "bridge")
        ip(wan, "link", "set", "sw", "up")
        names = []
        for i in range(hosts):
            ns = made(f"blbp-h{i}")
            ip(wan, "link", "add", f"p{i}", "mtu", "1550", "type", "veth", "peer", "name", "eth0", "mtu", "1550",
               "netns", ns)
            ip(wan, "link", "set", f"p{i}", "master", "sw", "up")
            ip(ns, "addr", "add", f"{UNDERLAY}.{i + 1}/24", "dev", "eth0")
            ip(ns, "link", "set", "eth0", "up")
            names.append(ns)
        yield names


def plan_for(ns: str, i: int, peers: list[str], state: Path) -> LabPlan:
    spec = parse_lab_data({"name": "bench", "bridge": {"name": "br0", "address": f"{SUBNET}.{250 - i}/24"},
                           "peers": peers, "guests": [{"name": f"g{i}", "image": "i", "ip": f"{SUBNET}.{i + 1}"}]})
    assert spec.peers is not None
    pr_netns.pushns(ns)
    try:
        facts = vxlan.detect(spec.peers)
    finally:
        pr_netns.popns()
    return make_plan(spec, {"i": IMAGE}, HostFacts(arch="x86_64", kvm=False, underlay=facts), state)


def in_ns(ns: str, fn: Callable[..., T], *args: Any) -> T:
    pr_netns.pushns(ns)
    try:
        return fn(*args)
    finally:
        pr_netns.popns()


def add_guest(host: str, bridge: str, name: str, address: str, stack: ExitStack) -> str:
    g = fresh_ns("blbp-g")
    stack.callback(subprocess.run, ["ip", "netns", "del", g], check=False)
    ip(host, "link", "add", name, "type", "veth", "peer", "name", "eth0", "netns", g)
    ip(host, "link", "set", name, "master", bridge, "up")
    ip(g, "addr", "add", f"{address}/24", "dev", "eth0")
    ip(g, "link", "set", "eth0", "up")
    stack.callback(subprocess.run, ["ip", "-n", host, "link", "del", name], check=False)
    return g


def rtt_ms(src: str, dst: str, count: int) -> float:
    out = sh(src, "ping", "-n", "-c", str(count), "-i", "0.01", dst)
    times = [float(t) for t in re.findall(r"time=([\d.]+)", out)]
    assert times, out
    return statistics.median(times)


def throughput_gbit(server: str, client: str, address: str, seconds: int) -> float:
    srv = subprocess.Popen(["ip", "netns", "exec", server, "iperf3", "-s", "-1"], stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL)
    try:
        time.sleep(0.5)
        out = sh(client, "iperf3", "-c", address, "-t", str(seconds), "-J")
        return float(json.loads(out)["end"]["sum_received"]["bits_per_second"]) / 1e9
    finally:
        srv.wait(10)


def path_figures(pings: int, seconds: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as tmp, underlay(2) as hosts, ExitStack() as stack:
        sides = []
        for i, ns in enumerate(hosts):
            plan = plan_for(ns, i, [f"{UNDERLAY}.{2 - i}"], Path(tmp) / f"h{i}")
            side = HostSide(plan)
            in_ns(ns, side.__enter__)
            stack.callback(in_ns, ns, side.__exit__, None, None, None)
            sides.append(side)
        a = add_guest(hosts[0], "br0", "va", f"{SUBNET}.10", stack)
        b_local = add_guest(hosts[0], "br0", "vb", f"{SUBNET}.11", stack)
        b_remote = add_guest(hosts[1], "br0", "vc", f"{SUBNET}.12", stack)
        for dst in (f"{SUBNET}.11", f"{SUBNET}.12"):
            sh(a, "ping", "-n", "-q", "-c", "3", "-i", "0.2", dst)  # ARP and FDB learned first
        return {"rtt_bridge_ms": rtt_ms(a, f"{SUBNET}.11", pings),
                "rtt_vxlan_ms": rtt_ms(a, f"{SUBNET}.12", pings),
                "tcp_bridge_gbit": throughput_gbit(b_local, a, f"{SUBNET}.11", seconds),
                "tcp_vxlan_gbit": throughput_gbit(b_remote, a, f"{SUBNET}.12", seconds)}


def setup_bridgelab(ns: str, plan: LabPlan) -> float:
    side = HostSide(plan)
    t0 = time.perf_counter()
    in_ns(ns, side.__enter__)
    took = time.perf_counter() - t0
    in_ns(ns, side.__exit__, None, None, None)
    return took


def setup_iproute2(ns: str, peers: list[str]) -> float:
    """The same by hand: one `ip -batch`, one `bridge -batch` and one
    `iptables-nft-restore` (the backend bridgelab picks in an empty netns)."""
    links = "\n".join([
        "link add br0 type bridge", f"addr add {SUBNET}.250/24 dev br0", "link set br0 up",
        "tuntap add dev tap0 mode tap", "link set tap0 master br0 up",
        f"link add vx0 type vxlan id 42 local {UNDERLAY}.1 dstport 4789 dev eth0", "link set vx0 master br0 up"])
    fdb = "\n".join(f"fdb append 00:00:00:00:00:00 dev vx0 dst {p}" for p in peers)
    rules = "\n".join(["*filter", ":LAB-IN - [0:0]",
                       *(f"-A LAB-IN -s {p} -p udp --dport 4789 -j ACCEPT" for p in peers),
                       "-A LAB-IN -p udp --dport 4789 -m u32 --u32 0>>22&0x3C@12>>8=42 -j DROP",
                       "-I INPUT 1 -j LAB-IN", "COMMIT", ""])
    t0 = time.perf_counter()
    subprocess.run(["ip", "-n", ns, "-batch", "-"], input=links, text=True, check=True)
    subprocess.run(["ip", "netns", "exec", ns, "bridge", "-batch", "-"], input=fdb, text=True, check=True)
    subprocess.run(["ip", "netns", "exec", ns, "iptables-nft-restore", "-w", "--noflush"], input=rules, text=True,
                   check=True)
    took = time.perf_counter() - t0
    subprocess.run(["ip", "netns", "exec", ns, "iptables-nft-restore", "-w", "--noflush"], text=True, check=True,
                   input="*filter\n-D INPUT -j LAB-IN\n-F LAB-IN\n-X LAB-IN\nCOMMIT\n")
    for dev in ("vx0", "tap0", "br0"):
        ip(ns, "link", "del", dev)
    return took


def setup_figures(counts: list[int], reps: int) -> dict[int, tuple[float, float]]:
    out = {}
    for n in counts:
        with underlay(n + 1) as hosts, tempfile.TemporaryDirectory() as tmp:
            peers = [f"{UNDERLAY}.{i + 2}" for i in range(n)]
            plan = plan_for(hosts[0], 0, peers, Path(tmp))
            ours = [setup_bridgelab(hosts[0], plan) for _ in range(reps)]
            floor = [setup_iproute2(hosts[0], peers) for _ in range(reps)]
            out[n] = (statistics.median(ours), statistics.median(floor))
            print(f"{n} peers: bridgelab {out[n][0] * 1000:.1f} ms, ip -batch {out[n][1] * 1000:.1f} ms", flush=True)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reps", type=int, default=15)
    ap.add_argument("--pings", type=int, default=200)
    ap.add_argument("--seconds", type=int, default=5)
    args = ap.parse_args()
    if shutil.which("iperf3") is None:
        print("bench/peers.py needs iperf3: apt install iperf3", file=sys.stderr)
        return 2
    path = path_figures(args.pings, args.seconds)
    setup = setup_figures([1, 2, 4], args.reps)
    print(f"\npath, two guests ({args.pings} echoes, iperf3 {args.seconds} s):")
    print(f"  RTT        one bridge {path['rtt_bridge_ms']:.3f} ms   across VXLAN {path['rtt_vxlan_ms']:.3f} ms   "
          f"ratio {path['rtt_vxlan_ms'] / path['rtt_bridge_ms']:.2f}")
    print(f"  TCP        one bridge {path['tcp_bridge_gbit']:.2f} Gbit/s   across VXLAN "
          f"{path['tcp_vxlan_gbit']:.2f} Gbit/s   ratio {path['tcp_vxlan_gbit'] / path['tcp_bridge_gbit']:.2f}")
    print(f"\nhost-side setup, medians of {args.reps}:")
    for n, (ours, floor) in setup.items():
        print(f"  {n} peer{'s' if n > 1 else ' '}   bridgelab {ours * 1000:7.1f} ms   ip/bridge -batch + restore "
              f"{floor * 1000:6.1f} ms   ratio {ours / floor:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
