"""A serial console session: getty and login, the shell bridgelab prepares
(no echo, no colours, a prompt of its own), and logging in again when the
guest ends the session. `Console` (console.py) runs commands on top of it.
"""

from __future__ import annotations

import logging
import re
import secrets
import threading
import time
from typing import Callable, NoReturn, TextIO

import pexpect

from ..errors import BootFailed, ConsoleClosed, ConsoleError, ConsoleTimeout, LoginIncorrect
from .paced import PacedDeadline
from .firmware import UBOOT_RESUME, UBOOT_STOPPED, FirmwareGuard

log = logging.getLogger(__name__)

def _escapes(esc: str) -> re.Pattern[str]:
    """CSI, OSC (BEL or ST terminated), DCS/APC/PM/SOS strings, and two-byte
    escapes, with ESC spelled `esc`. Debian sid's systemd wraps every command
    in OSC 3008 and agetty sends DCS queries, so all of these really occur on
    a serial console."""
    return re.compile(rf"{esc}\](?:(?!{esc})[^\x07])*(?:\x07|{esc}\\)?"
                      rf"|{esc}[P_^X](?:(?!{esc})[\s\S])*(?:{esc}\\)?"
                      rf"|{esc}\[[0-?]*[ -/]*[@-~]"
                      rf"|{esc}[ -/]*[0-~]")


_ESCAPES = _escapes(r"\x1b")
# The same, echoed back in caret notation ("^[[50;200R") by a tty with echoctl:
# answers to terminal queries land in the middle of boot lines that way.
_ECHOED_ESCAPES = _escapes(r"\^\[")
_OTHER_CONTROLS = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")

# At the start of a line, and not the "Last login: ..." line that many
# distributions (openEuler among them) print after a successful login.
LOGIN_PROMPT = r"(?m)^(?!Last\b)[\w.-]+ login: "
PASSWORD_PROMPT = r"[Pp]assword: "
LOGIN_INCORRECT = r"Login incorrect"
# login(1) gives up when the password check and the session's start take
# longer than LOGIN_TIMEOUT (60 s): util-linux prints "login: timed out after
# 60 seconds", shadow "Login timed out after 60 seconds.". On a host with
# many guests per core that is the load, not the password: log in again.
LOGIN_TIMED_OUT = r"[Tt]imed out after \d+ seconds"
# Any usual shell prompt; only believed once a password has been sent.
SHELL_PROMPT = r"[#$] (?:\x1b\[\?2004h)?"
# The prompt of a shell bridgelab prepared, in this daemon or an earlier one
# (PROMPT_PREFIX and 8 hex digits, see Session.__init__).
PROMPT_PREFIX = "BL"
PREPARED_PROMPT = rf"{PROMPT_PREFIX}[0-9a-f]{{8}}# "
# Lines after which no login prompt will ever come: the guest fails at once,
# with the line as its reason, instead of at the boot deadline. Not the getty
# of a virtio console (hvc0, the people's console): the serial one bridgelab
# logs in on may still come (seen with 16 guests on 2 cores).
BOOT_FAILED = (r"[^\r\n]*(?:Dependency failed for [^\r\n]*getty@(?!hvc)"
               r"|Timed out waiting for device [^\r\n]*tty"
               r"|Gave up waiting for root (?:file system )?device|Kernel panic - not syncing"
               r"|You are in emergency mode|Cannot open access to console, the root account is locked"
               r"|Failed to mount /sysroot|ALERT! [^\r\n]* does not exist)[^\r\n]*\r*\n")
# A session the guest ended is logged into again within this budget (a slow
# welcome script under TCG included); the probe newline is re-sent this often
# while getty restarts.
RELOGIN_TIMEOUT = 120.0
PROBE_RESEND = 5.0


def strip_escapes(text: str) -> str:
    """Terminal escape sequences out, CRLF normalised, stray controls dropped."""
    text = _ESCAPES.sub("", text)
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    return _OTHER_CONTROLS.sub("", text)


def readable(console_text: str) -> str:
    """Console output for people (a tail, a failure line): escapes out, also
    those the guest's tty echoed in caret notation. Not for a command's
    output, which may print "^[" itself."""
    return _ECHOED_ESCAPES.sub("", strip_escapes(console_text))


def split_marker(tag: str) -> str:
    """Shell text that prints `tag` but whose own echo does not contain it."""
    half = len(tag) // 2
    return f"'{tag[:half]}''{tag[half:]}'"


