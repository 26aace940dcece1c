"""nmcli command building and output parsing, on output captured from the sid guest."""

from __future__ import annotations

import ipaddress
import shlex
import subprocess

from bridgelab.guest import commands
from bridgelab.guest.shell import render

IP_LINK = (
    "1: lo: <LOOPBACK,UP,LOWER_UP> mtu 65536 qdisc noqueue state UNKNOWN mode DEFAULT group default qlen 1000\\"
    "    link/loopback 00:00:00:00:00:00 brd 00:00:00:00:00:00\n"
    "2: enp0s1: <BROADCAST,MULTICAST,UP,LOWER_UP> mtu 1500 qdisc fq_codel state UP mode DEFAULT group default "
    "qlen 1000\\    link/ether 02:11:22:33:44:55 brd ff:ff:ff:ff:ff:ff\\    altname enx021122334455\n"
    "3: eth1@if7: <BROADCAST,MULTICAST> mtu 1500 qdisc noop state DOWN\\    link/ether 52:54:00:12:34:56 brd "
    "ff:ff:ff:ff:ff:ff\n"
    "[   42.000000] random kernel line link/ether 02:11:22:33:44:55\n"
)

SHOW = """connection.id:bridgelab-021122334455
802-3-ethernet.mac-address:02:11:22:33:44:55
ipv4.method:manual
ipv4.addresses:10.198.101.1/24
ipv4.gateway:10.198.101.114
ipv4.dns:
connection.autoconnect:yes
connection.autoconnect-priority:100
"""

CFG = commands.NetConfig(mac="02:11:22:33:44:55", address=ipaddress.IPv4Interface("10.198.101.1/24"),
                      gateway=ipaddress.IPv4Address("10.198.101.114"))


def test_interface_is_found_by_mac_not_by_name():
    assert commands.iface_for_mac(IP_LINK, "02:11:22:33:44:55") == "enp0s1"
    assert commands.iface_for_mac(IP_LINK, "52:54:00:12:34:56") == "eth1"
    assert commands.iface_for_mac(IP_LINK, "02:00:00:00:00:99") is None


def test_profile_name_is_deterministic_per_mac():
    assert commands.profile_name("02:11:22:33:44:55") == "bridgelab-021122334455"


def test_matching_profile_has_no_diff():
    assert commands.settings_diff(commands.parse_terse(SHOW), commands.desired_settings(CFG)) == {}


def test_changed_address_and_dns_show_up_in_the_diff():
    cfg = commands.NetConfig(mac=CFG.mac, address=ipaddress.IPv4Interface("10.198.101.50/24"), gateway=CFG.gateway,
                          dns=(ipaddress.IPv4Address("10.198.101.114"),))
    diff = commands.settings_diff(commands.parse_terse(SHOW), commands.desired_settings(cfg))
    assert diff == {"ipv4.addresses": "10.198.101.50/24", "ipv4.dns": "10.198.101.114"}


def test_terse_values_unescape_colons_and_ignore_noise():
    parsed = commands.parse_terse("802-3-ethernet.mac-address:02\\:11\\:22\\:33\\:44\\:55\n[ 1.0] kernel: x\n")
    assert parsed == {"802-3-ethernet.mac-address": "02:11:22:33:44:55"}


def test_commands_are_argv_with_every_value_one_element():
    add = commands.add_cmd("bridgelab-x", commands.desired_settings(CFG))
    assert add[:6] == ["nmcli", "connection", "add", "type", "ethernet", "con-name"]
    assert add[add.index("ipv4.addresses") + 1] == "10.198.101.1/24"
    assert add[add.index("ipv4.dns") + 1] == ""
    assert add[add.index("802-3-ethernet.mac-address") + 1] == "02:11:22:33:44:55".upper()
    assert commands.up_cmd("name; reboot", "eth0") == ["nmcli", "connection", "up", "name; reboot", "ifname", "eth0"]
    # What the console backend types for it: one word per element, nothing interpreted.
    assert shlex.split(render(commands.up_cmd("name; reboot", "eth0")))[3] == "name; reboot"


