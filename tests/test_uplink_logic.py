"""Pure uplink logic: lab-file rules, mode choice, the rule set, sweeping by
tag from iptables-save text, self-test diagnosis, the user-mode NIC."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest
from bridgelab.errors import SpecError
from bridgelab.guest import commands, nm_profile, qemu_argv
from bridgelab.host import firewall, uplink_diagnosis
from bridgelab.model.plan import HostFacts, UplinkFacts, choose_uplink_mode, derive_ssh_port, make_plan
from bridgelab.model.spec import Uplink, parse_lab_data

from .test_plan import image

WIFI = UplinkFacts(interface="wlp2s0", address=ipaddress.IPv4Interface("192.168.1.23/24"),
                   gateway=ipaddress.IPv4Address("192.168.1.1"), wireless=True, detected=True)
WIRED = UplinkFacts(interface="eno1", address=ipaddress.IPv4Interface("192.168.1.23/24"),
                    gateway=ipaddress.IPv4Address("192.168.1.1"), wireless=False, detected=False)


def lab(uplink=None, bridge=None, guests=None):
    return {"name": "t", "bridge": bridge if bridge is not None else {"name": "br0", "address": "10.198.101.114/24"},
            "uplink": uplink or {"mode": "none"},
            "guests": guests or [{"name": "a", "image": "i"}]}


def plan(data, facts=WIFI):
    spec = parse_lab_data(data)
    return make_plan(spec, {g.image: image(g.arch) for g in spec.guests},
                     HostFacts(arch="x86_64", kvm=False, uplink=facts), Path("/run/bl/t"))


def issues(data, facts=WIFI):
    with pytest.raises(SpecError) as e:
        plan(data, facts)
    return {i.path: i.message for i in e.value.issues}


# ---------------------------------------------------------------- lab file and plan


@pytest.mark.parametrize("facts, lan, mode, words", [
    (WIFI, False, "nat", "wireless"),
    (WIFI, True, "proxy-arp", "cannot be a bridge port"),
    (WIRED, False, "nat", "wired"),
    (WIRED, True, "proxy-arp", "take its address away"),
])
def test_auto_mode_choice_is_explained(facts, lan, mode, words):
    chosen, reason = choose_uplink_mode(Uplink(mode="auto", lan_reachable=lan), facts)
    assert chosen == mode and words in reason and facts.interface in reason


def test_proxy_arp_guests_take_lan_addresses_and_the_lan_gateway():
    p = plan(lab({"mode": "proxy-arp"}, bridge={"name": "br0"},
                 guests=[{"name": "a", "image": "i", "ip": "192.168.1.201"}]))
    assert p.bridge_address is None and str(p.host_address) == "192.168.1.23/24"
    assert str(p.guests[0].ip) == "192.168.1.201/24" and str(p.guests[0].gateway) == "192.168.1.1"
    assert p.uplink is not None and str(p.uplink.target) == "192.168.1.1"


def test_proxy_arp_lab_file_errors_name_the_field():
    found = issues(lab({"mode": "proxy-arp"}, guests=[{"name": "a", "image": "i"}]))
    assert "explicit ip" in found["guests[0].ip"] and "remove it" in found["bridge.address"]
    found = issues(lab({"mode": "proxy-arp"}, bridge={"name": "br0"},
                       guests=[{"name": "a", "image": "i", "ip": "10.9.9.9"},
                               {"name": "b", "image": "i", "ip": "192.168.1.1"}]))
    assert "outside" in found["guests[0].ip"] and "LAN gateway" in found["guests[1].ip"]
    assert "required" in issues(lab({"mode": "nat"}, bridge={"name": "br0"}))["bridge.address"]


def test_nat_refuses_a_bridge_subnet_that_overlaps_the_lan():
    found = issues(lab({"mode": "nat"}, bridge={"name": "br0", "address": "192.168.1.250/24"}))
    assert "overlaps" in found["bridge.address"]
    assert "own bridge" in issues(lab({"mode": "nat", "interface": "br0"}),
                                  facts=UplinkFacts("br0", None, None, False, False))["uplink.interface"]


def test_uplink_and_user_nic_fields_are_validated():
    with pytest.raises(SpecError) as e:
        parse_lab_data(lab({"mode": "bridge", "interface": "x" * 16, "target": "1.2.3"},
                           guests=[{"name": "a", "image": "i", "user_nic": {"ssh_port": 22}},
                                   {"name": "b", "image": "i", "user_nic": {"ssh_port": 2222}},
                                   {"name": "c", "image": "i", "user_nic": {"ssh_port": 2222}}]))
    paths = {i.path for i in e.value.issues}
    assert {"uplink.mode", "uplink.interface", "uplink.target", "guests[0].user_nic.ssh_port",
            "guests[2].user_nic.ssh_port"} <= paths


def test_user_nic_ports_are_stable_and_distinct():
    taken = {derive_ssh_port("t", "a", set())}
    assert derive_ssh_port("t", "a", set()) in taken and derive_ssh_port("t", "a", taken) not in taken
    p = plan(lab(guests=[{"name": "a", "image": "i", "user_nic": True},
                         {"name": "b", "image": "i", "user_nic": {"ssh_port": 2222, "restrict": False}},
                         {"name": "c", "image": "i"}]))
    a, b, c = p.guests
    assert a.user_nic and b.user_nic and c.user_nic is None
    assert 20000 <= a.user_nic.ssh_port < 30000 and b.user_nic.ssh_port == 2222
    assert a.user_nic.mac != a.mac
    joined = " ".join(qemu_argv.argv(a))
    assert f"-netdev user,id=net1,restrict=on,hostfwd=tcp:127.0.0.1:{a.user_nic.ssh_port}-:22" in joined
    assert f"netdev=net1,mac={a.user_nic.mac}" in joined
    assert "restrict=off" in " ".join(qemu_argv.argv(b)) and "net1" not in " ".join(qemu_argv.argv(c))


def test_side_nic_profile_never_takes_the_default_route_or_dns():
    want = nm_profile.keyfile(commands.side_nic("52:54:00:00:00:02"))
    assert "never-default=true" in want and "ignore-auto-dns=true" in want
    assert "method=auto" in want and "mac-address=52:54:00:00:00:02" in want
    assert not any(line.startswith(("address1=", "gateway=")) for line in want)
    out = "default via 10.198.101.114 dev enp0s1 proto static metric 100\ndefault via 10.0.2.2 dev enp0s2\n"
    assert commands.parse_default_devices(out) == ["enp0s1", "enp0s2"]


# ---------------------------------------------------------------- the rule set


def test_nat_ruleset_is_scoped_and_sweepable_by_tag():
    p = plan(lab({"mode": "nat"}))
    rs = firewall.lab_ruleset(p, bridged=True, docker_user=True)
    text = firewall.restore_input(rs)
    pre = firewall.chain_prefix("t")
    assert "-A " + pre + "NAT -s 10.198.101.0/24 ! -d 10.198.101.0/24 -o wlp2s0 -j MASQUERADE" in text
    assert f'-I DOCKER-USER 1 -m comment --comment "bridgelab lab=t" -j {pre}FWD' in text
    assert "TCPMSS --clamp-mss-to-pmtu" in text and ":FORWARD" not in text and "-P " not in text
    # What iptables-save prints after it went in, among the host's own rules:
    save = "\n".join([
        "*filter", ":INPUT ACCEPT [0:0]", ":FORWARD DROP [9:99]", f":{pre}FWD - [0:0]", ":DOCKER-USER - [0:0]",
        f'-A DOCKER-USER -m comment --comment "bridgelab lab=t" -j {pre}FWD',
        '-A DOCKER-USER -m comment --comment "bridgelab lab=other" -j BL-00000000-FWD',
        "-A DOCKER-USER -j RETURN", f'-A {pre}FWD -i br0 -o br0 -m comment --comment "bridgelab lab=t" -j ACCEPT',
        "COMMIT", "*nat", ":POSTROUTING ACCEPT [0:0]", f":{pre}NAT - [0:0]",
        f'-A POSTROUTING -m comment --comment "bridgelab lab=t" -j {pre}NAT', "COMMIT"])
    removal = firewall.removal_input(save, "bridgelab lab=t", pre)
    assert removal == "\n".join([
        "*filter", f'-D DOCKER-USER -m comment --comment "bridgelab lab=t" -j {pre}FWD', f"-F {pre}FWD",
        f"-X {pre}FWD", "COMMIT", "*nat", f'-D POSTROUTING -m comment --comment "bridgelab lab=t" -j {pre}NAT',
        f"-F {pre}NAT", f"-X {pre}NAT", "COMMIT"]) + "\n"
    assert firewall.removal_input("*filter\n:INPUT ACCEPT [0:0]\nCOMMIT\n", "bridgelab lab=t", pre) is None


def test_no_rules_without_uplink_unless_bridged_frames_meet_iptables():
    p = plan(lab())
    assert firewall.lab_ruleset(p, bridged=False, docker_user=False).chains == ()
    only = firewall.lab_ruleset(p, bridged=True, docker_user=False).chains
    assert [(c.table, c.parent, c.rules) for c in only] == [("filter", "FORWARD", (("-i", "br0", "-o", "br0",
                                                                                    "-j", "ACCEPT"),))]


def test_saves_are_compared_without_counters_or_timestamps():
    a = "# Generated by iptables-save on Mon\n*filter\n:FORWARD DROP [10:840]\nCOMMIT\n# Completed on Mon\n"
    b = "# Generated by iptables-save on Tue\n*filter\n:FORWARD DROP [0:0]\nCOMMIT\n# Completed on Tue\n"
    assert firewall.normalize_save(a) == firewall.normalize_save(b)
    assert firewall.empty_table("*nat\n:PREROUTING ACCEPT [0:0]\n:POSTROUTING ACCEPT [3:4]\nCOMMIT\n", "nat")
    assert not firewall.empty_table("*nat\n:POSTROUTING ACCEPT [0:0]\n-A POSTROUTING -j MASQUERADE\nCOMMIT\n",
                                    "nat")


def test_firewalld_and_ufw_are_recognised_with_the_exact_fix():
    managers = firewall.host_firewalls({"nft": "*filter\n:ufw-before-forward - [0:0]\n"},
                                       "table ip filter\ntable inet firewalld\n")
    assert managers == ["firewalld", "ufw"]
    hints = firewall.firewall_hints(managers, plan(lab({"mode": "nat"})))
    assert "firewall-cmd --zone=trusted --add-interface=br0" in hints[0]
    assert "ufw route allow in on br0 out on wlp2s0" in hints[1]
    assert firewall.host_firewalls({"legacy": "*filter\n"}, "table ip nat\n") == []


# ---------------------------------------------------------------- self-test diagnosis


def evidence(**kw):
    base = dict(guest_route="192.168.1.1 via 10.198.101.114 dev eth0 src 10.198.101.1", next_hop_arp="resolved",
                ip_forward=True, host_route_dev="wlp2s0", before=uplink_diagnosis.Counters(5, 5),
                after=uplink_diagnosis.Counters(6, 6), host_reaches_target=True, uplink_proxy_arp=True)
    return uplink_diagnosis.Evidence(**{**base, **kw})


@pytest.mark.parametrize("kw, layer, words", [
    ({"guest_route": None}, "guest", "no route"),
    ({"next_hop_arp": "failed"}, "l2", "10.198.101.114"),
    ({"ip_forward": False}, "nat_route", "forwarding is off"),
    ({"host_route_dev": "eth9"}, "nat_route", "via eth9"),
    ({"after": uplink_diagnosis.Counters(5, 5)}, "netfilter", "never bridgelab's ACCEPT"),
    ({"after": uplink_diagnosis.Counters(None, 6)}, "netfilter", "gone"),
    ({"after": uplink_diagnosis.Counters(6, 5)}, "nat_route", "MASQUERADE"),
    ({"host_reaches_target": False}, "nat_route", "beyond the uplink"),
    ({}, "nat_route", "no reply came back"),
])
def test_diagnosis_walks_outwards_from_the_guest(kw, layer, words):
    p = plan(lab({"mode": "nat"}))
    found, detail = uplink_diagnosis.diagnose(evidence(**kw), p, ipaddress.IPv4Address("192.168.1.1"), ["ufw: x"])
    assert found == layer and words in detail


def test_next_hop_is_the_gateway_or_the_target_itself():
    t = ipaddress.IPv4Address("10.77.0.50")
    assert str(uplink_diagnosis.next_hop("10.77.0.50 via 10.77.0.1 dev eth0 src 10.77.0.201", t)) == "10.77.0.1"
    assert uplink_diagnosis.next_hop("10.77.0.50 dev eth0 src 10.77.0.201 uid 0", t) == t


def test_foreign_nftables_forward_drops_are_found_but_iptables_own_are_not():
    # `nft -j list ruleset` after firewalld-style drop and Docker's DROP policy (iptables-nft's ip filter).
    ruleset = {"nftables": [
        {"metainfo": {"version": "1.0.6"}},
        {"table": {"family": "inet", "name": "firewalld", "handle": 1}},
        {"chain": {"family": "inet", "table": "firewalld", "name": "filter_FORWARD", "handle": 1, "type": "filter",
                   "hook": "forward", "prio": 10, "policy": "accept"}},
        {"rule": {"family": "inet", "table": "firewalld", "chain": "filter_FORWARD", "handle": 5,
                  "expr": [{"reject": {"type": "icmpx", "expr": "admin-prohibited"}}]}},
        {"chain": {"family": "inet", "table": "other", "name": "c", "handle": 2, "type": "filter",
                   "hook": "input", "prio": 0, "policy": "drop"}},
        {"chain": {"family": "ip", "table": "filter", "name": "FORWARD", "handle": 1, "type": "filter",
                   "hook": "forward", "prio": 0, "policy": "drop"}}]}
    assert uplink_diagnosis.forward_drops(ruleset) == ["inet firewalld"]
    assert uplink_diagnosis.forward_drops({}) == []
    p = plan(lab({"mode": "nat"}))
    layer, detail = uplink_diagnosis.diagnose(evidence(foreign_forward_drops=("inet firewalld",)), p,
                                      ipaddress.IPv4Address("192.168.1.1"), ["firewalld: firewall-cmd x"])
    assert layer == "netfilter" and "inet firewalld" in detail and "firewall-cmd" in detail


def test_a_proxy_arp_guest_cannot_move_onto_the_lan_gateway_or_off_the_lan():
    from bridgelab.model.plan import check_new_ip

    p = plan(lab({"mode": "proxy-arp"}, bridge={"name": "br0"},
                 guests=[{"name": "a", "image": "i", "ip": "192.168.1.201"},
                         {"name": "b", "image": "i", "ip": "192.168.1.202"}]))
    assert check_new_ip(p, "a", ipaddress.IPv4Address("192.168.1.203")) == []
    assert "LAN gateway" in check_new_ip(p, "a", ipaddress.IPv4Address("192.168.1.1"))[0]
    assert "host's own" in check_new_ip(p, "a", ipaddress.IPv4Address("192.168.1.23"))[0]
    assert "outside" in check_new_ip(p, "a", ipaddress.IPv4Address("10.0.0.5"))[0]
    assert "used by guest b" in check_new_ip(p, "a", ipaddress.IPv4Address("192.168.1.202"))[0]
