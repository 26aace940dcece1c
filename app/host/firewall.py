"""bridgelab's iptables rules: its own chains, one tagged jump into each, and
nothing else.

Why rules at all:
- Forwarding. Docker sets the FORWARD policy to DROP, and with br_netfilter
  (bridge-nf-call-iptables=1) even frames bridged between two taps traverse
  FORWARD. The per-bridge nf_call_iptables=0 does not help: the kernel calls
  iptables if the global sysctl *or* the bridge option is set. So the lab's
  traffic is accepted in our chain, jumped to first from DOCKER-USER (where
  Docker wants user rules; it jumps there before its own) or else FORWARD.
- NAT uplink: MASQUERADE scoped to `-s SUBNET ! -d SUBNET -o UPLINK`, and an
  MSS clamp for uplinks with a smaller MTU.
- Peers (VXLAN): the UDP port accepted from each declared peer in INPUT,
  and frames for the lab's VNI from anybody else dropped.
- Chains: BL-<hash>-FWD in filter (jumped to from DOCKER-USER or FORWARD),
  BL-<hash>-IN in filter (from INPUT, with peers only), BL-<hash>-NAT in nat
  (from POSTROUTING, nat mode only).

How:
- Chains are named BL-<lab hash>-FWD/NAT; every rule and jump carries the
  comment `bridgelab lab=NAME`. The whole set goes in with one
  `iptables-restore --noflush` (atomic: all or nothing), after removing any
  earlier copy, so it is never duplicated.
- Removal reads `iptables-save` and deletes exactly our jumps and chains, in
  every backend, whether or not the ledger survived. Chain policies and other
  rules are never touched.
- Rules go into the backend (nft or legacy) that holds the host's rules: the
  kernel runs both, so an ACCEPT in one does not undo a DROP in the other. A
  container ships its own iptables, whose default need not match the host's.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import re
import shlex
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .. import proc, settings
from ..errors import HostNetError
from ..model.plan import LabPlan, OverlayPlan
from ..model.spec import UplinkKind
from ..settings import IptablesBackend
from .ledger import FirewallEntry, Ledger

log = logging.getLogger(__name__)

BRIDGE_NF = Path("/proc/sys/net/bridge/bridge-nf-call-iptables")
BACKENDS = tuple(IptablesBackend)
_POLICY_DROP = re.compile(r"^:\S+ DROP ")


def bridged_frames_hit_iptables() -> bool:
    try:
        return BRIDGE_NF.read_text().strip() == "1"
    except OSError:  # br_netfilter not loaded: bridged frames never see iptables
        return False


# ---------------------------------------------------------------- backend


def _rule_lines(save_output: str) -> int:
    """How much of the host's firewall lives in this backend: rules, Docker's
    chains, and DROP policies (a DROP policy alone is what bites)."""
    return sum(1 for line in save_output.splitlines()
               if line.startswith(("-A", ":DOCKER")) or _POLICY_DROP.match(line))


def choose_backend(override: str | None, rules: dict[str, int], available: set[str],
                   source: str = "BRIDGELAB_IPTABLES") -> tuple[str, str]:
    """Pure: (backend, reason). The backend holding the host's rules wins; nft on a tie."""
    if override:
        if override not in BACKENDS:
            raise HostNetError(f"{source}={override!r}: expected one of {', '.join(BACKENDS)}")
        return override, source
    usable = [b for b in BACKENDS if b in available]
    if not usable:
        raise HostNetError("neither iptables-nft nor iptables-legacy is installed")
    best = max(usable, key=lambda b: (rules.get(b, 0), b is IptablesBackend.nft))
    return best, "rules present: " + ", ".join(f"{b} {rules.get(b, 0)}" for b in usable)


def available_backends() -> set[str]:
    return {b for b in BACKENDS if shutil.which(f"iptables-{b}")}


def save(cmd: str) -> str:
    return proc.run([f"{cmd}-save"], check=False).stdout


def read_saves() -> dict[str, str]:
    """`iptables-save` of every installed backend, keyed by backend name."""
    return {b: save(f"iptables-{b}") for b in sorted(available_backends())}


