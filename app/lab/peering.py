"""The lab's peers at runtime: each peer's declaration (GET /peering on its
API, with the shared token) fetched while the guests boot and then kept
fresh, the clashes found before a guest is configured with its address,
and the underlay judged when a peer's guests do not answer.

The host that starts second always finds a clash: the first one answers
by then. Two that start together both find it. A peer that stays silent
holds no guest back longer than PEER_WAIT from the daemon's start: it will
find any clash itself when it comes up.
"""

from __future__ import annotations

import asyncio
import dataclasses
import ipaddress
import logging
import time
from dataclasses import dataclass, field
from typing import Literal

import httpx

from ..errors import HostNetError, PeerClash
from ..host import uplink_diagnosis, vxlan
from ..model.peering import Declaration, PeerGuest, clashes, declaration
from .context import LabContext
from .guest_runtime import GuestRuntime

log = logging.getLogger(__name__)

PEER_WAIT = 30.0  # from the daemon's start: how long configuration waits for silent peers
ASK_TIMEOUT = 2.0
POLL_UNTIL_ANSWERED = 1.0
POLL = 10.0
PeerState = Literal["unknown", "up", "unreachable", "refused"]


@dataclass
class PeerView:
    address: ipaddress.IPv4Address
    state: PeerState = "unknown"
    detail: str = "not asked yet"
    declaration: Declaration | None = None  # the last one it gave
    seen: float | None = None  # wall clock of its last answer
    logged: frozenset[str] = frozenset()  # the clashes last logged, so each is logged once


