"""`bridgelab cleanup`, the one-owner lock and the host pre-flight, with real
kernel objects in throwaway network namespaces (no guest boots: a lab whose
only guest cannot start is up in a second).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from bridgelab.host import firewall, lablock, preflight

from .conftest import junk_image, links_in

pytestmark = pytest.mark.netns
CLI = [sys.executable, "-m", "bridgelab.cli"]
TAG = firewall.lab_tag("t")


def in_ns(ns: str, *argv: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", "netns", "exec", ns, *argv], capture_output=True, text=True, timeout=120,
                          env={**os.environ, **(env or {})})


def serve(ns: str, tmp: Path, state: Path, name: str = "t") -> subprocess.Popen[str]:
    """A lab whose guest fails at once: bridge, tap and (with br_netfilter on,
    as in a new netns here) the lab's rules exist; no qemu runs."""
    img = junk_image(tmp) if not (tmp / "img").exists() else tmp / "img"
    lab = tmp / f"{name}.yaml"
    lab.write_text(f"name: {name}\nbridge: {{name: {name}-br, address: 10.198.101.114/24}}\n"
                   f"guests:\n  - {{name: a, image: {img}}}\n")
    return subprocess.Popen(["ip", "netns", "exec", ns, *CLI, "serve", "--lab", str(lab), "--state-dir", str(state),
                             "--listen", f"unix:{tmp}/{name}.sock"], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)


def wait_settled(ns: str, tmp: Path, name: str = "t") -> dict[str, object]:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        p = in_ns(ns, *CLI, "status", "--api", f"unix:{tmp}/{name}.sock", "--json")
        if p.returncode in (0, 1) and '"failed"' in p.stdout:
            return json.loads(p.stdout)[0]
        time.sleep(0.2)
    raise AssertionError("the lab did not settle")


def saves(ns: str) -> str:
    return "\n".join(firewall.normalize_save(in_ns(ns, "iptables-nft-save").stdout
                                            + in_ns(ns, "iptables-legacy-save").stdout))


def killed_lab(ns: str, tmp: Path, state: Path) -> str:
    """A lab whose daemon was SIGKILLed once it settled; its tap's name."""
    daemon = serve(ns, tmp, state)
    try:
        return str(wait_settled(ns, tmp)["tap"])
    finally:
        daemon.send_signal(signal.SIGKILL)  # the daemon this test started, by its PID
        daemon.wait()


def test_cleanup_removes_what_a_killed_daemon_left_and_says_so(netns_name, tmp_path):
    state = tmp_path / "s"
    tap = killed_lab(netns_name, tmp_path, state)
    assert set(links_in(netns_name)) == {"lo", "t-br", tap} and (state / "ledger.json").exists()
    p = in_ns(netns_name, *CLI, "cleanup", "--lab", "t", "--state-dir", str(state))
    assert p.returncode == 0, p.stdout + p.stderr
    assert f"lab t: removed {tap}" in p.stdout and "lab t: removed t-br" in p.stdout, p.stdout
    assert links_in(netns_name) == {"lo": ""}
    assert TAG not in saves(netns_name)
    assert not (state / "ledger.json").exists()
    again = in_ns(netns_name, *CLI, "cleanup", "--lab", "t", "--state-dir", str(state))
    assert again.returncode == 0 and "nothing to clean up" in again.stdout, again.stdout


def test_cleanup_kills_a_recorded_qemu_and_restores_sysctls(netns_name, tmp_path):
    """A killed run's ledger with a live process and a changed sysctl."""
    state = tmp_path / "s"
    script = textwrap.dedent(f"""
        import os, pathlib, signal, subprocess
        from bridgelab.host import ledger as lg, links, uplink
        ledger = lg.Ledger(pathlib.Path({str(state / 'ledger.json')!r}))
        pathlib.Path("/proc/sys/net/ipv4/ip_forward").write_text("0\\n")
        uplink.set_sysctl(ledger, uplink.IP_FORWARD, "1")
        child = subprocess.Popen(["sleep", "600"], start_new_session=True, stdout=subprocess.DEVNULL,
                                 stderr=subprocess.DEVNULL)
        ledger.add(lg.ProcessEntry(pid=child.pid, start_time=links.proc_start_time(child.pid), what="qemu rv1"))
        print(child.pid, flush=True)
        os.kill(os.getpid(), signal.SIGKILL)
    """)
    p = in_ns(netns_name, sys.executable, "-c", script)
    pid = int(p.stdout.split()[0])
    try:
        p = in_ns(netns_name, *CLI, "cleanup", "--lab", "t", "--state-dir", str(state))
        assert p.returncode == 0, p.stdout + p.stderr
        assert f"lab t: killed qemu rv1 (pid {pid})" in p.stdout, p.stdout
        assert "lab t: restored net.ipv4.ip_forward=0" in p.stdout, p.stdout
        assert in_ns(netns_name, "cat", "/proc/sys/net/ipv4/ip_forward").stdout.strip() == "0"
        stat = Path(f"/proc/{pid}/stat")
        assert not stat.exists() or stat.read_text().rsplit(")", 1)[1].split()[0] == "Z"
    finally:
        if Path(f"/proc/{pid}").exists():
            os.kill(pid, signal.SIGKILL)