def test_the_ping_script_takes_its_targets_as_arguments(tmp_path):
    """The fixed script runs in a real sh; a target is only ever an argument."""
    fake_ping = tmp_path / "ping"
    fake_ping.write_text('#!/bin/sh\nfor a; do t=$a; done; [ "$t" = 10.0.0.1 ]\n')
    fake_ping.chmod(0o755)
    argv = commands.ping_cmd(["10.0.0.1", "10.0.0.2; touch pwned", "$(touch pwned)"])
    out = subprocess.run(argv, capture_output=True, text=True, cwd=tmp_path,
                         env={"PATH": f"{tmp_path}:/usr/bin:/bin"}).stdout
    assert sorted(out.splitlines()) == sorted(["ok 10.0.0.1", "fail 10.0.0.2; touch pwned", "fail $(touch pwned)"])
    assert not (tmp_path / "pwned").exists()


def test_addresses_and_ping_parsing():
    out = ("2: eth0    inet 10.198.101.1/24 brd 10.198.101.255 scope global noprefixroute eth0\\"
           "       valid_lft forever preferred_lft forever\n")
    assert commands.parse_addresses(out) == [ipaddress.IPv4Interface("10.198.101.1/24")]
    assert commands.parse_ping("ok 10.0.0.1\n[ 3.2] noise\nfail 10.0.0.2\n") == {"10.0.0.1": True, "10.0.0.2": False}
    assert commands.ping_cmd(["10.0.0.1"])[-2:] == ["5", "10.0.0.1"]


def test_neighbour_states():
    from bridgelab.guest.commands import neighbour_cmd, parse_neighbour
    assert parse_neighbour("10.0.0.2 dev eth0 lladdr 52:54:00:12:34:56 REACHABLE\n") == "resolved"
    assert parse_neighbour("10.0.0.2 dev eth0 lladdr 52:54:00:12:34:56 STALE\n") == "resolved"
    assert parse_neighbour("10.0.0.2 dev eth0 FAILED\n") == "failed"
    assert parse_neighbour("10.0.0.2 dev eth0 INCOMPLETE\n") == "failed"
    assert parse_neighbour("") == "none"
    assert neighbour_cmd("10.0.0.2; reboot") == ["ip", "-4", "neigh", "show", "to", "10.0.0.2; reboot"]


def test_the_network_manager_is_read_from_the_detect_script_output():
    assert commands.parse_manager("[ 3.1] noise\nmanager=NetworkManager\n") == "NetworkManager"
    assert commands.parse_manager("manager=systemd-networkd\n") == "systemd-networkd"
    assert commands.parse_manager("manager=none\n") == "none"
    assert commands.parse_manager("manager=connman\n") == "none"
    assert commands.detect_manager_cmd()[:2] == ["sh", "-c"]


def test_networkd_units_match_the_mac_and_keep_the_side_nic_off_the_default_route():
    unit = commands.networkd_unit(CFG)
    assert unit[:5] == ["# written by bridgelab", "[Match]", "MACAddress=02:11:22:33:44:55", "", "[Network]"]
    assert "Address=10.198.101.1/24" in unit
    side = commands.networkd_unit(commands.side_nic("52:54:00:12:34:56"))
    assert {"DHCP=ipv4", "UseRoutes=false", "UseDNS=false"} <= set(side)
    assert not any(x.startswith("Address=") for x in side)
    assert commands.networkd_path(CFG.mac) == "/etc/systemd/network/10-bridgelab-021122334455.network"


def test_the_file_commands_write_whole_files_from_arguments(tmp_path):
    target = tmp_path / "x.network"
    lines = ["[Match]", "MACAddress=02:11:22:33:44:55", "Name=$(touch pwned) 'q'"]
    assert subprocess.run(commands.read_file_cmd(str(target)), capture_output=True, text=True).stdout == ""
    subprocess.run(commands.write_file_cmd(str(target), lines), check=True, cwd=tmp_path)
    assert target.read_text() == "\n".join(lines) + "\n"
    assert subprocess.run(commands.read_file_cmd(str(target)), capture_output=True,
                          text=True).stdout == target.read_text()
    assert not (tmp_path / "pwned").exists() and not (tmp_path / "x.network.tmp").exists()
