"""A scripted serial console for the console tests, run on a pty.

It replays what a real Debian sid riscv64 guest printed (tests/data/
sid-console.json: agetty's DCS/CSI queries, OSC 3008 context sequences, the
motd), then hands the terminal to a real bash set up the way sid's
/etc/profile.d/80-systemd-osc-context.sh does (OSC 3008 around every command,
bracketed paste on). A background writer interleaves kernel-style messages.

Usage: fakeguest.py [--password PW] [--silent] [--noise SECONDS] [--never-prompt]
"""

from __future__ import annotations

import argparse
import json
import os
import re
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


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--password", default="bridgelab")
    ap.add_argument("--silent", action="store_true", help="print the login prompt only after a newline")
    ap.add_argument("--never-prompt", action="store_true")
    ap.add_argument("--noise", type=float, default=0.0)
    a = ap.parse_args()

    out(DATA["boot"])
    if a.never_prompt:
        time.sleep(3600)
    if a.silent:
        read_line(echo=True)
    if a.noise:
        threading.Thread(target=kernel_noise, args=(a.noise,), daemon=True).start()
    while True:
        out("\r\nDebian GNU/Linux forky/sid bridgelab ttyS0\r\n\r\nbridgelab login: ")
        user = TERMINAL_REPLY.sub("", read_line(echo=True))  # agetty ignores the replies to its queries
        if not user:
            continue
        out("Password: ")
        password = read_line(echo=False)
        out("\r\n")
        if user == "root" and password == a.password:
            break
        time.sleep(0.3)
        out("\r\nLogin incorrect\r\n")
    out("Last login: Wed Nov 25 10:00:00 2026 on ttyS0\r\n")  # as openEuler prints it
    out(DATA["motd"])
    osc = DATA["shell_osc"].replace("\x1b", "\\e")
    rc = (
        f"PS0='\\[\\e]3008;start=cmd;type=command\\e\\\\\\]'\n"
        f"PROMPT_COMMAND='printf \"\\e]3008;end=cmd;exit=success\\e\\\\\"'\n"
        f"PS1='\\[{osc}\\]root@bridgelab:~# '\n"
        "bind 'set enable-bracketed-paste on'\n"
    )
    rcfile = Path(os.environ.get("TMPDIR", "/tmp")) / f"fakeguest-{os.getpid()}.rc"
    rcfile.write_text(rc)
    os.execvp("bash", ["bash", "--noprofile", "--rcfile", str(rcfile), "-i"])


if __name__ == "__main__":
    main()
