"""A guest's NICs configured during its bring-up: through the guest agent as
soon as it answers, while the guest boots and (if the agent was not there
by the login prompt) while the console logs in; else through the guest's
shell once logged in.

Why in parallel: under TCG the console login takes 5 s and more (PAM, the
shell's start-up) and the configuration about as long, and neither needs the
other. Where the agent starts with the boot (the Debian images), it answers
long before the login prompt and the address is live by then: the guest is
ready without a console login (lifecycle.py). A guest without an agent
(openEuler's images) is configured through its console after the login.
"""

from __future__ import annotations

import asyncio
import logging

from ..guest import network
from ..guest.agent import AgentLost, AgentUnavailable
from ..guest.commands import side_nic
from ..guest.shell import AgentShell, Shell
from .context import LabContext
from .guest_runtime import GuestRuntime
from .turns import Turn

log = logging.getLogger(__name__)
AGENT_PING_TIMEOUT = 1.0
AGENT_POLL = 0.5


def configure_nics(shell: Shell, g: GuestRuntime) -> bool:
    """The lab NIC, then the user-mode NIC if the guest has one. Idempotent:
    False when both were already as wanted."""
    changed = network.configure(shell, g.net_config())
    if g.plan.user_nic is not None:
        network.configure(shell, side_nic(g.plan.user_nic.mac))
    return changed


async def configure_in_turn(ctx: LabContext, shell: Shell, g: GuestRuntime, turn: Turn) -> bool:
    """configure_nics once the guest has its turn at the lab's slots."""
    await ctx.before_configure(g)
    await turn.take()
    return await ctx.in_thread(configure_nics, shell, g)


class EarlyConfiguration:
    """The configuration through the agent, started with the guest's boot."""

    def __init__(self, ctx: LabContext, g: GuestRuntime):
        self.ctx = ctx
        self.g = g
        self._login_done = asyncio.Event()
        self._answered = False
        self.task = asyncio.create_task(self._run(), name=f"configure-{g.plan.name}")

    async def _run(self) -> bool | None:
        agent = self.g.agent
        if agent is None:
            return None
        await self.ctx.before_configure(self.g)
        while not self._login_done.is_set():
            if await self.ctx.in_thread(agent.ping, AGENT_PING_TIMEOUT):
                self._answered = True
                try:  # no turn: no login timer to trip, and the agent may wait long for the guest's manager
                    changed = await self.ctx.in_thread(configure_nics, AgentShell(agent, self.g.plan.name), self.g)
                except (AgentUnavailable, AgentLost) as e:
                    log.info("guest %s: the agent went away while configuring (%s); the console will",
                             self.g.plan.name, e)
                    return None
                self.g.stage("configured")
                return changed
            try:
                await asyncio.wait_for(self._login_done.wait(), AGENT_POLL)
            except asyncio.TimeoutError:
                pass
        return None

    async def at_prompt(self) -> bool | None:
        """At the login prompt: the configuration's outcome when the agent
        has answered (waited for if it is under way), else None, and the
        agent keeps being asked while the console logs in (`result`)."""
        if not self._answered and not self.task.done():
            return None
        return await asyncio.shield(self.task)

    async def result(self) -> bool | None:
        """Once logged in: the configuration's outcome when the agent did it
        (waited for if it is under way), None when the shell must do it."""
        self._login_done.set()
        return await self.task

    def abandon(self) -> None:
        """The bring-up failed: nothing more is started (a command already
        running in the guest runs to its end)."""
        self._login_done.set()
        self.task.cancel()


__all__ = ["EarlyConfiguration", "configure_in_turn", "configure_nics"]
