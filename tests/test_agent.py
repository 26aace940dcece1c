"""The guest-agent protocol's edge cases against a scripted agent on a real
unix socket (the VM tier runs the real qemu-guest-agent)."""

from __future__ import annotations

import base64
import json
import socket
import threading
from pathlib import Path

import pytest
from bridgelab.guest.agent import EXEC_ENV, AgentUnavailable, GuestAgent, decode_status


def serve(path: Path, polls_before_exit: int = 2, stale: bytes = b'{"return": {}}\n{"garbage',
          obey_shutdown: bool = True) -> list[dict]:
    """A one-connection agent: stale bytes first, then sync, exec, status.
    guest-shutdown answers nothing and hangs up when obeyed, as the real
    agent does while its guest goes down."""
    seen: list[dict] = []
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind(str(path))
    srv.listen(1)

    def run() -> None:
        conn, _ = srv.accept()
        conn.sendall(stale)  # what an earlier client left unread
        buf = b""
        polls = 0
        while True:
            data = conn.recv(65536)
            if not data:
                return
            buf += data
            while b"\n" in buf:
                line, _, buf = buf.partition(b"\n")
                msg = json.loads(line.lstrip(b"\xff"))
                seen.append(msg)
                cmd = msg["execute"]
                if cmd == "guest-sync-delimited":
                    reply: dict = {"return": msg["arguments"]["id"]}
                    conn.sendall(b"\xff" + json.dumps(reply).encode() + b"\n")
                    continue
                if cmd == "guest-shutdown" and obey_shutdown:
                    conn.close()
                    return
                if cmd == "guest-exec":
                    reply = {"return": {"pid": 4242}}
                elif cmd == "guest-exec-status":
                    polls += 1
                    reply = {"return": {"exited": False}} if polls <= polls_before_exit else {"return": {
                        "exited": True, "exitcode": 3, "out-data": base64.b64encode(b"out\n" * 10).decode(),
                        "err-data": base64.b64encode(b"err\n").decode()}}
                else:
                    reply = {"error": {"class": "CommandNotFound", "desc": f"{cmd} not found"}}
                conn.sendall(json.dumps(reply).encode() + b"\n")
    threading.Thread(target=run, daemon=True).start()
    return seen


def test_exec_syncs_past_stale_bytes_and_separates_streams(tmp_path):
    seen = serve(tmp_path / "qga.sock")
    agent = GuestAgent(tmp_path / "qga.sock")
    try:
        r = agent.run(["sh", "-c", "x; y"], timeout=5, cap=12)
    finally:
        agent.close()
    assert (r.exit_code, r.stdout, r.stderr, r.timed_out, r.truncated) == (3, b"out\nout\nout\n", b"err\n", False,
                                                                          True)
    assert seen[1] == {"execute": "guest-exec", "arguments": {"path": "sh", "arg": ["-c", "x; y"],
                                                              "env": EXEC_ENV, "capture-output": True}}
    assert "HOME=/root" in EXEC_ENV  # the agent's own environment has none: `~` would not expand


def test_timeout_kills_the_guest_process(tmp_path):
    seen = serve(tmp_path / "qga.sock", polls_before_exit=10 ** 6)
    agent = GuestAgent(tmp_path / "qga.sock")
    try:
        r = agent.run(["sleep", "100"], timeout=0.3, cap=100)
    finally:
        agent.close()
    assert r.timed_out and r.exit_code is None
    assert seen[-1]["arguments"] == {"path": "kill", "arg": ["-KILL", "4242"], "env": EXEC_ENV,
                                     "capture-output": True}


def test_no_agent_is_unavailable_not_a_hang(tmp_path):
    assert not GuestAgent(tmp_path / "missing.sock").ping(timeout=0.5)
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)  # listening, never answering
    srv.bind(str(tmp_path / "mute.sock"))
    srv.listen(1)
    with pytest.raises(AgentUnavailable):
        GuestAgent(tmp_path / "mute.sock").call("guest-ping", timeout=0.5)


def test_signal_death_reads_as_128_plus_signal():
    assert decode_status({"exited": True, "signal": 9})[1] == 137


def test_shutdown_counts_silence_as_obeyed_and_an_error_as_refused(tmp_path):
    seen = serve(tmp_path / "obey.sock")
    assert GuestAgent(tmp_path / "obey.sock").shutdown("reboot")
    assert seen[-1] == {"execute": "guest-shutdown", "arguments": {"mode": "reboot"}}
    serve(tmp_path / "refuse.sock", obey_shutdown=False)  # e.g. guest-shutdown disabled by the guest's policy
    assert not GuestAgent(tmp_path / "refuse.sock").shutdown("powerdown")
    assert not GuestAgent(tmp_path / "missing.sock").shutdown("powerdown")
