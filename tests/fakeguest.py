"""A scripted serial console for the console tests, run on a pty.

It replays what a real Debian sid riscv64 guest printed (tests/data/
sid-console.json: agetty's DCS/CSI queries, OSC 3008 context sequences, the
motd), then hands the terminal to a real bash set up the way sid's
/etc/profile.d/80-systemd-osc-context.sh does (OSC 3008 around every command,
bracketed paste on). A background writer interleaves kernel-style messages.

Usage: fakeguest.py [--password PW] [--silent] [--noise SECONDS] [--never-prompt]
                    [--firmware S] [--autoboot-stops] [--openeuler] [--welcome-delay S]
                    [--tmout S] [--lockout S] [--attempts FILE]

Like a real guest, a shell that ends (exit, TMOUT) brings the login prompt back.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import select
import signal
import subprocess
import sys
import termios
import threading
import time
from pathlib import Path

# A terminal's answers to agetty's queries (cursor position, DCS), which
# bridgelab's console sends as a terminal would.
TERMINAL_REPLY = re.compile(r"\x1b(\[[0-9;?]*[A-Za-z]|P.*?\x1b\\|\].*?(\x07|\x1b\\))")
DATA = json.loads((Path(__file__).parent / "data" / "sid-console.json").read_text())


def out(text: str) -> None:
    os.write(1, text.encode())


def read_line(echo: bool) -> str:
    fd = 0
    old = termios.tcgetattr(fd)
    new = termios.tcgetattr(fd)
    if not echo:
        new[3] &= ~termios.ECHO
    termios.tcsetattr(fd, termios.TCSANOW, new)
    try:
        buf = b""
        while not buf.endswith((b"\n", b"\r")):
            c = os.read(fd, 1)
            if not c:
                sys.exit(0)
            buf += c
        return buf.decode().strip()
    finally:
        termios.tcsetattr(fd, termios.TCSANOW, old)


def kernel_noise(period: float) -> None:
    n = 0
    while True:
        time.sleep(period)
        n += 1
        out(f"\r\n[  {100 + n:4d}.{n:06d}] virtio_net virtio1 eth0: kernel says hello {n}\r\n")


OPENEULER_BANNER = "\r\nAuthorized users only. All activities may be monitored and reported.\r\n"
# openEuler's /etc/profile.d welcome script, coloured, and slow under TCG
# (it runs free, df, ps, ip and who).
OPENEULER_WELCOME = [
    "\r\n\r\n\x1b[1;32mWelcome to 6.6.0-72.0.0.76.oe2403sp1.riscv64\x1b[0m\r\n",
    "\r\nSystem information as of time: \tTue Dec  1 03:00:00 CST 2026\r\n",
    "\r\nSystem load: \t0.83\r\nMemory used: \t11.0%\r\nSwap used: \t0.0%\r\nUsage On: \t9%\r\n",
    "IP address: \t10.198.101.1\r\nUsers online: \t1\r\n\r\n",
]


def record(a: argparse.Namespace, what: str) -> None:
    if a.attempts:
        with open(a.attempts, "a") as f:
            f.write(what + "\n")


def firmware(a: argparse.Namespace) -> None:
    """OpenSBI and U-Boot as the riscv64 chain prints them: a quiet stretch
    (U-Boot probing its devices), then U-Boot's 2 s countdown, which a byte
    typed before or during it stops, as a UART's receive FIFO keeps it."""
    out("\r\nOpenSBI v1.1\r\nPlatform Name             : riscv-virtio,qemu\r\n")
    out("\r\n\r\nU-Boot 2023.01+dfsg-2+deb12u3 (Jun 22 2026 - 08:38:07 +0000)\r\n\r\nCPU:   rv64imafdch\r\n")
    time.sleep(a.firmware)
    out("Hit any key to stop autoboot:  2 ")
    stopped = a.autoboot_stops
    for n in (1, 0):
        if stopped or select.select([0], [], [], 1.0)[0]:
            stopped = True
            break
        out(f"\b\b\b {n} ")
    if stopped:
        record(a, "autoboot stopped")
        termios.tcflush(0, termios.TCIFLUSH)  # the key that stopped it is consumed
        while True:
            out("\r\n=> ")
            command = read_line(echo=True)
            if command == "boot":
                record(a, "boot")
                break
            if command:
                out(f"\r\nUnknown command '{command}' - try 'help'")
    out("\r\n\r\nDevice 0: QEMU VirtIO Block Device\r\nRetrieving file: /boot/extlinux/extlinux.conf\r\n"
        "append: root=/dev/vda rw console=ttyS0 quiet\r\n\r\nStarting kernel ...\r\n\r\n")


