"""Shared fixtures: the host-state guard, and throwaway network namespaces,
owned and removed by name, also when a fixture's setup fails halfway."""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import subprocess
from pathlib import Path
from typing import Iterator

import pytest
from pyroute2 import netns as pr_netns

from . import hoststate


@pytest.fixture(scope="session", autouse=True)
def host_left_as_found(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """The whole run must leave the host exactly as it found it (hoststate.py
    lists what is compared). Daemons the tests start keep their default state
    and token, and iptables-legacy its lock, in this run's temporary
    directory, so a test that forgets a --state-dir cannot write to /run."""
    if os.geteuid() != 0:  # without root no test can change the host
        yield
        return
    session = tmp_path_factory.mktemp("session")
    env = pytest.MonkeyPatch()
    env.setenv("BRIDGELAB_STATE_DIR", str(session / "state"))
    env.setenv("XTABLES_LOCKFILE", str(session / "xtables.lock"))
    before = hoststate.capture()
    yield
    env.undo()
    changed = hoststate.differences(before, hoststate.capture())
    if changed:
        pytest.fail("the test run left the host changed:\n  " + "\n  ".join(changed), pytrace=False)


def make_netns(prefix: str) -> str:
    name = f"{prefix}-{secrets.token_hex(3)}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        subprocess.run(["ip", "-n", name, "link", "set", "lo", "up"], check=True)
    except BaseException:
        delete_netns(name)
        raise
    return name


@contextlib.contextmanager
def netns(prefix: str) -> Iterator[str]:
    """A fresh netns for the duration; for fixtures that stack several things."""
    name = make_netns(prefix)
    try:
        yield name
    finally:
        delete_netns(name)


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
    with netns("blt") as name:
        yield name


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
