"""One daemon per lab, and a way for anyone else to see that it is alive.

Two locks, both held by the kernel for the daemon's lifetime and dropped the
moment it dies, so a SIGKILLed daemon never leaves a stale lock behind:

- an flock on `<state dir>/lock`: one daemon per state directory (its
  ledger, overlays and declared state);
- an abstract unix socket named `bridgelab lab=NAME`: one daemon per lab name
  in a network namespace, which is the scope of the lab's links and rules.
  Every process in that namespace sees it, whatever its mount namespace or
  state directory: a second container, or `bridgelab cleanup` run on the
  host while the appliance runs the lab. Nothing lives in the filesystem.
"""

from __future__ import annotations

import errno
import fcntl
import os
import socket
from pathlib import Path

from ..errors import HostNetError


def _address(lab: str) -> bytes:
    return b"\0bridgelab lab=" + lab.encode()


def running(lab: str) -> bool:
    """Whether a daemon in this network namespace owns lab `lab`. A connect,
    not a bind, so that asking can never get in a starting daemon's way."""
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.setblocking(False)
    try:
        probe.connect(_address(lab))
    except OSError as e:
        # EAGAIN: a full backlog, so a listener is there.
        return e.errno == errno.EAGAIN
    finally:
        probe.close()
    return True


class StateDirBusy(HostNetError):
    """Another process holds the state directory's lock."""


def lock_state_dir(state_dir: Path) -> int:
    """Hold `<state dir>/lock`; the returned descriptor keeps it."""
    state_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(state_dir / "lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise StateDirBusy(f"another bridgelab holds {state_dir}") from None
    return fd


class LabLock:
    """Both locks, for a daemon that runs lab `name` from `state_dir`."""

    def __init__(self, name: str, state_dir: Path):
        self.name = name
        self.state_dir = state_dir
        self._fd: int | None = None
        self._sock: socket.socket | None = None

    def acquire(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.bind(_address(self.name))
        except OSError as e:
            sock.close()
            if e.errno != errno.EADDRINUSE:
                raise
            raise HostNetError(f"another bridgelab runs lab {self.name} in this network namespace "
                               f"(stop it with `bridgelab down`, or give this lab another name)") from None
        sock.listen(16)  # never accepted: `running` only needs a listener to exist
        try:
            self._fd = lock_state_dir(self.state_dir)
        except StateDirBusy:
            sock.close()
            raise HostNetError(f"another bridgelab owns lab {self.name} ({self.state_dir})") from None
        self._sock = sock

    def release(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


__all__ = ["LabLock", "StateDirBusy", "lock_state_dir", "running"]
