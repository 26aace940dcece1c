"""Undo what a ledger records, in the one order that is safe.

Used by a lab that stops, by the next start's sweep of a killed run, by a
start that failed halfway, and by `bridgelab cleanup`:

1. processes (qemu holds the taps open);
2. firewall rules (they name the bridge and the uplink);
3. proxy-ARP routes, then sysctls, newest first (ip_forward last, because
   writing it resets per-interface settings);
4. links, taps before bridges.

Every step acts only on objects that are still the ones recorded.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from . import firewall, links, uplink
from .ledger import Ledger


@dataclass
class Undone:
    killed: list[str] = field(default_factory=list)  # "qemu rv1 (pid 1234)"
    rules: list[str] = field(default_factory=list)  # the iptables commands that had the lab's rules
    routes: list[str] = field(default_factory=list)
    sysctls: list[str] = field(default_factory=list)  # "net.ipv4.ip_forward=0"
    links: list[str] = field(default_factory=list)

    def lines(self) -> list[str]:
        return ([f"killed {p}" for p in self.killed] + [f"removed the lab's rules from {c}" for c in self.rules]
                + [f"removed route {r}" for r in self.routes] + [f"restored {s}" for s in self.sysctls]
                + [f"removed {link}" for link in self.links])

    def __bool__(self) -> bool:
        return bool(self.killed or self.rules or self.routes or self.sysctls or self.links)


def undo_recorded(ledger: Ledger) -> Undone:
    killed = links.kill_recorded_processes(ledger)
    rules = firewall.remove_recorded(ledger)
    routes, sysctls = uplink.teardown(ledger)
    net = links.HostNet(ledger)
    try:
        removed_links = net.teardown()
    finally:
        net.close()
    return Undone(killed=killed, rules=rules, routes=routes, sysctls=sysctls, links=removed_links)


__all__ = ["Undone", "undo_recorded"]