def iptables(lab_choice: str | None, saves: dict[str, str]) -> str:
    """The iptables command for the host's backend: $BRIDGELAB_IPTABLES, else
    the lab file's `firewall.backend`, else the backend holding the host's rules."""
    env = settings.current().iptables
    override, source = (env.value, "BRIDGELAB_IPTABLES") if env else (lab_choice, "firewall.backend")
    backend, reason = choose_backend(override, {b: _rule_lines(t) for b, t in saves.items()}, set(saves), source)
    log.info("iptables backend: %s (%s)", backend, reason)
    return f"iptables-{backend}"


# ---------------------------------------------------------------- the rule set (pure)


def lab_tag(lab: str) -> str:
    return f"bridgelab lab={lab}"


def chain_prefix(lab: str) -> str:
    return "BL-" + hashlib.sha256(lab.encode()).hexdigest()[:8] + "-"


@dataclass(frozen=True)
class Chain:
    table: str
    name: str
    parent: str  # the built-in (or DOCKER-USER) chain that jumps here, first
    rules: tuple[tuple[str, ...], ...]


@dataclass(frozen=True)
class Ruleset:
    tag: str
    chains: tuple[Chain, ...] = field(default=())
    cmd: str | None = None  # the iptables it went into, once installed
    managers: tuple[str, ...] = ()  # firewalld / ufw, found on the host when the rules went in

    def chain(self, table: str) -> Chain | None:
        return next((c for c in self.chains if c.table == table), None)


def vxlan_rules(overlay: OverlayPlan) -> tuple[tuple[str, ...], ...]:
    """The VXLAN port open to the declared peers only. Frames from anybody
    else for this lab's VNI are dropped: the kernel would put them on the
    bridge. The drop matches the VNI in the VXLAN header (u32: the UDP header
    starts at the IP header's length, the VNI is the top 24 bits of the
    VXLAN header's second word, 12 bytes in), so other VXLAN users of the
    same port (Docker's overlay networks use 4789 too) are left alone."""
    port = ("-p", "udp", "--dport", str(overlay.port))
    accept = tuple(("-s", str(peer), *port, "-j", "ACCEPT") for peer in overlay.peers)
    return (*accept, (*port, "-m", "u32", "--u32", f"0>>22&0x3C@12>>8={overlay.vni}", "-j", "DROP"))


def lab_ruleset(plan: LabPlan, bridged: bool, docker_user: bool) -> Ruleset:
    """What the lab needs: nothing without an uplink or peers unless bridged
    frames meet iptables; with an uplink, forwarding both ways, and NAT for
    `nat`; with peers, the VXLAN port open to them alone."""
    tag, prefix, br = lab_tag(plan.name), chain_prefix(plan.name), plan.bridge
    up = plan.uplink
    if up is None and not bridged and plan.overlay is None:
        return Ruleset(tag)
    fwd: list[tuple[str, ...]] = [("-i", br, "-o", br, "-j", "ACCEPT")]
    chains = []
    if up is not None:
        net = str(plan.subnet)
        if up.mode is UplinkKind.nat:
            fwd += [("-i", br, "-o", up.interface, "-s", net, "-j", "ACCEPT"),
                    ("-i", up.interface, "-o", br, "-d", net, "-m", "conntrack", "--ctstate",
                     "RELATED,ESTABLISHED", "-j", "ACCEPT")]
            chains.append(Chain("nat", prefix + "NAT", "POSTROUTING",
                                (("-s", net, "!", "-d", net, "-o", up.interface, "-j", "MASQUERADE"),)))
        else:  # proxy-arp: LAN hosts reach the guests directly, by design
            fwd += [("-i", br, "-o", up.interface, "-j", "ACCEPT"),
                    ("-i", up.interface, "-o", br, "-j", "ACCEPT")]
        # Clamp MSS to the path MTU for uplinks with a smaller MTU (PPPoE,
        # VPN). In filter's FORWARD, not mangle: TCPMSS does not end the
        # chain, and no extra table is loaded on a host that had none.
        clamp = ("-p", "tcp", "--tcp-flags", "SYN,RST", "SYN", "-j", "TCPMSS", "--clamp-mss-to-pmtu")
        fwd[:0] = [("-i", br, "-o", up.interface, *clamp), ("-i", up.interface, "-o", br, *clamp)]
    chains.insert(0, Chain("filter", prefix + "FWD", "DOCKER-USER" if docker_user else "FORWARD", tuple(fwd)))
    if plan.overlay is not None:
        chains.insert(1, Chain("filter", prefix + "IN", "INPUT", vxlan_rules(plan.overlay)))
    return Ruleset(tag, tuple(chains))


