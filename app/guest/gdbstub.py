"""Just enough of the GDB remote serial protocol to raise one riscv64 timer
interrupt in a restored guest.

QEMU before 10.2 does not re-arm a riscv64 hart's timers when it loads a
snapshot into a fresh process (the stimer QEMUTimer is not migrated). The
guest kernel then believes a timer event is pending that never comes: `sleep`
hangs, and nothing in the guest can recover, because on a one-hart guest
settimeofday() does not reprogram the local clockevent. One supervisor timer
interrupt (STIP set in `mip`) makes the kernel run its timer handler, which
writes `stimecmp` again, and QEMU arms its timer from that write. Measured on
QEMU 7.2 with Debian sid riscv64: `sleep 2` hung for more than 10 s after a
restore, and took 2.08 s with this interrupt raised once.

QEMU exposes `mip` through its gdbstub only; there is no QMP command for it.
The stub is opened on a unix socket for the moment of the write (HMP
`gdbserver`) and closed again. gdb itself (gdb-multiarch) would be 30 MB in
the appliance for one register write, hence this small client.
"""

from __future__ import annotations

import re
import socket
from pathlib import Path

from ..errors import GuestError

MIP_STIP = 1 << 5
_PACKET = re.compile(rb"\$([^#]*)#[0-9a-fA-F]{2}")


class GdbStubError(GuestError):
    """The gdbstub did not answer as QEMU's does."""


class GdbRemote:
    def __init__(self, path: Path, timeout: float = 5.0):
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._sock.settimeout(timeout)
        self._sock.connect(str(path))
        self._buf = b""

    def close(self) -> None:
        self._sock.close()

    def command(self, data: str) -> str:
        checksum = sum(data.encode()) & 0xFF
        self._sock.sendall(f"${data}#{checksum:02x}".encode())
        return self._reply()

    def _reply(self) -> str:
        while True:
            m = _PACKET.search(self._buf)
            if m:
                self._buf = self._buf[m.end():]
                self._sock.sendall(b"+")
                return m.group(1).decode(errors="replace")
            chunk = self._sock.recv(65536)
            if not chunk:
                raise GdbStubError("the gdbstub closed the connection")
            self._buf += chunk

    def feature(self, annex: str) -> str:
        """One target description document, read in chunks."""
        text, offset = "", 0
        while True:
            reply = self.command(f"qXfer:features:read:{annex}:{offset:x},800")
            if not reply or reply[0] not in "lm":
                raise GdbStubError(f"cannot read {annex}: {reply!r}")
            text += reply[1:]
            offset += len(reply) - 1
            if reply[0] == "l":
                return text

    def register_number(self, name: str) -> int:
        top = self.feature("target.xml")
        for annex in re.findall(r'href="([^"]+)"', top):
            m = re.search(rf'<reg name="{re.escape(name)}"[^>]*regnum="(\d+)"', self.feature(annex))
            if m:
                return int(m.group(1))
        raise GdbStubError(f"the target has no register {name!r}")

    def read_register(self, number: int) -> tuple[int, int]:
        """(value, width in bytes); the stub sends target (little-endian) byte order."""
        reply = self.command(f"p{number:x}")
        try:
            raw = bytes.fromhex(reply)
        except ValueError:
            raise GdbStubError(f"register {number}: {reply!r}") from None
        return int.from_bytes(raw, "little"), len(raw)

    def write_register(self, number: int, value: int, width: int) -> None:
        reply = self.command(f"P{number:x}={value.to_bytes(width, 'little').hex()}")
        if reply != "OK":
            raise GdbStubError(f"writing register {number}: {reply!r}")


    def threads(self) -> list[str]:
        """The stub's thread ids: one per vCPU."""
        ids: list[str] = []
        reply = self.command("qfThreadInfo")
        while reply.startswith("m"):
            ids += [t for t in reply[1:].split(",") if t]
            reply = self.command("qsThreadInfo")
        return ids


def raise_supervisor_timer(path: Path) -> int:
    """Set STIP in every hart's `mip` through the gdbstub at `path`, then
    detach; returns how many harts got it."""
    stub = GdbRemote(path)
    try:
        stub.command("qSupported:xmlRegisters=riscv")
        stub.command("?")
        mip = stub.register_number("mip")
        harts = stub.threads() or ["0"]
        for thread in harts:
            if stub.command(f"Hg{thread}") != "OK":
                raise GdbStubError(f"cannot select thread {thread}")
            value, width = stub.read_register(mip)
            stub.write_register(mip, value | MIP_STIP, width)
        stub.command("D")
        return len(harts)
    finally:
        stub.close()


__all__ = ["GdbStubError", "MIP_STIP", "raise_supervisor_timer"]
