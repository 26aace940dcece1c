"""Shared fixtures: throwaway network namespaces, owned and removed by name."""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
from pathlib import Path
from typing import Iterator

import pytest
from pyroute2 import netns as pr_netns


def make_netns(prefix: str) -> str:
    name = f"{prefix}-{secrets.token_hex(3)}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    subprocess.run(["ip", "-n", name, "link", "set", "lo", "up"], check=True)
    return name


def stop_process(proc: subprocess.Popen[bytes], timeout: float) -> None:
    """SIGTERM a process this test started, then SIGKILL it if it overstays."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def delete_netns(name: str) -> None:
    subprocess.run(["ip", "netns", "del", name], check=False)


@pytest.fixture
def netns_name() -> Iterator[str]:
    if os.geteuid() != 0:
        pytest.fail("network namespace tests need root (run the README's test command as root)")
    name = make_netns("blt")
    try:
        yield name
    finally:
        delete_netns(name)


@pytest.fixture
def in_netns(netns_name: str) -> Iterator[str]:
    """Run the test body inside a fresh netns (this thread only), like the
    daemon runs in the current namespace. Restored afterwards."""
    pr_netns.pushns(netns_name)
    try:
        yield netns_name
    finally:
        pr_netns.popns()


def links_in(ns: str) -> dict[str, str]:
    """name -> kind of every link in a namespace, read with iproute2 (not our code)."""
    import json
    out = subprocess.run(["ip", "-n", ns, "-d", "-j", "link", "show"], check=True, capture_output=True, text=True)
    return {link["ifname"]: (link.get("linkinfo") or {}).get("info_kind", "") for link in json.loads(out.stdout)}


def junk_image(tmp_path: Path) -> Path:
    """An image directory whose manifest is valid but whose files are not
    images: enough to plan and start a lab whose guest then fails at once."""
    img = tmp_path / "img"
    img.mkdir()
    for f in ("vmlinuz", "disk.qcow2"):
        (img / f).write_bytes(b"not an image")
    (img / "manifest.yaml").write_text(
        "name: junk\narch: riscv64\nboot: {style: kernel, kernel: vmlinuz}\ndisk: disk.qcow2\n"
        "login: {user: root, password: pw}\n")
    return img
