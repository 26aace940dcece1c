"""Running a command in a guest, one interface with two backends:
qemu-guest-agent (separate stderr, exact exit code, no console traffic) and
the serial console (always there once logged in). Callers hand over argv;
each backend quotes or passes it as it needs, so user text never reaches a
shell unquoted."""

from __future__ import annotations

import time
from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol, Sequence

from ..errors import ConsoleTimeout
from .agent import GuestAgent
from .console import Console, quote


class Via(StrEnum):
    agent = "agent"
    console = "console"


@dataclass(frozen=True)
class ShellResult:
    exit_code: int | None  # None when it timed out
    output: str
    stderr: str | None  # the console merges it into output
    timed_out: bool
    truncated: bool
    duration: float
    via: Via


class Shell(Protocol):
    via: Via

    def run(self, argv: Sequence[str], timeout: float, max_output: int) -> ShellResult: ...


class AgentShell:
    via = Via.agent

    def __init__(self, agent: GuestAgent):
        self.agent = agent

    def run(self, argv: Sequence[str], timeout: float, max_output: int) -> ShellResult:
        t0 = time.monotonic()
        r = self.agent.run(list(argv), timeout, max_output)
        return ShellResult(exit_code=r.exit_code, output=r.stdout.decode(errors="replace"),
                           stderr=r.stderr.decode(errors="replace"), timed_out=r.timed_out, truncated=r.truncated,
                           duration=time.monotonic() - t0, via=self.via)


class ConsoleShell:
    via = Via.console

    def __init__(self, console: Console):
        self.console = console

    def run(self, argv: Sequence[str], timeout: float, max_output: int) -> ShellResult:
        command = " ".join(quote(a) for a in argv)
        t0 = time.monotonic()
        try:
            rc, out = self.console.run(command, timeout, max_output)
        except ConsoleTimeout:
            return ShellResult(exit_code=None, output="", stderr=None, timed_out=True, truncated=False,
                               duration=time.monotonic() - t0, via=self.via)
        raw = out.encode()
        truncated = len(raw) > max_output
        if truncated:
            out = raw[:max_output].decode(errors="ignore")
        return ShellResult(exit_code=rc, output=out, stderr=None, timed_out=False, truncated=truncated,
                           duration=time.monotonic() - t0, via=self.via)


__all__ = ["AgentShell", "ConsoleShell", "Shell", "ShellResult", "Via"]
