"""The pure parts of snapshots: the one-command check of a restored guest,
what makes a snapshot invalid, and the names the CLI and API accept."""

from __future__ import annotations

import ipaddress

import pytest
from bridgelab.api.schemas import SnapshotRequest
from bridgelab.cli.snapshot import _problem
from bridgelab.guest import commands, snapshot_key
from pydantic import ValidationError

# What `ip -o link show` and `ip -o -4 addr show` print in a Debian sid
# riscv64 guest (the flags and qdisc details shortened).
OUTPUT = "\n".join([
    "1: lo: <LOOPBACK,UP,LOWER_UP> mtu 65536 qdisc noqueue\\    link/loopback 00:00:00:00:00:00 brd 00:00:00:00:00:00",
    "2: eth0: <BROADCAST,UP,LOWER_UP> mtu 1500 state UP\\    link/ether 7e:85:5b:32:ec:ec brd ff:ff:ff:ff:ff:ff",
    "3: eth1: <BROADCAST,UP,LOWER_UP> mtu 1500 state UP\\    link/ether 52:54:00:12:34:56 brd ff:ff:ff:ff:ff:ff",
    "---",
    "1: lo    inet 127.0.0.1/8 scope host lo\\       valid_lft forever preferred_lft forever",
    "2: eth0    inet 10.198.101.1/24 brd 10.198.101.255 scope global noprefixroute eth0\\       valid_lft forever",
    "3: eth1    inet 10.0.2.15/24 brd 10.0.2.255 scope global dynamic eth1\\       valid_lft 86000sec",
]) + "\n"


def test_a_restored_guest_is_checked_by_its_nic_and_only_its_addresses():
    iface, live = commands.parse_links_and_addresses(OUTPUT, "7E:85:5B:32:EC:EC")
    assert (iface, live) == ("eth0", [ipaddress.IPv4Interface("10.198.101.1/24")])
    assert commands.parse_links_and_addresses(OUTPUT, "02:00:00:00:00:01") == (None, [])


def test_the_clock_is_passed_as_an_argument_never_spliced_into_the_script():
    argv = commands.clock_and_addresses_cmd(1796227341.150672)
    assert argv[:2] == ["sh", "-c"] and "1796227341" not in argv[2]
    assert argv[3:] == ["sh", "1796227341.151"]


def test_a_changed_field_is_named_and_addresses_are_shown():
    saved = {"qemu": "q 7.2", "machine": "abc", "image": "img 1", "mac": "m", "network": "10.0.0.1/24 gateway -",
             "login": "root x"}
    assert snapshot_key.mismatch(saved, dict(saved)) is None
    now = {**saved, "network": "10.0.0.9/24 gateway -", "qemu": "q 10.2"}
    assert snapshot_key.mismatch(saved, now) == "network (10.0.0.1/24 gateway - -> 10.0.0.9/24 gateway -), qemu"
    assert snapshot_key.mismatch({k: v for k, v in saved.items() if k != "login"}, saved) == "login"


@pytest.mark.parametrize("name", ["", "a b", "x;reboot", "-x", "a" * 33, "bridgelab-base", "tab\there", "ü"])
def test_bad_snapshot_names_are_refused_by_the_api_and_the_cli(name):
    with pytest.raises(ValidationError):
        SnapshotRequest(name=name)
    assert _problem("save", name, []) is not None


@pytest.mark.parametrize("name", ["ready", "before-test", "v1.2_x", "A" * 32])
def test_good_snapshot_names_pass(name):
    assert SnapshotRequest(name=name).name == name
    assert _problem("restore", name, ["rv1"]) is None


def test_the_cli_wants_a_name_except_for_list_and_checks_guest_names():
    assert _problem("save", None, []) == "save needs a snapshot name"
    assert _problem("list", None, ["rv1"]) is None
    assert _problem("rm", "x", ["RV1"]) == "invalid guest name 'RV1'"
