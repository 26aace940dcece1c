"""A stand-in for qemu in the in-process runner tests: it serves a QMP
socket (greeting, qmp_capabilities, cont, quit; system_powerdown is not
heard, as on riscv64 `virt`) and a
console socket, and once `cont` arrives runs tests/fakeguest.py on a pty
behind the console, as qemu runs a guest behind its serial port.

Inside the guest, `systemctl poweroff` ends this process (like a guest
powering off) and `systemctl reboot` starts the guest again on the same
console (see fakenm.py).

Usage: fakeqemu.py --qmp SOCK --console SOCK [--crash-after S] [--status N] -- [fakeguest args]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import pty
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

FAKEGUEST = Path(__file__).with_name("fakeguest.py")


class Machine:
    def __init__(self, guest_args: list[str]):
        self.guest_args = guest_args
        self.running = threading.Event()  # cont received
        self.guest: subprocess.Popen[bytes] | None = None
        self.master: int | None = None
        self.reboot = threading.Event()

    def boot(self) -> None:
        master, slave = pty.openpty()
        env = {**os.environ, "FAKE_QEMU_PID": str(os.getpid())}
        self.guest = subprocess.Popen([sys.executable, str(FAKEGUEST), *self.guest_args], stdin=slave, stdout=slave,
                                      stderr=slave, env=env, start_new_session=True)
        os.close(slave)
        self.master = master

    def halt(self) -> None:
        """Power the guest off: from the relay, a signal handler or the crash
        timer, so whatever is already gone is fine."""
        guest, master, self.master = self.guest, self.master, None
        if guest is not None and guest.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(guest.pid, signal.SIGKILL)
            guest.wait()
        if master is not None:
            with contextlib.suppress(OSError):
                os.close(master)


def serve_qmp(server: socket.socket, machine: Machine) -> None:
    """QMP as qemu speaks it: a greeting, then one reply per command. Commands
    are a JSON stream (qemu.qmp sends no newline), so they are split by parsing."""
    conn, _ = server.accept()
    conn.sendall(json.dumps({"QMP": {"version": {"qemu": {"major": 7, "minor": 2, "micro": 0}, "package": ""},
                                     "capabilities": []}}).encode() + b"\r\n")
    decoder, buf = json.JSONDecoder(), ""
    while data := conn.recv(65536):
        buf += data.decode()
        while buf.strip():
            try:
                msg, end = decoder.raw_decode(buf.lstrip())
            except ValueError:
                break  # incomplete: wait for more
            buf = buf.lstrip()[end:]
            reply: dict[str, object] = {"return": {}}
            if "id" in msg:
                reply["id"] = msg["id"]
            conn.sendall(json.dumps(reply).encode() + b"\r\n")
            if msg.get("execute") == "cont":
                machine.running.set()
            elif msg.get("execute") == "quit":
                os.kill(os.getpid(), signal.SIGTERM)
            # system_powerdown goes unheard, as on riscv64 `virt` (no ACPI button)


def relay(console: socket.socket, machine: Machine) -> None:
    """Bytes between the console socket and the guest's pty, until the guest
    powers off (SIGTERM to us) or the client goes away."""
    while True:
        if machine.reboot.is_set():
            machine.reboot.clear()
            machine.halt()
            machine.boot()
        master = machine.master
        fds = [console] + ([master] if master is not None else [])
        try:
            ready, _, _ = select.select(fds, [], [], 0.2)
        except (OSError, ValueError):  # the master was closed under us (a halt)
            continue
        if console in ready:
            data = console.recv(65536)
            if not data:
                return
            if master is not None:
                with contextlib.suppress(OSError):
                    os.write(master, data)
        if master is not None and master in ready:
            try:
                data = os.read(master, 65536)
            except OSError:  # the guest's shell exited: wait for a reboot or a poweroff
                data = b""
            if data:
                console.sendall(data)
            elif machine.master == master:
                machine.master = None
                with contextlib.suppress(OSError):
                    os.close(master)


def listen(path: str) -> socket.socket:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(path)
    s.listen(1)
    return s


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--qmp", required=True)
    ap.add_argument("--console", required=True)
    ap.add_argument("--crash-after", type=float)
    ap.add_argument("--status", type=int, default=1)
    ap.add_argument("guest_args", nargs="*")
    a = ap.parse_args()
    machine = Machine(a.guest_args)

    def power_off(*_: object) -> None:
        try:
            machine.halt()
        finally:
            os._exit(0)
    signal.signal(signal.SIGTERM, power_off)
    signal.signal(signal.SIGHUP, lambda *_: machine.reboot.set())
    console_server = listen(a.console)
    qmp_server = listen(a.qmp)
    threading.Thread(target=serve_qmp, args=(qmp_server, machine), daemon=True).start()
    console, _ = console_server.accept()
    machine.running.wait()
    if a.crash_after is not None:
        def crash() -> None:
            time.sleep(a.crash_after)
            print(f"fakeqemu: guest crashed on purpose after {a.crash_after}s", file=sys.stderr, flush=True)
            try:
                machine.halt()
            finally:
                os._exit(a.status)
        threading.Thread(target=crash, daemon=True).start()
    machine.boot()
    relay(console, machine)
    machine.halt()


if __name__ == "__main__":
    main()
