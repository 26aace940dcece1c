"""The one subprocess wrapper. Every host command goes through here.

argv lists only (never a shell), logged with shlex.join, with timeouts and
typed failures.
"""

from __future__ import annotations

import logging
import shlex
import signal
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping

from .errors import CommandFailed

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Result:
    argv: list[str]
    returncode: int
    stdout: str
    stderr: str


def run(argv: list[str], *, check: bool = True, timeout: float | None = 120,
        env: Mapping[str, str] | None = None, input: str | None = None, stream: bool = False) -> Result:
    """Run to completion. `stream` lets long builds print as they go."""
    log.info("$ %s", shlex.join(argv))
    try:
        cp = subprocess.run(argv, input=input, text=True, timeout=timeout, env=env,
                            stdout=None if stream else subprocess.PIPE,
                            stderr=None if stream else subprocess.PIPE)
    except FileNotFoundError:
        raise CommandFailed(argv, None, "", "", reason="is not installed") from None
    except subprocess.TimeoutExpired as e:
        raise CommandFailed(argv, None, _text(e.stdout), _text(e.stderr),
                            reason=f"timed out after {timeout}s") from None
    res = Result(argv, cp.returncode, cp.stdout or "", cp.stderr or "")
    if check and cp.returncode != 0:
        raise CommandFailed(argv, cp.returncode, res.stdout, res.stderr)
    return res


def run_lines(argv: list[str], on_line: Callable[[str], None], *, env: Mapping[str, str] | None = None,
              on_start: Callable[[subprocess.Popen[str]], None] | None = None) -> Result:
    """Run to completion, handing each line of its merged stdout and stderr
    to `on_line` as it comes (a long build whose progress is read from its
    output). `on_start` gets the process, so that its owner can stop it."""
    log.info("$ %s", shlex.join(argv))
    try:
        child = subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                 stderr=subprocess.STDOUT, text=True, errors="replace", bufsize=1)
    except FileNotFoundError:
        raise CommandFailed(argv, None, "", "", reason="is not installed") from None
    if on_start is not None:
        on_start(child)
    tail: list[str] = []
    assert child.stdout is not None
    for line in child.stdout:
        on_line(line.rstrip("\n"))
        tail = (tail + [line])[-40:]
    code = child.wait()
    if code != 0:
        raise CommandFailed(argv, code, "", "".join(tail))
    return Result(argv, code, "".join(tail), "")


def _text(b: bytes | str | None) -> str:
    if b is None:
        return ""
    return b if isinstance(b, str) else b.decode(errors="replace")


def spawn(argv: list[str], *, stdout: Path, stderr: Path) -> subprocess.Popen[bytes]:
    """Start a long-lived child in its own session, so a terminal's Ctrl-C or a
    container's stop signal reaches bridgelab first and guests can be shut down
    cleanly instead of dying with it."""
    log.info("$ %s", shlex.join(argv))
    with open(stdout, "ab") as out, open(stderr, "ab") as err:
        try:
            return subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=err,
                                    start_new_session=True, close_fds=True)
        except FileNotFoundError:
            raise CommandFailed(argv, None, "", "", reason="is not installed") from None


def stop(p: subprocess.Popen[bytes], grace: float = 5.0) -> int:
    """SIGTERM, wait `grace`, then SIGKILL. Only ever signals this child's PID."""
    if p.poll() is not None:
        return p.returncode
    p.send_signal(signal.SIGTERM)
    try:
        return p.wait(grace)
    except subprocess.TimeoutExpired:
        p.kill()
        return p.wait()
