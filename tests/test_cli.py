"""The CLI's own habits, without a daemon: tables, JSON, inventories, the
version, and what it says when no daemon answers. Against a live daemon:
test_api.py (options, completion, 401) and test_uplink_vm.py (ssh-config)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from bridgelab import __version__
from bridgelab.cli.client import mesh_rows
from bridgelab.cli.inventory import inventory
from bridgelab.cli.output import table

from .conftest import junk_image

CLI = [sys.executable, "-m", "bridgelab.cli"]


def test_a_table_is_as_wide_as_its_longest_cell():
    long = "g" * 32  # the longest guest name the schema allows
    text = table(("NAME", "STATE", "REASON"), [(long, "ready", ""), ("a", "failed", "qemu exited: bad device")])
    lines = text.splitlines()
    assert lines[0] == "NAME" + " " * 30 + "STATE   REASON"
    assert lines[1] == f"{long}  ready"  # no trailing blanks
    assert lines[2].startswith("a" + " " * 33 + "failed  qemu exited")
    assert len({line.index(c) for line, c in zip(lines, ("S", "r", "f"), strict=True)}) == 1  # one column


def test_mesh_rows_cover_pairs_uplink_and_skipped_guests():
    report = {"pairs": [{"source": "rv1", "target": "rv2", "target_ip": "10.0.0.2", "ok": False,
                         "diagnosis": "arp", "detail": "no answer to ARP"}],
              "uplink": [{"source": "rv1", "target": "192.0.2.1", "ok": True, "layer": "ok", "detail": ""}],
              "skipped": ["rv3"], "ok": False}
    assert mesh_rows(report) == [("FAIL", "rv1", "rv2", "10.0.0.2", "arp", "no answer to ARP"),
                                 ("ok", "rv1", "uplink", "192.0.2.1", "ok", ""),
                                 ("skip", "rv3", "-", "-", "-", "not ready")]


def test_inventories_for_ansible_and_ssh():
    guests = [{"name": "rv1", "ssh": "127.0.0.1:2222", "user": "root"},
              {"name": "x86", "ssh": "127.0.0.1:2223", "user": "debian"}]
    ansible = inventory(guests, "ansible").splitlines()
    assert ansible[:3] == ["[bridgelab]", "rv1 ansible_host=127.0.0.1 ansible_port=2222 ansible_user=root",
                           "x86 ansible_host=127.0.0.1 ansible_port=2223 ansible_user=debian"]
    ssh = inventory(guests, "ssh-config")
    assert "Host rv1\n  HostName 127.0.0.1\n  Port 2222\n  User root\n" in ssh
    assert "Host x86\n  HostName 127.0.0.1\n  Port 2223\n  User debian\n" in ssh


def test_version_is_the_packages():
    p = subprocess.run([*CLI, "--version"], capture_output=True, text=True)
    assert p.returncode == 0 and p.stdout.strip() == f"bridgelab {__version__}"


def test_no_daemon_is_one_line_with_where_and_what_next_and_exit_69(tmp_path: Path):
    sock = tmp_path / "api.sock"
    for argv in (["status", "--api", f"unix:{sock}"], ["--api", f"unix:{sock}", "wait"],
                 ["console", "rv1", "--api", f"unix:{sock}"]):
        p = subprocess.run([*CLI, *argv], capture_output=True, text=True)
        assert p.returncode == 69, (argv, p.stderr)
        lines = p.stderr.strip().splitlines()
        assert len(lines) == 1 and "Traceback" not in p.stderr, p.stderr
        assert f"no bridgelab daemon answers at unix:{sock} (No such file or directory)" in lines[0]
        assert "bridgelab serve" in lines[0] and "docker compose up -d" in lines[0]


def test_validate_reads_lab_yaml_here_by_default_and_prints_json(tmp_path: Path):
    junk_image(tmp_path)
    (tmp_path / "lab.yaml").write_text("name: here\nbridge: {name: here0, address: 10.9.0.1/24}\n"
                                       "guests:\n  - {name: a-guest-with-a-rather-long-name1, image: img/}\n")
    p = subprocess.run([*CLI, "validate", "--format", "json"], capture_output=True, text=True, cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    plan = json.loads(p.stdout)
    assert (plan["lab"], plan["bridge"], [g["name"] for g in plan["guests"]]) == (
        "here", "here0", ["a-guest-with-a-rather-long-name1"])
    shown = subprocess.run([*CLI, "validate"], capture_output=True, text=True, cwd=tmp_path).stdout.splitlines()
    assert shown[1].split()[:2] == ["NAME", "ARCH"] and shown[2].split()[0] == "a-guest-with-a-rather-long-name1"
