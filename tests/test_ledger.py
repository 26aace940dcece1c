"""The ledger's file format: typed entries, stamped on add, read back as
the same types; a damaged file is refused with the line that is wrong."""

from __future__ import annotations

from pathlib import Path

import pytest
from bridgelab.errors import HostNetError
from bridgelab.host.ledger import FirewallEntry, Ledger, LinkEntry, ProcessEntry, RouteEntry, SysctlEntry


def test_entries_round_trip_typed_and_stamped(tmp_path: Path):
    ledger = Ledger(tmp_path / "ledger.json")
    link = ledger.add(LinkEntry(ifname="br0", ifindex=7, link_kind="bridge"))
    ledger.add(ProcessEntry(pid=42, start_time=1000, what="qemu rv1"))
    ledger.add(SysctlEntry(key="net/ipv4/ip_forward", old="0", new="1"))
    ledger.add(RouteEntry(dst="10.0.0.5/32", oif=7))
    ledger.add(FirewallEntry(cmd="iptables-nft", lab="lab", new_tables=["nat"]))
    assert ledger.is_current(link) and link.time > 0

    again = Ledger(tmp_path / "ledger.json")
    assert again.entries == ledger.entries
    assert [type(e) for e in again.entries] == [LinkEntry, ProcessEntry, SysctlEntry, RouteEntry, FirewallEntry]
    assert again.of(ProcessEntry)[0].pid == 42 and again.find_link("br0") == link
    assert again.kinds() == {"link": 1, "process": 1, "sysctl": 1, "route": 1, "firewall": 1}

    again.drop(again.of(RouteEntry)[0])
    assert [e.kind for e in Ledger(tmp_path / "ledger.json").entries] == ["link", "process", "sysctl", "firewall"]


def test_an_old_iptables_entry_still_reads_as_a_firewall_entry(tmp_path: Path):
    path = tmp_path / "ledger.json"
    path.write_text('{"kind": "iptables", "cmd": "iptables-legacy", "lab": "old", "boot_id": "b", "netns": 1}\n')
    [e] = Ledger(path).of(FirewallEntry)
    assert (e.lab, e.cmd, e.new_tables) == ("old", "iptables-legacy", [])


@pytest.mark.parametrize("line, why", [
    ("not json", "line 2: Invalid JSON"),
    ('{"kind": "volume", "name": "x"}', "line 2: Input tag 'volume'"),
    ('{"kind": "link", "ifname": "br0"}', "line 2: Field required"),
])
def test_a_damaged_ledger_is_refused_naming_the_line(tmp_path: Path, line: str, why: str):
    path = tmp_path / "ledger.json"
    path.write_text('{"kind": "route", "dst": "10.0.0.5/32", "oif": 7}\n' + line + "\n")
    with pytest.raises(HostNetError, match="corrupt") as e:
        Ledger(path)
    assert why in str(e.value) and str(path) in str(e.value)