def _comment(tag: str) -> str:
    return f'-m comment --comment "{tag}"'


def restore_input(rs: Ruleset) -> str:
    """`iptables-restore --noflush` input that creates our chains and jumps.
    Declaring a user chain creates (or empties) it; built-in chains are never
    declared, so their policies are untouched."""
    out = []
    for table in dict.fromkeys(c.table for c in rs.chains):
        out.append(f"*{table}")
        mine = [c for c in rs.chains if c.table == table]
        out += [f":{c.name} - [0:0]" for c in mine]
        for c in mine:
            # Plain join: every token is an option, a validated interface
            # name or a CIDR (iptables-restore would take a quoted '!' literally).
            out += [f"-A {c.name} {' '.join(r)} {_comment(rs.tag)}" for r in c.rules]
            out.append(f"-I {c.parent} 1 {_comment(rs.tag)} -j {c.name}")
        out.append("COMMIT")
    return "\n".join(out) + "\n"


def _tagged(args: list[str], tag: str) -> bool:
    return any(a == "--comment" and i + 1 < len(args) and args[i + 1] == tag for i, a in enumerate(args))


def removal_input(save_output: str, tag: str, prefix: str) -> str | None:
    """`iptables-restore --noflush` input that deletes every jump tagged `tag`
    and every chain named `prefix*`, read from the current `iptables-save`.
    None when there is nothing of ours."""
    tables: dict[str, list[str]] = {}
    chains: dict[str, list[str]] = {}
    table = ""
    for line in save_output.splitlines():
        if line.startswith("*"):
            table = line[1:].strip()
        elif line.startswith(":") and line[1:].startswith(prefix):
            chains.setdefault(table, []).append(line[1:].split()[0])
        elif line.startswith("-A "):
            args = shlex.split(line)
            if not args[1].startswith(prefix) and _tagged(args, tag):
                tables.setdefault(table, []).append("-D " + line[3:])
    if not tables and not chains:
        return None
    out = []
    for t in dict.fromkeys([*tables, *chains]):
        out += [f"*{t}", *tables.get(t, [])]
        out += [f"-F {c}" for c in chains.get(t, [])] + [f"-X {c}" for c in chains.get(t, [])]
        out.append("COMMIT")
    return "\n".join(out) + "\n"


def normalize_save(save_output: str) -> list[str]:
    """iptables-save without its timestamps and packet counters: what must be
    identical before a lab starts and after it stops."""
    return [re.sub(r"\[\d+:\d+\]", "[0:0]", line) for line in save_output.splitlines()
            if line and not line.startswith("#")]


# ---------------------------------------------------------------- effects


def _restore(cmd: str, text: str) -> None:
    proc.run([f"{cmd}-restore", "-w", "--noflush"], input=text)


def remove_lab(lab: str, backends: list[str] | None = None) -> list[str]:
    """Delete our chains and tagged jumps for `lab` in every backend (or the
    ones named). Returns the backends that had any."""
    cleaned = []
    for cmd in backends or [f"iptables-{b}" for b in sorted(available_backends())]:
        text = removal_input(save(cmd), lab_tag(lab), chain_prefix(lab))
        if text is not None:
            _restore(cmd, text)
            cleaned.append(cmd)
            log.info("%s: removed the rules of lab %s", cmd, lab)
    return cleaned


def table_lines(save_output: str, table: str) -> list[str]:
    """Pure: the chain and rule lines of one table in iptables-save output."""
    lines, inside = [], False
    for line in save_output.splitlines():
        if line.startswith("*"):
            inside = line[1:].strip() == table
        elif inside and line != "COMMIT" and not line.startswith("#"):
            lines.append(line)
    return lines


def has_chain(save_output: str, table: str, chain: str) -> bool:
    return any(line.startswith(f":{chain} ") for line in table_lines(save_output, table))