def test_cleanup_leaves_a_running_lab_alone(netns_name, tmp_path):
    state = tmp_path / "elsewhere"  # not under $BRIDGELAB_STATE_DIR: only the lab's lock can tell
    daemon = serve(netns_name, tmp_path, state)
    try:
        tap = wait_settled(netns_name, tmp_path)["tap"]
        rules = saves(netns_name)
        for args in (["--all"], ["--lab", "t", "--state-dir", str(state)], ["--lab", "t"]):
            p = in_ns(netns_name, *CLI, "cleanup", *args)
            assert p.returncode == 0 and "lab t: its daemon is running: left alone" in p.stdout, (args, p.stdout)
            assert set(links_in(netns_name)) == {"lo", "t-br", tap}
            assert saves(netns_name) == rules
        # One lab name per network namespace, whatever the state directory.
        second = in_ns(netns_name, *CLI, "serve", "--lab", str(tmp_path / "t.yaml"), "--state-dir",
                       str(tmp_path / "other"), "--listen", f"unix:{tmp_path}/other.sock")
        assert second.returncode == 1 and "another bridgelab runs lab t" in second.stderr, second.stderr
        assert set(links_in(netns_name)) == {"lo", "t-br", tap}
    finally:
        daemon.send_signal(signal.SIGTERM)
        assert daemon.wait(60) == 0
    assert links_in(netns_name) == {"lo": ""}