class Getty:
    """agetty + login as a guest runs them: the issue, the login prompt, a
    password, a shell; when the shell ends (exit, TMOUT), the prompt again,
    as systemd restarts serial-getty."""

    def __init__(self, a: argparse.Namespace):
        self.a = a
        self.failures = 0  # since the last successful login
        self.locked_until = 0.0
        self.timeouts_left = a.login_times_out
        self.hostname = "openeuler-riscv64" if a.openeuler else "bridgelab"

    def record(self, what: str) -> None:
        record(self.a, what)

    def prompt(self) -> str:
        if self.a.openeuler:
            out(OPENEULER_BANNER + OPENEULER_BANNER)  # printed twice, as /etc/issue and by login
            return f"\r\n{self.hostname} login: "
        return f"\r\nDebian GNU/Linux forky/sid {self.hostname} ttyS0\r\n\r\n{self.hostname} login: "

    def authenticate(self) -> None:
        while True:
            out(self.prompt())
            user = TERMINAL_REPLY.sub("", read_line(echo=True))  # agetty ignores the replies to its queries
            if not user:
                continue
            self.record(f"user {user}")
            time.sleep(self.a.slow_login)  # login(1) starting on a busy host
            out("Password: ")
            password = read_line(echo=False)
            self.record("password")
            out("\r\n")
            if self.timeouts_left:  # PAM and the session's start outlast login(1)'s LOGIN_TIMEOUT
                self.timeouts_left -= 1
                time.sleep(0.2)
                out("login: timed out after 60 seconds\r\n")
                continue
            locked = time.monotonic() < self.locked_until
            if user == "root" and password == self.a.password and not locked:
                return
            self.failures += 1
            if self.a.lockout and self.failures >= 3:  # pam_faillock: deny=3 unlock_time=...
                self.locked_until = time.monotonic() + self.a.lockout
            time.sleep(0.3)
            out("\r\nLogin incorrect\r\n")

    def session(self) -> None:
        if self.a.openeuler:
            out("\r\nLast login: Wed Nov 25 10:00:00 2026 from 10.198.101.114\r\n")
            if self.failures:
                out(f"Last failed login: Tue Dec  1 02:59:00 CST 2026 on ttyS0\r\n"
                    f"There {'was' if self.failures == 1 else 'were'} {self.failures} failed login "
                    f"attempt{'' if self.failures == 1 else 's'} since the last successful login.\r\n")
            for part in OPENEULER_WELCOME:
                time.sleep(self.a.welcome_delay)
                out(part)
            ps1 = f"[root@{self.hostname} ~]# "
        else:
            out("Last login: Wed Nov 25 10:00:00 2026 on ttyS0\r\n")  # as openEuler prints it
            out(DATA["motd"])
            osc = DATA["shell_osc"].replace("\x1b", "\\e")
            ps1 = f"\\[{osc}\\]root@bridgelab:~# "
        self.failures = 0
        rc = (
            f"PS0='\\[\\e]3008;start=cmd;type=command\\e\\\\\\]'\n"
            f"PROMPT_COMMAND='printf \"\\e]3008;end=cmd;exit=success\\e\\\\\"'\n"
            f"PS1='{ps1}'\n"
            "bind 'set enable-bracketed-paste on'\n"
            + (f"readonly TMOUT={self.a.tmout}; export TMOUT\n" if self.a.tmout else "")
        )
        rcfile = Path(os.environ.get("TMPDIR", "/tmp")) / f"fakeguest-{os.getpid()}.rc"
        rcfile.write_text(rc)
        env = {**os.environ, "HOSTNAME": self.hostname}
        subprocess.run(own_etc(["bash", "--noprofile", "--rcfile", str(rcfile), "-i"]), env=env)
        self.record("logout")
        if self.a.password_after_logout:  # someone ran passwd in the guest
            self.a.password = self.a.password_after_logout
        # The shell is gone; take the terminal back, as the next getty would.
        signal.signal(signal.SIGTTOU, signal.SIG_IGN)
        with contextlib.suppress(OSError):  # not our controlling terminal (under fakeqemu)
            os.tcsetpgrp(0, os.getpgrp())
        termios.tcflush(0, termios.TCIFLUSH)  # agetty flushes what was typed before its prompt


