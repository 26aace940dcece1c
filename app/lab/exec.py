"""exec in a guest, through the guest's shell (agent when it answers, else
the console). Queued per guest; guests run in parallel."""

from __future__ import annotations

from ..errors import GuestBusy, LoginIncorrect
from .context import LabContext
from .reports import ExecResult
from .requests import ExecRequest


class Exec:
    def __init__(self, ctx: LabContext):
        self.ctx = ctx

    async def exec(self, name: str, req: ExecRequest) -> ExecResult:
        g = self.ctx.get(name)
        async with g.exec_lock:
            shell = self.ctx.require_shell(g)
            if g.op_lock.locked():
                raise GuestBusy(f"guest {name} is busy with a network change, reboot or stop")
            try:
                r = await self.ctx.in_thread(shell.run, list(req.argv), req.timeout, req.max_output)
            except LoginIncorrect as e:
                # The guest ended the session and refused the password when
                # the console logged in again: it cannot be driven any more.
                g.fail_from(e)
                self.ctx.check_settled()
                raise
        return ExecResult(exit_code=r.exit_code, output=r.output, stderr=r.stderr, timed_out=r.timed_out,
                          truncated=r.truncated, duration=r.duration, via=r.via)


__all__ = ["Exec"]