def setup_line(prompt_tag: str) -> str:
    """Make the shell parseable: no echo, no colours or pagers, no OSC 3008
    context hooks, no bracketed paste, quiet kernel, a unique prompt."""
    return ("stty -echo; unset PROMPT_COMMAND PS0 HISTFILE; "
            "export TERM=dumb PAGER=cat SYSTEMD_PAGER=cat SYSTEMD_COLORS=0 NO_COLOR=1 LC_ALL=C; "
            "bind 'set enable-bracketed-paste off' 2>/dev/null; dmesg -n 1 2>/dev/null; "
            f"PS2=''; PS1={split_marker(prompt_tag)}'# '; printf '%s\\n' {split_marker('S' + prompt_tag)}")


class Session:
    """One login on one console. Every public method of a subclass holds `_lock`."""

    def __init__(self, child: pexpect.spawnbase.SpawnBase, name: str = "guest", transcript: TextIO | None = None,
                 firmware: FirmwareGuard | None = None):
        self.child = child
        self.name = name
        self.firmware = firmware or FirmwareGuard()
        self._lock = threading.RLock()
        self._prompt_tag = PROMPT_PREFIX + secrets.token_hex(4)
        self._ready = False
        self._credentials: tuple[str, str] | None = None
        self._refused: str | None = None  # why the guest refused our login: never tried again
        self._at_prompt = False  # wait_for_login_prompt left getty's prompt unanswered
        self.relogins = 0  # sessions the guest ended that were logged into again
        if transcript is not None:
            child.logfile_read = transcript
        self.transcript = transcript

    def _note(self, text: str) -> None:
        """A line of our own in the transcript, with the time (where a slow
        login or command spent its time shows there)."""
        if self.transcript:
            now = time.time()
            stamp = time.strftime("%H:%M:%S", time.localtime(now)) + f".{int(now % 1 * 1000):03d}"
            self.transcript.write(f"\n[bridgelab] {text}  @{stamp}\n")
            self.transcript.flush()

    def _tail(self) -> str:
        before = self.child.before if isinstance(self.child.before, str) else ""
        return readable(before)[-400:]

    def _send(self, text: str) -> None:
        # Serial consoles want CR, like a terminal's Enter key.
        self.child.send(text + "\r")

    def _probe(self) -> None:
        """A bare Enter, to make getty or the shell show its prompt; never
        while a firmware could take it for "stop autoboot"."""
        if self.firmware.keys_safe():
            self._send("")

    def _resume_firmware(self, resumed: bool) -> None:
        line = readable(str(self.child.after)).strip().splitlines()[-1:]
        if resumed:
            raise BootFailed(f"{self.name}: the firmware stopped at its prompt again after {UBOOT_RESUME!r}: "
                             f"{' '.join(line)}")
        self._note(f"the firmware's autoboot was stopped; typing {UBOOT_RESUME!r}")
        log.warning("%s: the firmware's autoboot was stopped (a key reached it); typing %r", self.name, UBOOT_RESUME)
        self._send(UBOOT_RESUME)

    def expect_reset(self) -> None:
        """The guest was asked to reboot: no probe until its next boot is past the firmware."""
        self.firmware.expect_reset()

    def _drain(self) -> None:
        """Discard whatever arrived while nobody was reading (late kernel lines)."""
        try:
            while True:
                self.child.read_nonblocking(65536, timeout=0)
        except (pexpect.TIMEOUT, pexpect.EOF):
            pass
        self.child.buffer = self.child.string_type()

    def login(self, user: str, password: str, timeout: float, idle: float = 8.0,
              on_login_prompt: Callable[[], None] | None = None) -> None:
        """Drive getty/login until a shell prompt, then prepare the shell.

        Sends a newline whenever `idle` seconds pass without a prompt before
        a password was sent (getty re-prints its prompt), except while a
        firmware could take it for a key that stops its autoboot (firmware.py);
        an autoboot that was stopped anyway is resumed once. A second
        password prompt, or 'Login incorrect', means bad credentials: the
        password is never sent again on this console (guests lock accounts
        after a few failures, and each attempt lands in their auth log).
        login(1) timing out is not a refusal: it is tried again.
        The credentials are kept to log in again when the guest ends the
        session (see `_ensure_shell`). After `wait_for_login_prompt` the
        prompt it left is answered at once."""
        with self._lock:
            self._credentials = (user, password)
            at_prompt, self._at_prompt = self._at_prompt, False
            self._login(PacedDeadline(timeout), idle, on_login_prompt, at_login_prompt=at_prompt)

    def finish_login(self, timeout: float) -> bool:
        """Answer the prompt `wait_for_login_prompt` or `resume` left, if it
        is still left: a command run meanwhile logs in by itself. True when
        this call logged in."""
        with self._lock:
            if not self._at_prompt:
                return False
            assert self._credentials is not None
            self.login(*self._credentials, timeout)
            return True

    def wait_for_login_prompt(self, user: str, password: str, timeout: float, idle: float = 8.0,
                              on_login_prompt: Callable[[], None] | None = None) -> None:
        """Boot to getty's login prompt and leave it unanswered: the caller
        decides when the login starts (login(1)'s own timer starts with the
        user name) and calls `login`; a command run before that logs in
        first, with these credentials."""
        with self._lock:
            self._credentials = (user, password)
            self._login(PacedDeadline(timeout), idle, on_login_prompt, at_login_prompt=False, stop_at_prompt=True)

    def resume(self, user: str, password: str, timeout: float, log_in: bool = True) -> bool:
        """Take over the console of a guest restored from a snapshot: it was
        saved at a prompt of a shell bridgelab prepared (perhaps another
        daemon's), at getty's login prompt (a guest its agent made ready), or
        the guest has ended that session since. True with a prepared shell;
        with `log_in` False, a login prompt is left unanswered (False) for a
        later `login`."""
        with self._lock:
            self._credentials = (user, password)
            self._ready = False
            self.firmware.restored()
            return self._ensure_shell(timeout, log_in)

    @property
    def at_login_prompt(self) -> bool:
        """getty's prompt was seen and left unanswered: `login` answers it."""
        return self._at_prompt

    def _login(self, deadline: PacedDeadline, idle: float, on_login_prompt: Callable[[], None] | None,
               at_login_prompt: bool, stop_at_prompt: bool = False) -> None:
        if self._refused:
            raise LoginIncorrect(self._refused)
        self._ready = False
        self._at_prompt = False
        user = self._credentials[0] if self._credentials else ""
        sent_user = sent_password = False
        timed_out = 0  # logins login(1) gave up on
        if at_login_prompt:  # the caller just matched the prompt: answer it
            sent_user = self._send_user()
        patterns = [LOGIN_PROMPT, PASSWORD_PROMPT, LOGIN_INCORRECT, SHELL_PROMPT, pexpect.TIMEOUT, pexpect.EOF,
                    BOOT_FAILED, UBOOT_STOPPED, LOGIN_TIMED_OUT]
        resumed = False
        while True:
            remaining = deadline.remaining()
            if remaining <= 0:
                gave_up = f" (login(1) timed out {timed_out} times: the guest is very slow)" if timed_out else ""
                raise ConsoleTimeout(f"{self.name}: no shell after {deadline.describe()} on the console{gave_up}; "
                                     f"last output: {self._tail()!r}")
            i = self.child.expect(patterns, timeout=min(idle * (4 if sent_password else 1), remaining))
            if i == 0:
                if sent_password:
                    self._refuse(f"{self.name}: login as {user!r} was refused (login prompt again)")
                if on_login_prompt:
                    on_login_prompt()
                    on_login_prompt = None  # the first prompt only: the guest reached getty
                if stop_at_prompt:
                    self._at_prompt = True
                    return
                if sent_user:
                    # getty answering an earlier newline: it reads the name
                    # already typed, and a second one would be the password
                    continue
                sent_user = self._send_user()
            elif i == 1:
                if sent_password:
                    self._refuse(f"{self.name}: login as {user!r} was refused (password asked twice)")
                if not sent_user:  # someone else's half-finished login: start over
                    self._send("")
                    continue
                assert self._credentials is not None
                self._send(self._credentials[1])
                self._note("password sent")
                sent_password = True
            elif i == 2:
                if sent_user:
                    self._refuse(f"{self.name}: 'Login incorrect' for user {user!r}; check the login password "
                                 f"(not tried again: guests lock an account after a few failures)")
            elif i == 3:
                if sent_password:
                    break
            elif i == 4:
                if not sent_user or sent_password:
                    # Not between the two: login(1) may start slowly on a
                    # busy host, and a newline typed then is read as the password.
                    self._probe()
            elif i == 5:
                raise ConsoleClosed(f"{self.name}: console closed while logging in (did qemu exit?)")
            elif i == 7:
                self._resume_firmware(resumed)
                resumed = True
            elif i == 8:
                if sent_user:
                    timed_out += 1
                    self._note("login(1) timed out (the guest is slow): logging in again at the next prompt")
                    log.warning("%s: login(1) timed out before the shell started (host busy?); trying again",
                                self.name)
                    sent_user = sent_password = False
            else:
                line = readable(str(self.child.after)).strip()
                self._note(f"boot failed: {line}")
                raise BootFailed(f"{self.name}: boot failed: {line}")
        self._prepare_shell(max(deadline.remaining(), 30.0))

    def _send_user(self) -> bool:
        assert self._credentials is not None, "login() sets the credentials"
        self._note(f"login as {self._credentials[0]}")
        self._send(self._credentials[0])
        return True

    def _refuse(self, why: str) -> NoReturn:
        self._refused = why
        self._ready = False
        raise LoginIncorrect(why)

    def _ensure_shell(self, timeout: float, log_in: bool = True) -> bool:
        """Before anything is typed: make sure our shell is still there.

        A newline answers with our prompt when it is. When the guest ended
        the session (TMOUT, a getty restart, a reboot from inside, a `logout`
        typed on an attached console) getty answers with its login prompt
        instead: log in again with the same credentials and prepare the
        shell, so a command is never typed into a login or password prompt.
        A guest restored from a snapshot may answer with the prompt of an
        earlier session's shell: it is prepared again as ours."""
        if self._refused:
            raise LoginIncorrect(self._refused)
        if self._credentials is None:
            raise ConsoleError(f"{self.name}: not logged in")
        self._drain()
        deadline = time.monotonic() + timeout
        patterns = [re.escape(f"{self._prompt_tag}# "), LOGIN_PROMPT, PASSWORD_PROMPT, pexpect.TIMEOUT, pexpect.EOF,
                    UBOOT_STOPPED, PREPARED_PROMPT]
        resumed = False
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                self._ready = False
                raise ConsoleTimeout(f"{self.name}: neither the shell nor a login prompt answered within "
                                     f"{timeout:.0f}s; last output: {self._tail()!r}")
            self._probe()
            i = self.child.expect(patterns, timeout=min(PROBE_RESEND, remaining))
            if i == 0:
                self._ready = True
                return True
            if i == 1:
                if not log_in:
                    self._at_prompt = True
                    return False
                if self._at_prompt:
                    self._note("logging in at the prompt that was left for later")
                else:
                    self._note("the shell is gone (logged out?): logging in again")
                    log.info("%s: the guest ended the console session; logging in again", self.name)
                    self.relogins += 1
                self._login(PacedDeadline(max(remaining, RELOGIN_TIMEOUT)), 8.0, None, at_login_prompt=True)
                return True
            if i == 2:  # someone else's half-finished login; the newline above ends it
                continue
            if i == 4:
                self._ready = False
                raise ConsoleClosed(f"{self.name}: console closed (did qemu exit?)")
            if i == 5:  # the guest rebooted from inside and its autoboot was stopped
                self._ready = False
                self._resume_firmware(resumed)
                resumed = True
            if i == 6:  # restored from a snapshot another session prepared: make it ours
                self._note("a bridgelab shell of an earlier session (restored snapshot): preparing it again")
                self._prepare_shell(max(remaining, 10.0))
                return True

    def _prepare_shell(self, timeout: float) -> None:
        tag = self._prompt_tag
        self._send(setup_line(tag))
        i = self.child.expect([f"S{tag}\r?\n", LOGIN_INCORRECT, pexpect.TIMEOUT, pexpect.EOF], timeout=timeout)
        if i == 1:
            raise LoginIncorrect(f"{self.name}: 'Login incorrect'; check the login password")
        if i != 0:
            raise ConsoleTimeout(f"{self.name}: shell did not answer the setup line; last output: {self._tail()!r}")
        self._expect_prompt(timeout)
        self._note("shell prepared")
        self._ready = True

    def _expect_prompt(self, timeout: float) -> None:
        i = self.child.expect_exact([f"{self._prompt_tag}# ", pexpect.TIMEOUT, pexpect.EOF], timeout=timeout)
        if i != 0:
            raise ConsoleTimeout(f"{self.name}: no prompt after {timeout:.0f}s; last output: {self._tail()!r}")