def own_etc(argv: list[str]) -> list[str]:
    """With $FAKE_NM_STATE (a guest of the runner tests, which configures its
    network): the shell gets its own /etc, a copy-on-write overlay of the
    host's in a private mount namespace, so what bridgelab writes there (the
    NetworkManager keyfile) lands in the fake guest's state, never on the host.
    The host's system bus is hidden too: the guest's busctl is fakenm's, and
    nothing the guest runs may reach the host's own NetworkManager."""
    state = os.environ.get("FAKE_NM_STATE")
    if not state:
        return argv
    upper, work = Path(state) / "etc", Path(state) / "etc-work"
    upper.mkdir(exist_ok=True)
    work.mkdir(exist_ok=True)
    return ["unshare", "--mount", "--propagation", "private", "sh", "-c",
            'mount -t overlay overlay -o "lowerdir=/etc,upperdir=$1,workdir=$2" /etc && '
            '{ [ ! -d /run/dbus ] || mount -t tmpfs tmpfs /run/dbus; } && shift 2 && exec "$@"',
            "own-etc", str(upper), str(work), *argv]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--password", default="bridgelab")
    ap.add_argument("--silent", action="store_true", help="print the login prompt only after a newline")
    ap.add_argument("--never-prompt", action="store_true")
    ap.add_argument("--noise", type=float, default=0.0)
    ap.add_argument("--openeuler", action="store_true", help="openEuler's banner, welcome script and prompt")
    ap.add_argument("--welcome-delay", type=float, default=0.0, help="seconds per part of the welcome script")
    ap.add_argument("--tmout", type=int, default=0, help="the shell logs out after this many idle seconds")
    ap.add_argument("--lockout", type=float, default=0.0, help="refuse every login for this long after 3 failures")
    ap.add_argument("--attempts", help="append each user name, password and logout seen to this file")
    ap.add_argument("--slow-login", type=float, default=0.0,
                    help="seconds between the user name and the password prompt (login(1) starting slowly)")
    ap.add_argument("--login-times-out", type=int, default=0,
                    help="the first N logins time out after the password, as login(1) does on a busy host")
    ap.add_argument("--password-after-logout", help="the password changes once the first session ends")
    ap.add_argument("--hvc-getty-fails", action="store_true",
                    help="systemd gives up on hvc0, the people's console, and the serial prompt still comes")
    ap.add_argument("--getty-fails", action="store_true",
                    help="systemd gives up on ttyS0 (as seen with 8 guests on 2 cores) and no prompt ever comes")
    ap.add_argument("--firmware", type=float, help="boot through a U-Boot that is quiet this long before "
                                                   "its countdown")
    ap.add_argument("--autoboot-stops", action="store_true",
                    help="the countdown stops at once, as if a key was queued before it")
    a = ap.parse_args()

    if a.firmware is not None:
        firmware(a)
    out(DATA["boot"])
    if a.getty_fails:
        out("[\x1b[0;1;31m TIME \x1b[0m] Timed out waiting for device \x1b[0;1;39mdev-ttyS0.device\x1b[0m"
            " - /dev/ttyS0.\r\n[\x1b[0;1;33mDEPEND\x1b[0m] Dependency failed for \x1b[0;1;39m"
            "serial-getty@ttyS0.service\x1b[0m - Serial Getty on ttyS0.\r\n")
        time.sleep(3600)
    if a.hvc_getty_fails:
        out("[\x1b[0;1;31m TIME \x1b[0m] Timed out waiting for device \x1b[0;1;39mdev-hvc0.device\x1b[0m"
            " - /dev/hvc0.\r\n[\x1b[0;1;38:5:185mDEPEND\x1b[0m] Dependency failed for \x1b[0;1;39m"
            "serial-getty@hvc0.service\x1b[0m - Serial Getty on hvc0.\r\n")
    if a.never_prompt:
        time.sleep(3600)
    if a.silent:
        read_line(echo=True)
    if a.noise:
        threading.Thread(target=kernel_noise, args=(a.noise,), daemon=True).start()
    getty = Getty(a)
    while True:
        getty.authenticate()
        getty.session()


if __name__ == "__main__":
    main()