def test_cleanup_without_a_ledger_goes_by_marks_and_tags_only(netns_name, tmp_path):
    """The state directory is gone (`compose down -v` after a kill): links
    with the lab's alias and rules with its tag are found and removed; a
    look-alike with another alias, a link without one, and a tap a process
    still holds are not."""
    state = tmp_path / "s"
    tap = killed_lab(netns_name, tmp_path, state)
    for argv in (["link", "add", "userbr", "type", "bridge"],
                 ["link", "add", "otherbr", "type", "bridge"], ["link", "set", "otherbr", "alias", "bridgelab lab=x y"],
                 ["tuntap", "add", "heldtap", "mode", "tap"], ["link", "set", "heldtap", "alias", "bridgelab lab=h"]):
        subprocess.run(["ip", "-n", netns_name, *argv], check=True)
    holder = subprocess.Popen(["ip", "netns", "exec", netns_name, sys.executable, "-c", textwrap.dedent("""
        import fcntl, os, struct, sys, time
        fd = os.open("/dev/net/tun", os.O_RDWR)
        fcntl.ioctl(fd, 0x400454ca, struct.pack("16sH", b"heldtap", 0x0002 | 0x1000))  # TUNSETIFF, IFF_TAP|NO_PI
        print("held", flush=True)
        time.sleep(600)
    """)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        subprocess.run(["rm", "-r", str(state)], check=True)
        p = in_ns(netns_name, *CLI, "cleanup", "--all", env={"BRIDGELAB_STATE_DIR": str(tmp_path / "none")})
        assert p.returncode == 1, p.stdout + p.stderr  # the held tap is still there
        assert f"lab t: removed tap {tap} (not in a ledger: found by its alias)" in p.stdout, p.stdout
        assert "lab t: removed bridge t-br (not in a ledger: found by its alias)" in p.stdout, p.stdout
        assert "lab t: removed the lab's rules from iptables-" in p.stdout, p.stdout
        assert "tap heldtap of lab h: a process still holds it open" in p.stdout, p.stdout
        assert set(links_in(netns_name)) == {"lo", "userbr", "otherbr", "heldtap"}
        assert TAG not in saves(netns_name)
    finally:
        holder.kill()
        holder.wait()
    p = in_ns(netns_name, *CLI, "cleanup", "--lab", "h")
    assert p.returncode == 0 and "lab h: removed tap heldtap" in p.stdout, p.stdout
    assert set(links_in(netns_name)) == {"lo", "userbr", "otherbr"}


def test_cleanup_refuses_a_bad_lab_name_and_a_ledger_of_another_netns(netns_name, tmp_path):
    p = subprocess.run([*CLI, "cleanup", "--lab", "Bad;name"], capture_output=True, text=True)
    assert p.returncode == 2 and "invalid lab name" in p.stderr, p.stderr
    state = tmp_path / "s"
    killed_lab(netns_name, tmp_path, state)
    # From this test's own namespace, the ledger is not about here: it must be kept, untouched.
    ledger = (state / "ledger.json").read_text()
    p = subprocess.run([*CLI, "cleanup", "--lab", "t", "--state-dir", str(state)], capture_output=True, text=True)
    assert p.returncode == 1 and f"network namespace {netns_name}" in p.stdout, p.stdout
    assert (state / "ledger.json").read_text() == ledger
    assert in_ns(netns_name, *CLI, "cleanup", "--lab", "t", "--state-dir", str(state)).returncode == 0
    assert links_in(netns_name) == {"lo": ""}


def test_lab_lock_is_seen_while_held_and_gone_with_its_holder(in_netns, tmp_path):
    assert not lablock.running("t")
    held = lablock.LabLock("t", tmp_path / "s")
    held.acquire()
    try:
        assert lablock.running("t") and not lablock.running("u")
        with pytest.raises(lablock.StateDirBusy):
            lablock.lock_state_dir(tmp_path / "s")
    finally:
        held.release()
    assert not lablock.running("t")
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import pathlib, time
        from bridgelab.host import lablock
        lock = lablock.LabLock("t", pathlib.Path({str(tmp_path / "s")!r}))
        lock.acquire()
        print("held", flush=True)
        time.sleep(600)
    """)], stdout=subprocess.PIPE, text=True)  # inherits this thread's netns
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        assert lablock.running("t")
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    assert not lablock.running("t")  # the kernel dropped it with the process: never stale
    os.close(lablock.lock_state_dir(tmp_path / "s"))


@pytest.mark.parametrize("kind", ["directory", "file", "absent"])
def test_preflight_stops_at_a_directory_where_the_iptables_lock_belongs(netns_name, tmp_path, kind):
    lock = tmp_path / "run" / "xtables.lock"
    lock.parent.mkdir()
    if kind == "directory":
        lock.mkdir()
    elif kind == "file":
        lock.touch()
    env = {"XTABLES_LOCKFILE": str(lock)}
    p = in_ns(netns_name, *CLI, "preflight", env=env)
    served = in_ns(netns_name, *CLI, "serve", "--lab", str(Path(__file__).parent.parent / "lab.yaml"),
                   "--state-dir", str(tmp_path / "s"), "--listen", f"unix:{tmp_path}/api.sock", env=env) \
        if kind == "directory" else None
    if kind == "directory":
        assert p.returncode == 1 and f"sudo rmdir {lock}" in p.stderr, p.stderr
        assert served is not None and served.returncode == 1 and f"sudo rmdir {lock}" in served.stderr
        assert links_in(netns_name) == {"lo": ""} and not (tmp_path / "s").exists()
        assert lock.is_dir()  # reported, never removed: bridgelab did not make it
    else:
        assert p.returncode == 0, p.stderr
        assert lock.exists() == (kind == "file")  # the check creates nothing


def test_the_lock_message_names_the_hosts_path_inside_the_container():
    path = preflight.HOST_RUN / "xtables.lock"
    assert preflight.host_path(path) == Path("/run/xtables.lock")
    assert preflight.host_path(Path("/run/xtables.lock")) == Path("/run/xtables.lock")
    assert "does not exist (mount the host's /run there" in str(preflight.xtables_lock_problem(
        preflight.HOST_RUN / "nowhere" / "xtables.lock"))
