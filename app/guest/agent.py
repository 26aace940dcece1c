"""qemu-guest-agent over its virtio-serial socket: exec with separate stdout,
stderr and exit code, without touching the serial console.

The agent speaks QMP-style JSON lines without a greeting. A client that
connects may find stale bytes from an earlier one, so every session starts
with guest-sync-delimited: the agent answers with 0xFF followed by the
echoed id, and everything before that is discarded.
"""

from __future__ import annotations

import base64
import json
import secrets
import socket
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import GuestError

SYNC_DELIMITER = b"\xff"


class AgentUnavailable(GuestError):
    """No guest agent answers (not installed, not started yet, or gone)."""


class AgentLost(GuestError):
    """The agent went away while a command it had started ran: the command
    may or may not have run to its end."""


@dataclass(frozen=True)
class AgentResult:
    exit_code: int | None
    stdout: bytes
    stderr: bytes
    timed_out: bool
    truncated: bool


# qemu-guest-agent runs as a root system service with almost no environment
# (no HOME: `~` would not expand); a command gets what a root login would have,
# so the agent and the console paths behave alike.
EXEC_ENV = ["HOME=/root", "USER=root", "LOGNAME=root", "SHELL=/bin/sh", "LANG=C.UTF-8",
            "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"]


def exec_args(argv: list[str]) -> dict[str, Any]:
    return {"path": argv[0], "arg": argv[1:], "env": EXEC_ENV, "capture-output": True}


def decode_status(status: dict[str, Any]) -> tuple[bool, int | None, bytes, bytes, bool]:
    """(exited, exit code, stdout, stderr, truncated by the agent) from guest-exec-status."""
    code = status.get("exitcode")
    if code is None and status.get("signal") is not None:
        code = 128 + int(status["signal"])  # as a shell reports a signal death
    return (bool(status.get("exited")), code, base64.b64decode(status.get("out-data", "")),
            base64.b64decode(status.get("err-data", "")),
            bool(status.get("out-truncated") or status.get("err-truncated")))


class GuestAgent:
    """One connection to one guest's agent; calls are serialized."""

    def __init__(self, path: Path):
        self.path = path
        self._sock: socket.socket | None = None
        self._buf = b""
        self._lock = threading.Lock()

    def close(self) -> None:
        with self._lock:
            self._drop()

    def _drop(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        self._buf = b""

    def _connect(self, timeout: float) -> socket.socket:
        if self._sock is None:
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                s.connect(str(self.path))
            except OSError as e:
                s.close()
                raise AgentUnavailable(f"cannot connect to {self.path}: {e.strerror}") from None
            self._sock = s
            self._sync(timeout)
        return self._sock

    def _sync(self, timeout: float) -> None:
        assert self._sock is not None
        token = secrets.randbelow(1 << 31)
        self._sock.sendall(SYNC_DELIMITER + json.dumps(
            {"execute": "guest-sync-delimited", "arguments": {"id": token}}).encode() + b"\n")
        deadline = time.monotonic() + timeout
        while True:
            line = self._read_line(deadline)
            if SYNC_DELIMITER in line:
                line = line.rsplit(SYNC_DELIMITER, 1)[1]
            try:
                if json.loads(line).get("return") == token:
                    return
            except ValueError:
                continue

    def _read_line(self, deadline: float) -> bytes:
        assert self._sock is not None
        while b"\n" not in self._buf:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                self._drop()
                raise AgentUnavailable(f"no answer from the guest agent at {self.path}")
            self._sock.settimeout(remaining)
            try:
                chunk = self._sock.recv(65536)
            except socket.timeout:
                continue  # the deadline check above ends it
            except OSError as e:
                self._drop()
                raise AgentUnavailable(f"guest agent at {self.path}: {e.strerror}") from None
            if not chunk:
                self._drop()
                raise AgentUnavailable(f"the guest agent at {self.path} closed the connection")
            self._buf += chunk
        line, _, self._buf = self._buf.partition(b"\n")
        return line

    def call(self, command: str, arguments: dict[str, Any] | None = None, timeout: float = 10.0) -> Any:
        with self._lock:
            sock = self._connect(min(timeout, 5.0))
            msg: dict[str, Any] = {"execute": command}
            if arguments:
                msg["arguments"] = arguments
            try:
                sock.sendall(json.dumps(msg).encode() + b"\n")
            except OSError as e:
                self._drop()
                raise AgentUnavailable(f"guest agent: {e.strerror}") from None
            reply = json.loads(self._read_line(time.monotonic() + timeout).lstrip(SYNC_DELIMITER))
            if "error" in reply:
                raise GuestError(f"guest agent {command}: {reply['error'].get('desc', reply['error'])}")
            return reply.get("return")

    def ping(self, timeout: float = 2.0) -> bool:
        try:
            self.call("guest-ping", timeout=timeout)
            return True
        except (AgentUnavailable, GuestError):
            return False

    def shutdown(self, mode: str, error_wait: float = 0.5) -> bool:
        """guest-shutdown ("reboot" or "powerdown"). The agent answers nothing
        when it obeys (the guest goes down), so an error is awaited briefly
        and silence counts as done. False when no agent took the request."""
        with self._lock:
            try:
                sock = self._connect(2.0)
                sock.sendall(json.dumps({"execute": "guest-shutdown", "arguments": {"mode": mode}}).encode() + b"\n")
            except (AgentUnavailable, OSError):
                self._drop()
                return False
            try:
                reply = json.loads(self._read_line(time.monotonic() + error_wait).lstrip(SYNC_DELIMITER))
            except (AgentUnavailable, ValueError):
                reply = {}  # silence or a closed channel: the guest is going down
            self._drop()  # the next call reconnects (and re-syncs)
            return "error" not in reply

    def run(self, argv: list[str], timeout: float, cap: int) -> AgentResult:
        """guest-exec, then poll its status; on timeout the process is killed in the guest."""
        pid = self.call("guest-exec", exec_args(argv))["pid"]
        # From here the command runs: losing the agent must not make the
        # caller fall back and run it a second time.
        try:
            return self._await_exit(pid, timeout, cap)
        except AgentUnavailable as e:
            raise AgentLost(f"lost the guest agent while {argv[0]} (pid {pid}) ran: {e}") from None

    def _await_exit(self, pid: int, timeout: float, cap: int) -> AgentResult:
        deadline = time.monotonic() + timeout
        delay = 0.02
        while True:
            exited, code, out, err, cut = decode_status(self.call("guest-exec-status", {"pid": pid}))
            if exited:
                return AgentResult(code, out[:cap], err[:cap], False, cut or len(out) > cap or len(err) > cap)
            if time.monotonic() >= deadline:
                try:
                    self.call("guest-exec", exec_args(["kill", "-KILL", str(pid)]))
                except GuestError:
                    pass
                return AgentResult(None, b"", b"", True, False)
            time.sleep(delay)
            delay = min(delay * 2, 0.25)


__all__ = ["AgentLost", "AgentResult", "AgentUnavailable", "GuestAgent", "decode_status", "exec_args"]
