"""A stand-in for qemu in the in-process runner tests: it serves a QMP
socket (greeting, qmp_capabilities, cont, quit; system_powerdown is not
heard, as on riscv64 `virt`) and a
console socket, and once `cont` arrives runs tests/fakeguest.py on a pty
behind the console, as qemu runs a guest behind its serial port.

Inside the guest, `systemctl poweroff` ends this process (like a guest
powering off) and `systemctl reboot` starts the guest again on the same
console (see fakenm.py).

With --agent-after S, a qemu-guest-agent answers on the --agent socket S
seconds after `cont` (guest-sync-delimited, guest-ping, guest-exec and its
status, guest-shutdown); its commands run as the guest's shell's do, with
fakenm's tools and the guest's own /etc. Before that, and without it, the
socket takes connections and answers nothing, as qemu's does while no
agent runs in the guest.

Usage: fakeqemu.py --qmp SOCK --console SOCK [--agent SOCK [--agent-after S]] [--crash-after S] [--status N]
                   -- [fakeguest args]
"""

from __future__ import annotations

import argparse
import base64
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

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a script, from anywhere
from tests.fakeguest import own_etc  # noqa: E402

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


class Agent:
    """qemu-guest-agent, as seen through qemu's virtio-serial socket."""

    def __init__(self, machine: Machine, starts_after: float | None):
        self.machine = machine
        self.starts_after = starts_after
        self.started_at: float | None = None
        self.processes: dict[int, subprocess.Popen[bytes]] = {}

    def running(self) -> bool:
        return (self.machine.running.is_set() and self.starts_after is not None and self.started_at is not None
                and time.monotonic() - self.started_at >= self.starts_after)

    def serve(self, server: socket.socket) -> None:
        while True:
            conn, _ = server.accept()
            with contextlib.suppress(OSError):
                self._session(conn)
            conn.close()

    def _session(self, conn: socket.socket) -> None:
        buf = b""
        while data := conn.recv(65536):
            if not self.running():
                buf = b""  # nobody reads the port yet
                continue
            buf += data
            while b"\n" in buf:
                line, _, buf = buf.partition(b"\n")
                reply = self._answer(json.loads(line.lstrip(b"\xff")))
                if reply is not None:
                    conn.sendall(reply)

    def _answer(self, msg: dict[str, object]) -> bytes | None:
        args = msg.get("arguments") or {}
        assert isinstance(args, dict)
        command = msg.get("execute")
        if command == "guest-sync-delimited":
            return b"\xff" + json.dumps({"return": args["id"]}).encode() + b"\n"
        if command == "guest-exec":
            env = {**os.environ, **dict(e.split("=", 1) for e in args.get("env", [])),
                   "PATH": os.environ["PATH"], "HOME": os.environ.get("HOME", "/")}  # fakenm's tools first
            proc = subprocess.Popen(own_etc([str(args["path"]), *args.get("arg", [])]), stdin=subprocess.DEVNULL,
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
            self.processes[proc.pid] = proc
            threading.Thread(target=self._collect, args=(proc,), daemon=True).start()
            return self._reply({"pid": proc.pid})
        if command == "guest-exec-status":
            proc = self.processes[int(str(args["pid"]))]
            if not getattr(proc, "collected", False):
                return self._reply({"exited": False})
            out, err = proc.collected  # type: ignore[attr-defined]
            return self._reply({"exited": True, "exitcode": proc.returncode,
                                "out-data": base64.b64encode(out).decode(), "err-data": base64.b64encode(err).decode()})
        if command == "guest-shutdown":  # obeyed, never answered
            if args.get("mode") == "reboot":
                self.machine.reboot.set()
                self.started_at = time.monotonic()
            else:
                os.kill(os.getpid(), signal.SIGTERM)
            return None
        return self._reply({})  # guest-ping and the rest

    @staticmethod
    def _collect(proc: subprocess.Popen[bytes]) -> None:
        out, err = proc.communicate()
        proc.collected = (out, err)  # type: ignore[attr-defined]

    @staticmethod
    def _reply(value: object) -> bytes:
        return json.dumps({"return": value}).encode() + b"\n"


def listen(path: str) -> socket.socket:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(path)
    s.listen(1)
    return s


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--qmp", required=True)
    ap.add_argument("--console", required=True)
    ap.add_argument("--agent")
    ap.add_argument("--agent-after", type=float, help="the guest agent answers this long after cont")
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
    agent = Agent(machine, a.agent_after)
    if a.agent:
        threading.Thread(target=agent.serve, args=(listen(a.agent),), daemon=True).start()
    console, _ = console_server.accept()
    machine.running.wait()
    agent.started_at = time.monotonic()
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
