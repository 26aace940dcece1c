"""What peers tell each other, and the clashes found in it (pure)."""

from __future__ import annotations

import ipaddress

from bridgelab.model.peering import Declaration, PeerGuest, clashes


def decl(host: str, bridge: str, guests: list[tuple[str, str, str]], **extra: object) -> Declaration:
    base: dict[str, object] = {"lab": "l", "host": host, "bridge": bridge, "bridge_mac": f"02:00:00:00:00:{host[-1]}0",
                               "vni": 7, "port": 4789,
                               "guests": [PeerGuest(name=n, ip=ipaddress.IPv4Address(ip), mac=m, state="ready")
                                          for n, ip, m in guests]}
    return Declaration.model_validate({**base, **extra})


MINE = decl("172.31.0.1", "10.0.0.251/24", [("rv1", "10.0.0.1", "02:00:00:00:01:01")])


def test_distinct_hosts_do_not_clash():
    theirs = decl("172.31.0.2", "10.0.0.252/24", [("rv2", "10.0.0.2", "02:00:00:00:02:02")])
    assert clashes(MINE, theirs) == []


def test_a_shared_address_mac_or_name_names_both_sides_and_the_guest():
    theirs = decl("172.31.0.2", "10.0.0.252/24", [("rv1", "10.0.0.1", "02:00:00:00:01:01")])
    found = clashes(MINE, theirs)
    assert {c.guest for c in found} == {"rv1"}
    assert [c.message for c in found] == [
        "guest rv1 on this host (172.31.0.1) and guest rv1 on peer 172.31.0.2 share the address 10.0.0.1",
        "guest rv1 on this host (172.31.0.1) and guest rv1 on peer 172.31.0.2 share the MAC 02:00:00:00:01:01",
        "guest rv1 on this host (172.31.0.1) and guest rv1 on peer 172.31.0.2 share the name rv1"]


def test_bridge_addresses_and_lab_settings_clash_for_the_whole_lab():
    theirs = decl("172.31.0.2", "10.0.0.251/24", [("rv2", "10.0.0.251", "02:00:00:00:02:02")], vni=8, lab="m")
    found = clashes(MINE, theirs)
    assert all(c.guest is None for c in found)
    text = "\n".join(c.message for c in found)
    assert "peer 172.31.0.2 runs lab 'm', this host (172.31.0.1) lab 'l'" in text
    assert "uses VNI 8 on UDP port 4789, this host (172.31.0.1) VNI 7 on 4789" in text
    assert "both have the bridge address 10.0.0.251" in text
    assert "guest rv2 on peer 172.31.0.2 has 10.0.0.251, this host's bridge address" in text
    other_net = decl("172.31.0.2", "10.1.0.252/24", [])
    assert ["peers share one subnet" in c.message for c in clashes(MINE, other_net)] == [True]


def test_a_guest_on_a_peers_bridge_address_is_that_guests_clash():
    theirs = decl("172.31.0.2", "10.0.0.1/24", [])
    assert [(c.guest, c.message) for c in clashes(MINE, theirs)] == [
        ("rv1", "guest rv1 on this host (172.31.0.1) has 10.0.0.1, the bridge address on peer 172.31.0.2")]
