"""Topology changes while the lab runs: add and remove guests, change a
guest's address. Each change is written to the declared state before the
work, so a daemon killed halfway comes back as declared."""

from __future__ import annotations

import asyncio
import dataclasses
import ipaddress
import logging
import shutil

from .requests import AddGuest, NetworkRequest
from ..errors import BridgelabError, FieldIssue, GuestBusy, SpecError
from ..guest import network
from ..model import declared
from ..model.plan import GuestPlan, check_new_ip
from ..model.spec import own_net_problems
from .context import LabContext
from .guest_runtime import GuestRuntime
from .lifecycle import Lifecycle
from .loader import plan_with_guest
from .states import GuestState

log = logging.getLogger(__name__)


class Topology:
    def __init__(self, ctx: LabContext, lifecycle: Lifecycle):
        self.ctx = ctx
        self.lifecycle = lifecycle
        self._lock = asyncio.Lock()  # add/remove: one at a time

    def adopt_plan(self) -> None:
        """After the host side is up: a runtime per planned guest, the declared
        state written, and the state of guests no longer declared removed."""
        for g in self.ctx.plan.guests:
            self.ctx.guests[g.name] = self.ctx.runtime(g)
        self.ctx.persist()
        self._forget_undeclared_guests()

    def _forget_undeclared_guests(self) -> None:
        """State of guests no longer declared (a removal cut short by a kill)."""
        declared_dirs = {g.paths.dir for g in self.ctx.plan.guests}
        guests_dir = self.ctx.plan.state_dir / "guests"
        for d in sorted(guests_dir.iterdir()) if guests_dir.is_dir() else []:
            if d.is_dir() and d not in declared_dirs:
                shutil.rmtree(d, ignore_errors=True)
                log.info("removed the state of guest %s, which is no longer declared", d.name)

    async def set_network(self, name: str, req: NetworkRequest) -> GuestRuntime:
        ctx = self.ctx
        g = ctx.get(name)
        subnet = ctx.plan.subnet
        prefix = req.prefix or subnet.prefixlen
        gateway = req.gateway or ctx.plan.default_gateway
        issues = [FieldIssue("ip", p) for p in check_new_ip(ctx.plan, name, req.ip)]
        issues += [FieldIssue(f, p) for f, p in ctx.taken_by_peers(name, req.ip, None) if f == "ip"]
        if req.gateway is not None and req.gateway not in subnet:
            issues.append(FieldIssue("gateway", f"gateway {req.gateway} is not on {subnet}"))
        elif not issues and gateway is not None:
            issues += [FieldIssue(f, m) for f, m in own_net_problems(req.ip, prefix, gateway)]
        if issues:
            raise SpecError(issues)
        async with ctx.operating(g):
            shell = ctx.require_shell(g)
            # Reserve the address in the plan before the first await, so two
            # concurrent requests can never pick the same IP.
            old_ip = g.plan.ip.ip
            new = dataclasses.replace(g.plan, ip=ipaddress.IPv4Interface(f"{req.ip}/{prefix}"),
                                      gateway=gateway, dns=tuple(req.dns))
            self._replace_plan(new)
            if old_ip != req.ip:
                await ctx.in_thread(ctx.host.move_route, old_ip, req.ip)
            g.enter(GuestState.configuring)
            try:
                g.changed = await ctx.in_thread(network.configure, shell, g.net_config())
            except BridgelabError as e:
                g.fail_from(e)
                return g
            await self.lifecycle.verify_mesh(g)
            return g

    def _replace_plan(self, new: GuestPlan) -> None:
        ctx = self.ctx
        ctx.guests[new.name].plan = new
        ctx.plan = dataclasses.replace(ctx.plan, guests=tuple(new if p.name == new.name else p
                                                              for p in ctx.plan.guests))
        ctx.spec = declared.freeze(ctx.spec, ctx.plan)
        ctx.persist()

    async def add_guest(self, req: AddGuest) -> GuestRuntime:
        """Plan the new guest against the declared lab, create its tap, boot it."""
        ctx = self.ctx
        async with self._lock:
            if ctx.stopping:
                raise GuestBusy("the lab is shutting down")
            if req.name in ctx.guests:
                raise GuestBusy(f"a guest named {req.name!r} already exists")
            lab, images, new = await ctx.in_thread(plan_with_guest, ctx.source, ctx.spec, ctx.plan,
                                                   req.model_dump(mode="json", exclude_none=True))
            if taken := ctx.taken_by_peers(new.name, new.ip.ip, new.mac):
                raise SpecError([FieldIssue(f, p) for f, p in taken])
            await ctx.in_thread(ctx.host.add_tap, new.tap)
            await ctx.in_thread(ctx.host.move_route, None, new.ip.ip)
            ctx.plan = dataclasses.replace(ctx.plan, guests=(*ctx.plan.guests, new))
            ctx.source = dataclasses.replace(ctx.source, images=images)
            ctx.spec = declared.freeze(lab, ctx.plan)
            g = ctx.runtime(new)
            ctx.guests[new.name] = g
            ctx.persist()
            log.info("added guest %s (%s, tap %s)", new.name, new.ip, new.tap)
            self.lifecycle.launch(g)
            return g

    async def remove_guest(self, name: str) -> None:
        """Forget the guest in the declared state first, then power it down and
        remove its tap and its state: a daemon killed halfway comes back
        without it, and the next start sweeps what the removal left."""
        ctx = self.ctx
        async with self._lock:
            g = ctx.get(name)
            async with ctx.operating(g):
                ctx.plan = dataclasses.replace(ctx.plan, guests=tuple(p for p in ctx.plan.guests
                                                                      if p.name != name))
                ctx.spec = ctx.spec.model_copy(update={"guests": [s for s in ctx.spec.guests if s.name != name]})
                ctx.stopped_by_request.discard(name)
                ctx.persist()
                await self.lifecycle.stop_one(g)
                await ctx.in_thread(ctx.host.remove_tap, g.plan.tap)
                await ctx.in_thread(ctx.host.move_route, g.plan.ip.ip, None)
                del ctx.guests[name]
                shutil.rmtree(g.plan.paths.dir, ignore_errors=True)
                log.info("removed guest %s", name)
                ctx.notify()


__all__ = ["Topology"]