@dataclass
class Peering:
    ctx: LabContext
    token: str | None
    views: dict[ipaddress.IPv4Address, PeerView] = field(default_factory=dict)

    def __post_init__(self) -> None:
        overlay = self.ctx.plan.overlay
        assert overlay is not None
        self.views = {p: PeerView(p) for p in overlay.peers}
        self._started = time.monotonic()
        self._answered = asyncio.Event()  # every peer has answered once
        self._asked = asyncio.Event()  # every peer has been asked once (answered, refused or silent)
        self._one_round = asyncio.Lock()  # the watcher's and a mesh check's rounds, one at a time
        if not self.views:
            self._answered.set()
            self._asked.set()

    def mine(self) -> Declaration:
        return declaration(self.ctx.plan, {n: g.state.value for n, g in self.ctx.guests.items()})

    # ------------------------------------------------------------ watching

    async def run(self) -> None:
        overlay = self.ctx.plan.overlay
        assert overlay is not None
        try:
            async with self._client() as client:
                while True:
                    await self._round(client, overlay.api_port)
                    await asyncio.sleep(POLL if self._answered.is_set() else POLL_UNTIL_ANSWERED)
        finally:  # no guest may wait on a watcher that is gone
            self._asked.set()
            self._answered.set()

    def _client(self) -> httpx.AsyncClient:
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        return httpx.AsyncClient(timeout=ASK_TIMEOUT, headers=headers)

    async def refresh(self) -> None:
        """One round of questions now (at most ASK_TIMEOUT): before a mesh check."""
        overlay = self.ctx.plan.overlay
        assert overlay is not None
        async with self._client() as client:
            await self._round(client, overlay.api_port)

    async def _round(self, client: httpx.AsyncClient, port: int) -> None:
        async with self._one_round:
            await self._questions(client, port)

    async def _questions(self, client: httpx.AsyncClient, port: int) -> None:
        try:
            await self._follow_names()
            await asyncio.gather(*(self._ask(client, v, port) for v in self.views.values()))
        except Exception:  # a bug here must not stop the watching, nor hold a guest back
            log.exception("peers: this round of questions failed")
        self._asked.set()
        if all(v.state == "up" for v in self.views.values()):
            self._answered.set()

    async def _follow_names(self) -> None:
        """Peers named by DNS (a headless Service lists the nodes as they
        come and go): resolved again each round; the VXLAN port's flood
        list, the firewall and the views follow."""
        spec = self.ctx.spec.peers
        if spec is None or all(isinstance(h, ipaddress.IPv4Address) for h in spec.hosts):
            return
        try:
            now = await self.ctx.in_thread(vxlan.other_hosts, spec.hosts)
        except HostNetError as e:
            log.warning("peers: %s; keeping %s", e, ", ".join(map(str, self.views)) or "none")
            return
        overlay = self.ctx.plan.overlay
        if overlay is None or set(now) == set(overlay.peers):
            return
        overlay = dataclasses.replace(overlay, peers=now)
        await self.ctx.in_thread(self.ctx.host.set_peers, overlay)
        self.ctx.plan = dataclasses.replace(self.ctx.plan, overlay=overlay)
        self.views = {p: self.views.get(p) or PeerView(p) for p in now}
        self._answered.clear()
        log.info("peers now: %s", ", ".join(map(str, now)) or "none")
        self.ctx.notify()

    async def _ask(self, client: httpx.AsyncClient, view: PeerView, port: int) -> None:
        before = view.state
        try:
            r = await client.get(f"http://{view.address}:{port}/peering")
            if r.status_code == 401:
                view.state = "refused"
                view.detail = "it refused this host's token: set one BRIDGELAB_TOKEN on every peer"
            elif r.status_code != 200:
                view.state, view.detail = "refused", f"GET /peering answered {r.status_code}"
            else:
                view.declaration = Declaration.model_validate_json(r.content)
                view.state, view.detail, view.seen = "up", "answers", time.time()
                self._log_clashes(view)
        except (httpx.HTTPError, ValueError) as e:
            view.state = "unreachable"
            view.detail = f"its API at {view.address}:{port} does not answer ({str(e) or type(e).__name__})"
        if view.state != before:
            (log.info if view.state == "up" else log.warning)("peer %s: %s", view.address, view.detail)
            self.ctx.notify()

    def _log_clashes(self, view: PeerView) -> None:
        """Each clash once, when it appears (the peer is asked every 10 s)."""
        assert view.declaration is not None
        now = frozenset(c.message for c in clashes(self.mine(), view.declaration))
        for message in sorted(now - view.logged):
            log.error("peers: %s", message)
        view.logged = now

    # ------------------------------------------------------------ gates

    async def precheck(self, g: GuestRuntime) -> None:
        """Before `g`'s qemu starts: a clash with a peer that is already up
        fails it at once, without a boot (at most ASK_TIMEOUT for the first
        round of questions)."""
        await self._asked.wait()
        self._refuse_clashes(g)

    async def clear(self, g: GuestRuntime) -> None:
        """Before `g` is configured: every peer has answered once (or
        PEER_WAIT has passed), and none clashes with it or with the lab."""
        left = PEER_WAIT - (time.monotonic() - self._started)
        if left > 0 and not self._answered.is_set():
            try:
                await asyncio.wait_for(self._answered.wait(), left)
            except asyncio.TimeoutError:
                silent = [str(v.address) for v in self.views.values() if v.state != "up"]
                log.warning("guest %s: configured without word from peer %s (%s)", g.plan.name, ", ".join(silent),
                            "; ".join(self.views[ipaddress.IPv4Address(a)].detail for a in silent))
        self._refuse_clashes(g)

    def _refuse_clashes(self, g: GuestRuntime) -> None:
        """PeerClash naming every clash that concerns `g` (or the lab as a whole)."""
        mine = self.mine()
        found = [c.message for v in self.views.values() if v.declaration is not None
                 for c in clashes(mine, v.declaration) if c.guest in (None, g.plan.name)]
        if found:
            raise PeerClash("; ".join(found))

    def taken(self, name: str, ip: ipaddress.IPv4Address, mac: str | None = None) -> list[tuple[str, str]]:
        """(field, problem) for a guest's new name, address or MAC (a runtime
        add or a new address) against what the peers last declared: the same
        clashes as at start-up, for this one guest."""
        alone = self.mine().model_copy(update={"guests": [PeerGuest(name=name, ip=ip, mac=mac or "", state="new")]})
        return [(c.field, c.message) for v in self.views.values() if v.declaration is not None
                for c in clashes(alone, v.declaration) if c.guest == name]

    # ------------------------------------------------------------ the mesh across hosts

    def remote_guests(self) -> list[tuple[PeerView, PeerGuest]]:
        return [(v, g) for v in self.views.values() if v.declaration is not None for g in v.declaration.guests]

    def rx_packets(self) -> int:
        overlay = self.ctx.plan.overlay
        assert overlay is not None
        return vxlan.counters(overlay.device).get("rx_packets", 0)

    def underlay_verdict(self, view: PeerView, rx_before: int) -> str | None:
        """Why frames do not cross to and from `view`'s host, or None when
        the underlay is not to blame. Evidence: an ICMP echo to the peer,
        and whether anything of the peer's (its bridge, its guests) came
        back through the VXLAN port: the port's packet counter since
        `rx_before`, and the MACs it learned behind that peer. Blocking."""
        overlay = self.ctx.plan.overlay
        assert overlay is not None
        api = f"its API: {view.detail}"
        if not uplink_diagnosis.host_reaches(view.address):
            return f"peer {view.address} is unreachable from this host over {overlay.interface} (no ICMP reply; {api})"
        theirs = {view.declaration.bridge_mac, *(g.mac for g in view.declaration.guests)} if view.declaration else set()
        behind = {mac for mac, dst in vxlan.learned(overlay.device).items() if dst == view.address}
        if self.rx_packets() == rx_before or not theirs & behind:
            return (f"peer {view.address} answers ICMP but no VXLAN frame of its came back: UDP port {overlay.port} "
                    f"is dropped on the way or on the peer ({api})")
        return None


__all__ = ["PEER_WAIT", "Peering", "PeerView", "clashes"]