def apply(ledger: Ledger, plan: LabPlan) -> Ruleset:
    """Sweep the lab's earlier rules (a killed run's, found by tag) from every
    backend, then install what it needs. Each backend's iptables-save is read
    once; the chosen backend gets a single iptables-restore (sweep + install)."""
    saves = read_saves()
    tag, prefix = lab_tag(plan.name), chain_prefix(plan.name)
    stale = {f"iptables-{b}": removal_input(text, tag, prefix) for b, text in saves.items()}
    bridged = bridged_frames_hit_iptables()
    cmd = None
    if plan.uplink is not None or plan.overlay is not None or bridged:
        try:
            cmd = iptables(plan.iptables_backend, saves)
        except HostNetError as e:
            if plan.uplink is not None or plan.overlay is not None:
                raise
            log.warning("bridged frames go through iptables here, but %s: "
                        "if guests cannot reach each other, allow forwarding on %s", e, plan.bridge)
    for other, text in stale.items():
        if text is not None and other != cmd:
            _restore(other, text)
            log.info("%s: removed the rules of an earlier run of lab %s", other, plan.name)
    if cmd is None:
        return Ruleset(tag)
    current = saves.get(cmd.removeprefix("iptables-")) or save(cmd)
    rs = lab_ruleset(plan, bridged, docker_user=has_chain(current, "filter", "DOCKER-USER"))
    present = tables_in(current)
    new_chains = _absent_nft_base_chains(rs, present) if cmd == "iptables-nft" else []
    new_tables = list(dict.fromkeys(c.table for c in rs.chains if c.table not in present))  # FWD and IN share filter
    ledger.add(FirewallEntry(cmd=cmd, lab=plan.name, new_tables=new_tables, new_chains=new_chains))
    _restore(cmd, (stale.get(cmd) or "") + restore_input(rs))
    rs = dataclasses.replace(rs, cmd=cmd, managers=tuple(host_firewalls(saves, _nft_tables())))
    log.info("%s: %s", cmd, "; ".join(f"{c.table} {c.name} <- {c.parent} ({len(c.rules)} rules)"
                                      for c in rs.chains))
    return rs


def refresh_vxlan_chain(rs: Ruleset, overlay: OverlayPlan) -> Ruleset:
    """The lab's INPUT chain rewritten for a new list of peers, in one
    iptables-restore (declaring a user chain empties it; its jump stays)."""
    chain = next((c for c in rs.chains if c.parent == "INPUT"), None)
    if rs.cmd is None or chain is None:
        return rs
    rules = vxlan_rules(overlay)
    text = "\n".join(["*filter", f":{chain.name} - [0:0]",
                      *(f"-A {chain.name} {' '.join(r)} {_comment(rs.tag)}" for r in rules), "COMMIT"]) + "\n"
    _restore(rs.cmd, text)
    new = dataclasses.replace(chain, rules=rules)
    return dataclasses.replace(rs, chains=tuple(new if c is chain else c for c in rs.chains))


def remove_recorded(ledger: Ledger) -> list[str]:
    """Remove the rules of every lab in the ledger, from every backend: the
    ledger says which labs, the tags say which rules."""
    cleaned: list[str] = []
    for e in ledger.of(FirewallEntry):
        if ledger.is_current(e) and e.lab is not None:
            cleaned += remove_lab(e.lab)
            if e.cmd == "iptables-nft":
                _drop_empty_nft_chains(e.new_chains)
                _drop_empty_nft_tables(e.new_tables)
        ledger.drop(e)
    return cleaned


def _nft_chain(table: str, chain: str) -> dict[str, Any] | None:
    """`nft -j list chain ip TABLE CHAIN`, or None when it does not exist."""
    if not shutil.which("nft"):
        return None
    out = proc.run(["nft", "-j", "list", "chain", "ip", table, chain], check=False)
    if out.returncode != 0:
        return None
    try:
        parsed: dict[str, Any] = json.loads(out.stdout)
    except ValueError:
        return None
    return parsed


def _absent_nft_base_chains(rs: Ruleset, present: set[str]) -> list[str]:
    """The built-in chains our jumps go into that iptables-nft will create
    (it makes a base chain on first use, and leaves it): in tables that are
    there already (a new table goes whole)."""
    return [f"{c.table} {c.parent}" for c in rs.chains
            if c.table in present and c.parent in _BUILTIN and _nft_chain(c.table, c.parent) is None]


def nft_chain_is_empty(listing: dict[str, Any]) -> bool:
    """Pure: an `nft -j list chain` holds no rule and accepts by policy."""
    items = listing.get("nftables", [])
    chains = [i["chain"] for i in items if "chain" in i]
    return not any("rule" in i for i in items) and all(c.get("policy", "accept") == "accept" for c in chains)


