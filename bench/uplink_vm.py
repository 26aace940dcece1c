"""Ping RTT from a real riscv64 guest (TCG) to the LAN host, per uplink mode:
the labs of tests/test_uplink_vm.py, booted side by side."""

from __future__ import annotations

import contextlib
import re
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.test_uplink import LAN_HOST  # noqa: E402
from tests.test_uplink_vm import NAT_LAB, PROXY_LAB, _start  # noqa: E402
from tests.labrun import wait_settled  # noqa: E402

_RTT = re.compile(r"time=([\d.]+) ms")


def guest_rtts(count: int = 20) -> dict[str, float]:
    with tempfile.TemporaryDirectory(prefix="blbv") as d, contextlib.ExitStack() as stack:
        labs = {"nat": (_start(stack, Path(d, "nat"), NAT_LAB, "nft"), "n1"),
                "proxy-arp": (_start(stack, Path(d, "proxy"), PROXY_LAB, "nft"), "p1")}
        for u, _ in labs.values():
            wait_settled(u.lab)
        out = {}
        for mode, (u, guest) in labs.items():
            r = u.exec(guest, "ping", "-n", "-c", str(count), "-i", "0.2", LAN_HOST, timeout=120)
            out[mode] = statistics.median(float(x) for x in _RTT.findall(str(r["output"])))
        return out
