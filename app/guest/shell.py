"""Running things in a guest: one interface, two backends.

- qemu-guest-agent: separate stderr, the exact exit code, no console traffic;
- the serial console: always there once logged in, and it logs in again by
  itself when the guest ended the session (guest/console.py).

Callers hand over argv; each backend quotes or passes it as it needs, so user
text never reaches a shell unquoted. `GuestShell` is what the lab uses for
everything it runs in a guest (exec, network configuration, probes, reboot
and poweroff): the agent when it answers, else the console. Timeouts and
failures come back the same way from both.
"""

from __future__ import annotations

import contextlib
import logging
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass
from enum import StrEnum
from typing import ContextManager, Sequence

from ..errors import GuestCommandFailed, GuestCommandTimeout, GuestError
from .agent import AgentUnavailable, GuestAgent
from .console import Console, quote

log = logging.getLogger(__name__)

MAX_OUTPUT = 1 << 20
AGENT_PROBE_TIMEOUT = 1.0
AGENT_REPROBE_AFTER = 60.0  # a guest without an agent costs one probe a minute, not one per command


class Via(StrEnum):
    agent = "agent"
    console = "console"


class Power(StrEnum):
    reboot = "reboot"
    poweroff = "poweroff"


@dataclass(frozen=True)
class ShellResult:
    exit_code: int | None  # None when it timed out
    output: str
    stderr: str | None  # the console merges it into output
    timed_out: bool
    truncated: bool
    duration: float
    via: Via


class Shell(ABC):
    via: Via
    name: str

    @abstractmethod
    def run(self, argv: Sequence[str], timeout: float = 60.0, max_output: int = MAX_OUTPUT) -> ShellResult: ...

    @abstractmethod
    def power(self, action: Power, timeout: float) -> bool:
        """Ask the guest to reboot or power off; True once it was asked. Not
        awaited: the guest goes away while it obeys."""

    def check(self, argv: Sequence[str], timeout: float = 60.0) -> str:
        """Output of a command that must succeed."""
        r = self.run(argv, timeout)
        if r.timed_out:
            raise GuestCommandTimeout(f"{self.name}: {render(argv)!r} did not finish within {timeout:.0f}s")
        if r.exit_code != 0:
            raise GuestCommandFailed(render(argv), r.exit_code or 0, r.output + (r.stderr or ""))
        return r.output

    def exclusive(self) -> ContextManager[object]:
        """Hold the guest across several commands (a whole network change)."""
        return contextlib.nullcontext()


def render(argv: Sequence[str]) -> str:
    """argv as one shell line, every element quoted."""
    return " ".join(quote(a) for a in argv)


class AgentShell(Shell):
    via = Via.agent

    def __init__(self, agent: GuestAgent, name: str = "guest"):
        self.agent = agent
        self.name = name

    def run(self, argv: Sequence[str], timeout: float = 60.0, max_output: int = MAX_OUTPUT) -> ShellResult:
        t0 = time.monotonic()
        r = self.agent.run(list(argv), timeout, max_output)
        return ShellResult(exit_code=r.exit_code, output=r.stdout.decode(errors="replace"),
                           stderr=r.stderr.decode(errors="replace"), timed_out=r.timed_out, truncated=r.truncated,
                           duration=time.monotonic() - t0, via=self.via)

    def power(self, action: Power, timeout: float) -> bool:
        return self.agent.shutdown("reboot" if action is Power.reboot else "powerdown")


class ConsoleShell(Shell):
    via = Via.console

    def __init__(self, console: Console):
        self.console = console
        self.name = console.name

    def run(self, argv: Sequence[str], timeout: float = 60.0, max_output: int = MAX_OUTPUT) -> ShellResult:
        t0 = time.monotonic()
        try:
            rc, out = self.console.run(render(argv), timeout, max_output)
        except GuestCommandTimeout:  # the command's own; no shell to run it in raises on
            return ShellResult(exit_code=None, output="", stderr=None, timed_out=True, truncated=False,
                               duration=time.monotonic() - t0, via=self.via)
        raw = out.encode()
        truncated = len(raw) > max_output
        if truncated:
            out = raw[:max_output].decode(errors="ignore")
        return ShellResult(exit_code=rc, output=out, stderr=None, timed_out=False, truncated=truncated,
                           duration=time.monotonic() - t0, via=self.via)

    def power(self, action: Power, timeout: float) -> bool:
        return self.console.try_send_and_forget(f"systemctl {action.value}", timeout=timeout)

    def exclusive(self) -> ContextManager[object]:
        return self.console.exclusive()


class GuestShell(Shell):
    """The agent when it answers, else the console. A command the agent has
    started is never run a second time on the console."""

    def __init__(self, console: Console, agent: GuestAgent | None):
        self.name = console.name
        self.console = ConsoleShell(console)
        self.agent = AgentShell(agent, console.name) if agent is not None else None
        self._agent_failed_at = 0.0
        self.via = Via.console

    def reprobe_agent(self) -> None:
        """Ask the agent again at the next command: a guest that just became
        ready has its agent running now even if it did not answer at login."""
        self._agent_failed_at = 0.0

    def agent_answers(self, timeout: float = AGENT_PROBE_TIMEOUT) -> AgentShell | None:
        """The agent's shell when the agent answers a ping now, else None."""
        return self.agent if self.agent is not None and self.agent.agent.ping(timeout) else None

    def _agent_usable(self) -> AgentShell | None:
        if self.agent is None:
            return None
        if self._agent_failed_at and time.monotonic() - self._agent_failed_at < AGENT_REPROBE_AFTER:
            return None
        if self.agent_answers():
            return self.agent
        self._agent_failed_at = time.monotonic()
        return None

    def _agent_lost(self, e: GuestError) -> None:
        log.warning("%s: guest agent gone (%s); using the console", self.name, e)
        self._agent_failed_at = time.monotonic()

    def run(self, argv: Sequence[str], timeout: float = 60.0, max_output: int = MAX_OUTPUT) -> ShellResult:
        agent = self._agent_usable()
        if agent is not None:
            try:
                r = agent.run(argv, timeout, max_output)
                self.via = Via.agent
                return r
            except AgentUnavailable as e:  # raised only before the command started
                self._agent_lost(e)
        self.via = Via.console
        return self.console.run(argv, timeout, max_output)

    def power(self, action: Power, timeout: float) -> bool:
        agent = self._agent_usable()
        asked = (agent is not None and agent.power(action, timeout)) or self.console.power(action, timeout)
        if asked and action is Power.reboot:
            self.console.console.expect_reset()
        return asked

    def exclusive(self) -> ContextManager[object]:
        return self.console.exclusive()


__all__ = ["AgentShell", "ConsoleShell", "GuestShell", "Power", "Shell", "ShellResult", "Via", "render"]
