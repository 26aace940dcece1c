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

The rule must go into the backend (nft or legacy) the host's own rules use:
the kernel runs both, so an ACCEPT in one does not undo a DROP in the other.
A container ships its own iptables, whose default need not match the host's.
"""

from __future__ import annotations

import functools
import logging
import os
import re
import shutil
from pathlib import Path

from . import proc
from .errors import HostNetError
from .hostnet import Ledger

log = logging.getLogger(__name__)

BRIDGE_NF = Path("/proc/sys/net/bridge/bridge-nf-call-iptables")


def bridged_frames_hit_iptables() -> bool:
    try:
        return BRIDGE_NF.read_text().strip() == "1"
    except OSError:  # br_netfilter not loaded: bridged frames never see iptables
        return False


BACKENDS = ("nft", "legacy")


_POLICY_DROP = re.compile(r"^:\S+ DROP ")


def _rule_lines(save_output: str) -> int:
    """How much of the host's firewall lives in this backend: rules, Docker's
    chains, and DROP policies (a DROP policy alone is what bites)."""
    return sum(1 for line in save_output.splitlines()
               if line.startswith(("-A", ":DOCKER")) or _POLICY_DROP.match(line))


def choose_backend(override: str | None, rules: dict[str, int], available: set[str]) -> tuple[str, str]:
    """Pure: (backend, reason). The backend holding the host's rules wins; nft on a tie."""
    if override:
        if override not in BACKENDS:
            raise HostNetError(f"BRIDGELAB_IPTABLES={override!r}: expected one of {', '.join(BACKENDS)}")
        return override, "BRIDGELAB_IPTABLES"
    usable = [b for b in BACKENDS if b in available]
    if not usable:
        raise HostNetError("neither iptables-nft nor iptables-legacy is installed")
    best = max(usable, key=lambda b: (rules.get(b, 0), b == "nft"))
    return best, "rules present: " + ", ".join(f"{b} {rules.get(b, 0)}" for b in usable)


@functools.cache
def iptables() -> str:
    """The iptables command for the host's backend, decided once and logged."""
    available = {b for b in BACKENDS if shutil.which(f"iptables-{b}")}
    rules = {b: _rule_lines(proc.run([f"iptables-{b}-save"], check=False).stdout) for b in available}
    backend, reason = choose_backend(os.environ.get("BRIDGELAB_IPTABLES"), rules, available)
    log.info("iptables backend: %s (%s)", backend, reason)
    return f"iptables-{backend}"


def rule_args(bridge: str, tag: str) -> list[str]:
    return ["-i", bridge, "-o", bridge, "-m", "comment", "--comment", tag, "-j", "ACCEPT"]


def _chain_exists(cmd: str, chain: str) -> bool:
    return proc.run([cmd, "-w", "-n", "-L", chain], check=False).returncode == 0


def _present(cmd: str, chain: str, args: list[str]) -> bool:
    return proc.run([cmd, "-w", "-C", chain, *args], check=False).returncode == 0


def allow_bridged(ledger: Ledger, bridge: str, tag: str) -> bool:
    """Add the ACCEPT rule if bridged frames would meet iptables. True if added."""
    if not bridged_frames_hit_iptables():
        return False
    try:
        cmd = iptables()
    except HostNetError as e:
        log.warning("bridged frames go through iptables here, but %s: "
                    "if guests cannot reach each other, allow forwarding on %s", e, bridge)
        return False
    chain = "DOCKER-USER" if _chain_exists(cmd, "DOCKER-USER") else "FORWARD"
    args = rule_args(bridge, tag)
    if _present(cmd, chain, args):
        return False
    proc.run([cmd, "-w", "-I", chain, "1", *args])
    ledger.add({"kind": "iptables", "cmd": cmd, "chain": chain, "args": args})
    log.info("%s: accept bridged traffic on %s in %s", cmd, bridge, chain)
    return True


def remove_recorded(ledger: Ledger) -> list[str]:
    """Delete the rules in the ledger (only exact, still-present matches)."""
    removed: list[str] = []
    for e in [e for e in ledger.entries if e["kind"] == "iptables"]:
        cmd = e.get("cmd", "iptables")
        if ledger.is_current(e) and shutil.which(cmd) and _present(cmd, e["chain"], e["args"]):
            proc.run([cmd, "-w", "-D", e["chain"], *e["args"]])
            removed.append(e["chain"])
        ledger.drop(e)
    return removed


__all__ = ["allow_bridged", "bridged_frames_hit_iptables", "choose_backend", "iptables", "remove_recorded", "rule_args"]
