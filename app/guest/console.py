"""Serial console automation with pexpect.

A `Console` wraps any pexpect spawn object (a unix-socket fd for real guests,
a pty for tests). Its session (session.py) logs in and keeps a prepared
shell; on it the console runs commands whose output and exit code come back
between split markers. One user at a time: every public method holds a lock.
"""

from __future__ import annotations

import logging
import re
import secrets
import shlex
import socket
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator, TextIO

import pexpect

from ..errors import ConsoleClosed, ConsoleError, ConsoleTimeout, GuestCommandFailed, GuestCommandTimeout
from .console_stream import Pump, PumpSpawn
from .firmware import FirmwareGuard
from .session import RELOGIN_TIMEOUT, Session, split_marker, strip_escapes

log = logging.getLogger(__name__)


def wrap_command(command: str, tag: str, cap: int | None = None) -> str:
    """The line sent for `command`: begin marker, the command with stdin closed
    and stderr merged, end marker with the exit status. With `cap`, output
    beyond cap+1 bytes is cut in the guest (the +1 shows it was cut) and the
    rest drained there, so the command runs to its end as through the agent:
    were the pipe closed at the cap, its next write would kill it with
    SIGPIPE and its status would be 141, not its own (bash's PIPESTATUS)."""
    if cap is None:
        return (f"printf '%s\\n' {split_marker('B' + tag)}; {{ {command}\n}} </dev/null 2>&1; "
                f"printf '%s %s\\n' {split_marker('E' + tag)} \"$?\"")
    return (f"printf '%s\\n' {split_marker('B' + tag)}; {{ {command}\n}} </dev/null 2>&1 | "
            f"{{ head -c {cap + 1}; cat >/dev/null; }}; "
            f"printf '\\n%s %s\\n' {split_marker('E' + tag)} \"${{PIPESTATUS[0]}}\"")


def result_pattern(tag: str) -> re.Pattern[str]:
    return re.compile(rf"B{tag}\r?\n(.*?)E{tag} (\d+)\r?\n", re.DOTALL)


class Console(Session):
    def __init__(self, child: pexpect.spawnbase.SpawnBase, name: str = "guest",
                 transcript: TextIO | None = None, closer: Callable[[], None] | None = None,
                 firmware: FirmwareGuard | None = None):
        super().__init__(child, name, transcript, firmware)
        self._closer = closer
        self._pump: Pump | None = None

    # ------------------------------------------------------------ plumbing

    @classmethod
    def connect_unix(cls, path: Path, name: str, transcript_path: Path | None = None,
                     on_stage: Callable[[str], None] | None = None) -> "Console":
        """The console of a qemu that has not run yet (started paused): its
        firmware is on the way, so no key is sent until the boot is past it."""
        firmware = FirmwareGuard()
        firmware.expect_reset()

        def stage_seen(stage: str) -> None:
            firmware.saw(stage)
            if on_stage is not None:
                on_stage(stage)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.connect(str(path))
        pump = Pump(sock, name, stage_seen)
        child = PumpSpawn(pump, encoding="utf-8", codec_errors="replace", maxread=65536, searchwindowsize=None)
        transcript = open(transcript_path, "a", encoding="utf-8") if transcript_path else None

        def close() -> None:
            pump.close()
            if transcript:
                transcript.close()
        console = cls(child, name, transcript, close, firmware)
        console._pump = pump
        return console

    def close(self) -> None:
        with self._lock:
            if self._closer:
                self._closer()
                self._closer = None

    def watch(self, callback: Callable[[bytes], None]) -> Callable[[], None]:
        """A second reader of the console (an attached human), fed by the one pump."""
        if self._pump is None:
            raise ConsoleError(f"{self.name}: this console cannot be shared")
        return self._pump.watch(callback)

    def recent_output(self) -> tuple[int, bytes] | None:
        """(bytes received so far, the last few KiB of them), None for a
        console without a pump (a test's pty)."""
        if self._pump is None:
            return None
        return self._pump.received, self._pump.recent

    def type_if_idle(self, data: bytes) -> bool:
        """Keystrokes from an attached human, only while no automation runs
        a command: typing into the middle of one would corrupt its result."""
        if self._pump is None or not self._lock.acquire(blocking=False):
            return False
        try:
            self._pump.send(data)
            return True
        finally:
            self._lock.release()

    @contextmanager
    def exclusive(self) -> Iterator["Console"]:
        """Hold the console across several commands (e.g. a whole nmcli change)."""
        with self._lock:
            yield self

    # ------------------------------------------------------------ commands

    def run(self, command: str, timeout: float = 60.0, cap: int | None = None) -> tuple[int, str]:
        """Run one shell command; return (exit code, output with escapes stripped).
        With `cap`, a newline is added before the end marker (so output without
        a final newline cannot hide it) and removed again here."""
        with self._lock:
            self._ensure_shell(RELOGIN_TIMEOUT)
            tag = secrets.token_hex(6)
            self._note(f"$ {command}")
            self._send(wrap_command(command, tag, cap))
            i = self.child.expect([result_pattern(tag), pexpect.TIMEOUT, pexpect.EOF], timeout=timeout)
            if i == 2:
                self._ready = False
                raise ConsoleClosed(f"{self.name}: console closed during {command!r}")
            if i == 1:
                self.child.send("\x03")  # interrupt, then resynchronise on the prompt
                try:
                    self._expect_prompt(10)
                except ConsoleTimeout:
                    self._ready = False
                raise GuestCommandTimeout(f"{self.name}: {command!r} did not finish within {timeout:.0f}s")
            match = self.child.match
            assert match is not None and not isinstance(match, (type(pexpect.TIMEOUT), type(pexpect.EOF)))
            output, rc = strip_escapes(match.group(1)), int(match.group(2))
            self._expect_prompt(10)
            if cap is not None:
                output = output.removesuffix("\n")
            return rc, output

    def check(self, command: str, timeout: float = 60.0) -> str:
        rc, out = self.run(command, timeout)
        if rc != 0:
            raise GuestCommandFailed(command, rc, out)
        return out

    def send_and_forget(self, command: str, timeout: float = RELOGIN_TIMEOUT) -> None:
        """For commands that never return a prompt (reboot, poweroff); logs in
        again first when the guest ended the session."""
        with self._lock:
            self._ensure_shell(timeout)
            self._note(f"$ {command}")
            self._send(command)
            self._ready = False

    def try_send_and_forget(self, command: str, wait: float = 0.5, timeout: float = RELOGIN_TIMEOUT) -> bool:
        """send_and_forget, but only on a console that got a shell once and is
        free soon; False when it cannot be done within `timeout`."""
        if not self._lock.acquire(timeout=wait):
            return False
        try:
            if self._credentials is None or self._refused:
                return False
            try:
                self.send_and_forget(command, timeout)
            except ConsoleError as e:
                log.info("%s: could not send %r: %s", self.name, command, e)
                return False
            return True
        finally:
            self._lock.release()


def quote(value: object) -> str:
    """The only way user-influenced text reaches a guest shell."""
    return shlex.quote(str(value))
