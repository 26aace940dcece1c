"""exec in a guest: through qemu-guest-agent when it answers, else through
the console. Queued per guest; guests run in parallel. A guest without an
agent costs one probe per minute, not one per request."""

from __future__ import annotations

import logging
import time

from .reports import ExecResult
from .requests import ExecRequest
from ..errors import GuestBusy
from ..guest.agent import AgentUnavailable
from ..guest.shell import AgentShell, ConsoleShell, Shell
from .context import LabContext
from .guest_runtime import GuestRuntime

log = logging.getLogger(__name__)
AGENT_PROBE_TIMEOUT = 1.0
AGENT_REPROBE_AFTER = 60.0


class Exec:
    def __init__(self, ctx: LabContext):
        self.ctx = ctx

    async def exec(self, name: str, req: ExecRequest) -> ExecResult:
        g = self.ctx.get(name)
        async with g.exec_lock:
            console = self.ctx.require_shell(g)
            if g.op_lock.locked():
                raise GuestBusy(f"guest {name} is busy with a network change, reboot or stop")
            shell: Shell = ConsoleShell(console)
            if g.agent is not None and await self._agent_usable(g):
                try:
                    return await self._run(AgentShell(g.agent), req)
                except AgentUnavailable as e:
                    log.warning("%s: guest agent gone (%s); using the console", name, e)
                    g.agent_probed = time.monotonic()
            return await self._run(shell, req)

    async def _agent_usable(self, g: GuestRuntime) -> bool:
        recently_failed = g.agent_probed and time.monotonic() - g.agent_probed < AGENT_REPROBE_AFTER
        if g.agent is None or recently_failed:
            return False
        if await self.ctx.in_thread(g.agent.ping, AGENT_PROBE_TIMEOUT):
            return True
        g.agent_probed = time.monotonic()
        return False

    async def _run(self, shell: Shell, req: ExecRequest) -> ExecResult:
        r = await self.ctx.in_thread(shell.run, list(req.argv), req.timeout, req.max_output)
        return ExecResult(exit_code=r.exit_code, output=r.output, stderr=r.stderr, timed_out=r.timed_out,
                          truncated=r.truncated, duration=r.duration, via=r.via)


__all__ = ["Exec"]
