"""The one iptables rule bridgelab may need: let bridged guest<->guest frames
through FORWARD when br_netfilter sends them there.

With br_netfilter loaded and net.bridge.bridge-nf-call-iptables=1 (Docker
does both), frames bridged between two taps traverse the iptables FORWARD
chain, whose policy Docker sets to DROP. The per-bridge nf_call_iptables=0
does not help: the kernel calls iptables if the global sysctl *or* the bridge
option is set. So one ACCEPT rule, tagged with the lab, goes into DOCKER-USER
(where Docker wants user rules) or FORWARD; it is recorded in the ledger,
checked with -C before adding, and removed at teardown or by the next sweep.
The chain policy is never changed.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

from . import proc
from .hostnet import Ledger

log = logging.getLogger(__name__)

BRIDGE_NF = Path("/proc/sys/net/bridge/bridge-nf-call-iptables")


def bridged_frames_hit_iptables() -> bool:
    try:
        return BRIDGE_NF.read_text().strip() == "1"
    except OSError:  # br_netfilter not loaded: bridged frames never see iptables
        return False


def rule_args(bridge: str, tag: str) -> list[str]:
    return ["-i", bridge, "-o", bridge, "-m", "comment", "--comment", tag, "-j", "ACCEPT"]


def _chain_exists(chain: str) -> bool:
    return proc.run(["iptables", "-w", "-n", "-L", chain], check=False).returncode == 0


def _present(chain: str, args: list[str]) -> bool:
    return proc.run(["iptables", "-w", "-C", chain, *args], check=False).returncode == 0


def allow_bridged(ledger: Ledger, bridge: str, tag: str) -> bool:
    """Add the ACCEPT rule if bridged frames would meet iptables. True if added."""
    if not bridged_frames_hit_iptables():
        return False
    if shutil.which("iptables") is None:
        log.warning("bridged frames go through iptables here, but iptables is not installed: "
                    "if guests cannot reach each other, allow forwarding on %s", bridge)
        return False
    chain = "DOCKER-USER" if _chain_exists("DOCKER-USER") else "FORWARD"
    args = rule_args(bridge, tag)
    if _present(chain, args):
        return False
    proc.run(["iptables", "-w", "-I", chain, "1", *args])
    ledger.add({"kind": "iptables", "chain": chain, "args": args})
    log.info("iptables: accept bridged traffic on %s in %s", bridge, chain)
    return True


def remove_recorded(ledger: Ledger) -> list[str]:
    """Delete the rules in the ledger (only exact, still-present matches)."""
    removed: list[str] = []
    if shutil.which("iptables") is None:
        return removed
    for e in [e for e in ledger.entries if e["kind"] == "iptables"]:
        if ledger.is_current(e) and _present(e["chain"], e["args"]):
            proc.run(["iptables", "-w", "-D", e["chain"], *e["args"]])
            removed.append(e["chain"])
        ledger.drop(e)
    return removed


__all__ = ["allow_bridged", "bridged_frames_hit_iptables", "remove_recorded", "rule_args"]
