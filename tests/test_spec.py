"""Lab file validation: every bad input is named by its field path."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from bridgelab.errors import SpecError
from bridgelab.model.spec import load_lab_text, parse_lab_data, parse_memory_mib

EXAMPLE = Path(__file__).parent.parent / "examples" / "two-riscv64.yaml"


def lab(**over):
    data = {"name": "t", "bridge": {"name": "br0", "address": "10.198.101.114/24"},
            "guests": [{"name": "a", "image": "img"}, {"name": "b", "image": "img"}]}
    for path, value in over.items():
        node: Any = data
        keys = path.split("__")
        for k in keys[:-1]:
            node = node[int(k)] if k.isdigit() else node[k]
        last = keys[-1]
        if last.isdigit():
            node[int(last)] = value
        else:
            node[last] = value
    return data


def issues(data) -> dict[str, str]:
    with pytest.raises(SpecError) as e:
        parse_lab_data(data)
    found: dict[str, str] = {}
    for i in e.value.issues:
        found[i.path] = (found.get(i.path, "") + " | " + i.message).strip(" |")
    return found


def test_example_is_valid():
    spec = load_lab_text(EXAMPLE.read_text())
    assert spec.bridge.name == "br0" and str(spec.bridge.address) == "10.198.101.114/24"
    assert [g.name for g in spec.guests] == ["rv1", "rv2"]
    assert spec.guests[0].memory == 1024


@pytest.mark.parametrize("over, path, words", [
    ({"guests__1__name": "a"}, "guests[1].name", "duplicate"),
    ({"guests__0__ip": "10.198.101.5", "guests__1__ip": "10.198.101.5"}, "guests[1].ip", "duplicate"),
    ({"guests__0__mac": "02:00:00:00:00:01", "guests__1__mac": "02-00-00-00-00-01"}, "guests[1].mac", "duplicate"),
    ({"guests__0__tap": "tapx", "guests__1__tap": "tapx"}, "guests[1].tap", "duplicate"),
    ({"guests__0__tap": "br0"}, "guests[0].tap", "bridge"),
    ({"guests__0__ip": "10.198.102.5"}, "guests[0].ip", "outside"),
    ({"guests__0__ip": "10.198.101.114"}, "guests[0].ip", "bridge's own"),
    ({"guests__0__ip": "10.198.101.0"}, "guests[0].ip", "network or broadcast"),
    ({"guests__0__ip": "10.198.101.255"}, "guests[0].ip", "network or broadcast"),
    ({"guests__0__ip": "10.198.101.300"}, "guests[0].ip", "IPv4"),
    ({"guests__0__tap": "a" * 16}, "guests[0].tap", "invalid interface name"),
    ({"guests__0__tap": "ta p"}, "guests[0].tap", "invalid interface name"),
    ({"guests__0__tap": "ta/p"}, "guests[0].tap", "invalid interface name"),
    ({"bridge__name": ".."}, "bridge.name", "invalid interface name"),
    ({"bridge__address": "10.198.101.114"}, "bridge.address", "prefix"),
    ({"bridge__address": "10.198.101.0/24"}, "bridge.address", "network or broadcast"),
    ({"bridge__address": "10.198.101.1/31"}, "bridge.address", "no room"),
    ({"guests__0__mac": "03:00:00:00:00:01"}, "guests[0].mac", "multicast"),
    ({"guests__0__mac": "02:00:00:00:01"}, "guests[0].mac", "invalid MAC"),
    ({"guests__0__name": "Bad_Name"}, "guests[0].name", "invalid guest name"),
    ({"guests__0__name": "x\x1b[31m"}, "guests[0].name", "control characters"),
    ({"guests__0__append": "quiet\nrm -rf /"}, "guests[0].append", "control characters"),
    ({"guests__0__qemu_args": ["-serial", "stdio"]}, "guests[0].qemu_args", "managed by bridgelab"),
    ({"guests__0__arch": "mips"}, "guests[0].arch", "riscv64"),
    ({"guests__0__accel": "hvf"}, "guests[0].accel", "tcg"),
    ({"guests__0__memory": "lots"}, "guests[0].memory", "invalid memory"),
    ({"guests__0__cpus": 0}, "guests[0].cpus", "greater than or equal"),
    ({"guests__0__colour": "red"}, "guests[0].colour", "Extra inputs"),
    ({"guests__0__login": {"user": "root", "password": "pw\r"}}, "guests[0].login.password", "control"),
    ({"guests__0__gateway": "192.0.2.1"}, "guests[0].gateway", "not reachable"),
    ({"guests": []}, "guests", "at least 1"),
])
def test_bad_input_names_its_field(over, path, words):
    found = issues(lab(**over))
    assert path in found, found
    assert words.lower() in found[path].lower()


def test_all_errors_are_listed_at_once():
    data = lab(guests__0__ip="10.9.9.9", guests__1__tap="x" * 20, name="Bad Lab")
    found = issues(data)
    assert {"guests[0].ip", "guests[1].tap", "name"} <= set(found)


def test_control_characters_in_keys_are_rejected():
    data = lab()
    data["guests"][0]["na\x00me"] = "x"
    assert any("control" in m for m in issues(data).values())


def test_not_yaml_or_not_a_mapping():
    with pytest.raises(SpecError, match="not valid YAML"):
        load_lab_text("bridge: [unclosed")
    with pytest.raises(SpecError, match="mapping"):
        load_lab_text("- just a list")


def test_memory_sizes():
    assert parse_memory_mib(512) == 512
    assert parse_memory_mib("2G") == 2048
    assert parse_memory_mib("768M") == 768
    assert parse_memory_mib("1GiB") == 1024
    with pytest.raises(ValueError):
        parse_memory_mib("10")


def test_mac_is_normalised():
    spec = parse_lab_data(lab(guests__0__mac="02-AA-BB-CC-DD-EE"))
    assert spec.guests[0].mac == "02:aa:bb:cc:dd:ee"



def test_a_guest_prefix_must_keep_its_gateway_on_its_network():
    from bridgelab.model.spec import load_lab_text
    lab = load_lab_text("bridge: {address: 10.0.0.1/24}\nguests:\n"
                        "  - {name: a, image: x, ip: 10.0.0.5, prefix: 25}\n")
    assert lab.guests[0].prefix == 25
    with pytest.raises(SpecError) as e:
        load_lab_text("bridge: {address: 10.0.0.200/24}\nguests:\n"
                      "  - {name: a, image: x, ip: 10.0.0.5, prefix: 25}\n"
                      "  - {name: b, image: x, ip: 10.0.0.128, prefix: 25, gateway: 10.0.0.200}\n")
    paths = {i.path: i.message for i in e.value.issues}
    assert "not on the guest's network 10.0.0.0/25" in paths["guests[0].gateway"]
    assert "network or broadcast" in paths["guests[1].ip"]


def test_the_lab_file_reference_is_generated_from_the_models_and_its_example_is_valid() -> None:
    import re

    from bridgelab.model.lab_reference import markdown_table

    doc = (Path(__file__).resolve().parent.parent / "docs" / "lab-file.md").read_text()
    assert markdown_table() in doc
    example = re.search(r"```yaml\n(.*?)```", doc, re.S)
    assert example is not None
    lab = load_lab_text(example.group(1))
    keys = {row.split("|")[1].strip().strip("`") for row in markdown_table().splitlines()[2:]}
    shown = {"name", "bridge", "uplink", "peers", "firewall", "warm_start", "guests"}
    assert lab.peers is not None
    shown |= {f"peers.{k}" for k in type(lab.peers).model_fields}
    shown |= {f"bridge.{k}" for k in type(lab.bridge).model_fields}
    shown |= {f"uplink.{k}" for k in type(lab.uplink).model_fields}
    shown |= {"firewall.backend"} | {f"guests[].{k}" for k in type(lab.guests[0]).model_fields}
    shown |= {"guests[].login.user", "guests[].login.password", "guests[].user_nic.ssh_port",
              "guests[].user_nic.restrict"}
    assert keys == shown  # the table names every key of the models, nothing more
    assert lab.guests[0].login is not None and lab.guests[0].user_nic is not None  # the example uses them all


def test_an_unquoted_all_digit_mac_is_explained() -> None:
    text = "bridge: {address: 10.0.0.1/24}\nguests:\n  - {name: a, image: x, mac: 52:54:00:12:34:55}\n"
    with pytest.raises(SpecError, match=r"guests\[0\]\.mac: .*write the MAC in quotes"):
        load_lab_text(text)