def _drop_empty_nft_chains(chains: list[str]) -> None:
    """The base chains iptables-nft made for our jumps, if still empty, so
    `nft list ruleset` reads as before."""
    for entry in chains:
        table, chain = entry.split()
        listing = _nft_chain(table, chain)
        if listing is not None and nft_chain_is_empty(listing):
            proc.run(["nft", "delete", "chain", "ip", table, chain], check=False)


def tables_in(save_output: str) -> set[str]:
    return {line[1:].strip() for line in save_output.splitlines() if line.startswith("*")}


_BUILTIN = frozenset({"PREROUTING", "INPUT", "FORWARD", "OUTPUT", "POSTROUTING"})


def empty_table(save_output: str, table: str) -> bool:
    """Pure: the table holds no rule, no user chain and no DROP policy."""
    return all(line.startswith(":") and line[1:].split()[0] in _BUILTIN and line.split()[1] == "ACCEPT"
               for line in table_lines(save_output, table))


def _drop_empty_nft_tables(tables: list[str]) -> None:
    """iptables-nft creates a table (nat, mangle) on first use and leaves it
    behind, empty: delete the ones bridgelab brought in, if still empty, so
    `iptables-save` reads as before. (The legacy backend cannot: a table is a
    kernel module there, and stays loaded.)"""
    if not tables or not shutil.which("nft"):
        return
    current = save("iptables-nft")
    for table in tables:
        if table in tables_in(current) and empty_table(current, table):
            proc.run(["nft", "delete", "table", "ip", table], check=False)


def rule_counters(cmd: str, table: str, chain: str) -> list[int]:
    """Packets matched by each rule of `chain`, in order."""
    out = proc.run([cmd, "-w", "-t", table, "-L", chain, "-n", "-v", "-x"], check=False).stdout
    return [int(line.split()[0]) for line in out.splitlines()[2:] if line.strip()]


# ---------------------------------------------------------------- other firewalls


def host_firewalls(saves: dict[str, str], nft_tables: str) -> list[str]:
    """Pure: which host firewall managers are active ('firewalld', 'ufw')."""
    found = []
    if re.search(r"^table inet firewalld\b", nft_tables, re.MULTILINE):
        found.append("firewalld")
    if any(":ufw-" in s for s in saves.values()):
        found.append("ufw")
    return found


def firewall_hints(managers: list[str], plan: LabPlan) -> list[str]:
    """The exact commands that let lab traffic through each manager."""
    br, up = plan.bridge, plan.uplink.interface if plan.uplink else None
    hints = []
    if "firewalld" in managers:
        # firewalld filters in its own nft table: an ACCEPT in iptables is not
        # final there, so its zones must let the lab through.
        hints.append(f"firewalld: firewall-cmd --zone=trusted --add-interface={br} "
                     f"(and again with --permanent to keep it)")
        if plan.uplink is not None and plan.uplink.mode is UplinkKind.proxy_arp:
            hints.append("firewalld: firewall-cmd --permanent --new-policy bridgelab-lan && "
                         "firewall-cmd --permanent --policy bridgelab-lan --add-ingress-zone "
                         f"$(firewall-cmd --get-zone-of-interface={up}) && firewall-cmd --permanent --policy "
                         "bridgelab-lan --add-egress-zone trusted && firewall-cmd --permanent --policy "
                         "bridgelab-lan --set-target ACCEPT && firewall-cmd --reload")
    if "ufw" in managers:
        hints.append(f"ufw: ufw route allow in on {br}" + (f" out on {up}" if up else ""))
        if up:
            hints.append(f"ufw: ufw route allow in on {up} out on {br}")
    return hints


def _nft_tables() -> str:
    return proc.run(["nft", "list", "tables"], check=False).stdout if shutil.which("nft") else ""


__all__ = ["Ruleset", "apply", "bridged_frames_hit_iptables", "chain_prefix", "choose_backend", "firewall_hints",
           "host_firewalls", "iptables", "lab_ruleset", "lab_tag", "normalize_save", "read_saves",
           "refresh_vxlan_chain", "remove_lab", "remove_recorded", "removal_input", "restore_input", "rule_counters",
           "vxlan_rules"]
