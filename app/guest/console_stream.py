"""The socket side of a guest's serial console: one reader thread per
console that answers the terminal queries systemd sends at boot, spots boot
stages in the stream, and feeds pexpect through a pipe (so that nothing the
guest prints is lost while nobody is reading)."""

from __future__ import annotations

import fcntl
import logging
import os
import socket
import threading
from typing import Any, Callable

from pexpect import fdpexpect

log = logging.getLogger(__name__)


# Terminal queries that systemd (PID 1 and serial-getty) sends at boot and
# then waits for with a timeout. A real terminal answers at once; answering
# like one takes ~3 s off a TCG boot to the login prompt (39.7 -> 36.8 s,
# median of 3). The size we report, 50x200, is what the guest's tty gets.
_TERMINAL_QUERIES = {
    b"\x1b[6n": b"\x1b[50;200R",  # DSR cursor position (after moving to 32766;32766)
    b"\x1bP+q": b"\x1bP0+r\x1b\\",  # XTGETTCAP: "not supported"
}
_QUERY_TAIL = max(len(q) for q in _TERMINAL_QUERIES) - 1


def terminal_replies(tail: bytes, data: bytes) -> list[bytes]:
    """Replies for the queries that end inside `data` (`tail` is what came
    just before, so a query split across two reads is still seen once)."""
    window = tail + data
    replies = []
    for query, reply in _TERMINAL_QUERIES.items():
        start = window.find(query)
        while start != -1:
            if start + len(query) > len(tail):
                replies.append((start, reply))
            start = window.find(query, start + 1)
    return [r for _, r in sorted(replies)]


# What a guest prints on its way up, mapped to the readiness stage it marks.
# With `quiet` the kernel prints nothing, so "kernel" may only come from
# U-Boot's "Starting kernel ..." or be missing; systemd's first terminal
# query is the first sign of userspace either way.
BOOT_MARKERS = {
    b"OpenSBI v": "firmware", b"U-Boot ": "firmware", b"SeaBIOS": "firmware", b"EFI stub": "firmware",
    b"Starting kernel ...": "kernel", b"Linux version ": "kernel", b"Booting Linux": "kernel",
    b"\x1bP+q": "userspace", b"\x1b[6n": "userspace", b"Welcome to ": "userspace",
}
_MARKER_TAIL = max(len(m) for m in BOOT_MARKERS) - 1


def boot_stages(tail: bytes, data: bytes) -> list[str]:
    """Stages whose marker ends inside `data`, in order of appearance."""
    window = tail + data
    found = []
    for marker, stage in BOOT_MARKERS.items():
        at = window.find(marker)
        while at != -1 and at + len(marker) <= len(tail):
            at = window.find(marker, at + 1)
        if at != -1:
            found.append((at, stage))
    return list(dict.fromkeys(stage for _, stage in sorted(found)))


class Pump:
    """Keeps reading a serial socket whether or not anyone is expecting.

    A qemu socket chardev whose client stops reading makes the guest's UART
    block, and the guest stalls within a few hundred bytes (measured: a guest
    whose console was connected but unread for 55 s was still in OpenSBI).
    So a thread drains the socket into a large non-blocking pipe that pexpect
    reads; if nobody reads for long enough to fill it, the newest bytes are
    dropped (qemu's console.log still has everything)."""

    PIPE_SIZE = 1 << 20
    RECENT = 8192  # what the API shows as the console's tail, kept here so no request reads the log file

    def __init__(self, sock: socket.socket, name: str, on_stage: Callable[[str], None] | None = None):
        self.sock = sock
        self._on_stage = on_stage
        self.rfd, self._wfd = os.pipe()
        try:
            fcntl.fcntl(self._wfd, fcntl.F_SETPIPE_SZ, self.PIPE_SIZE)
        except OSError:
            pass  # the default 64 KiB still works, it just fills sooner
        os.set_blocking(self._wfd, False)
        self.dropped = 0
        self.received = 0
        self.recent = b""
        self._watchers: list[Callable[[bytes], None]] = []
        self._thread = threading.Thread(target=self._run, name=f"console-{name}", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        tail = b""
        try:
            while data := self.sock.recv(65536):
                for reply in terminal_replies(tail, data):
                    self.sock.sendall(reply)
                if self._on_stage is not None:
                    for stage in boot_stages(tail, data):
                        self._on_stage(stage)
                tail = (tail + data)[-max(_QUERY_TAIL, _MARKER_TAIL):]
                self.recent = (self.recent + data)[-self.RECENT:]  # one new object: readers see old or new
                self.received += len(data)
                for watch in list(self._watchers):
                    watch(data)
                try:
                    written = os.write(self._wfd, data)
                except BlockingIOError:
                    written = 0
                self.dropped += len(data) - written
        except OSError:
            pass
        finally:
            os.close(self._wfd)  # the reader sees EOF

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def watch(self, callback: Callable[[bytes], None]) -> Callable[[], None]:
        """Copy everything the guest prints to `callback` (called on the pump
        thread: it must not block). Returns the function that stops it."""
        self._watchers.append(callback)
        return lambda: self._watchers.remove(callback) if callback in self._watchers else None

    def close(self) -> None:
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self._thread.join(5)
        self.sock.close()
        os.close(self.rfd)


class PumpSpawn(fdpexpect.fdspawn):
    """pexpect over the pump: reads come from its pipe, writes go to the socket."""

    def __init__(self, pump: Pump, **kwargs: Any):
        super().__init__(pump.rfd, **kwargs)
        self._pump = pump

    def send(self, s: str | bytes) -> int:
        s = self._coerce_send_string(s)
        self._log(s, "send")
        b = self._encoder.encode(s, final=False)
        self._pump.send(b)
        return len(b)
