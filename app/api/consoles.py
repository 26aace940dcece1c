"""The consoles over websockets: the automation's serial console (shared with
it, read-only unless asked), and the people's console (hvc0, terminal.py).

Both need the token, as a bearer header (the CLI) or the browser's session
cookie, and a browser's Origin must be the daemon's own: a page of another
site can neither read nor type into a guest."""

from __future__ import annotations

import asyncio
import contextlib

from fastapi import WebSocket, WebSocketDisconnect

from ..errors import AuthError, GuestError, UnknownGuest
from ..guest.terminal import TerminalHub
from ..lab.runner import LabRunner
from .auth import SESSION_COOKIE, Policy, same_origin

ATTACH_QUEUE = 4096  # chunks; a client slower than the guest loses output, never stalls the guest
MAX_KEYS = 4096  # bytes of one websocket message passed on
BUSY_NOTICE = b"\r\n[bridgelab: automation is using the console; input dropped]\r\n"


class Terminals:
    """One hub per guest, made on first use: qemu serves the socket to one client."""

    def __init__(self, runner: LabRunner):
        self.runner = runner
        self.hubs: dict[str, TerminalHub] = {}

    def hub(self, name: str) -> TerminalHub:
        plan = self.runner.get(name).plan
        hub = self.hubs.get(name)
        if hub is None or hub.sock != plan.paths.term_sock:
            hub = self.hubs[name] = TerminalHub(plan.paths.term_sock, name)
        return hub

    async def close(self) -> None:
        for hub in self.hubs.values():
            await hub.close()


async def _admit(ws: WebSocket, policy: Policy | None) -> bool:
    """Refuse (and say why) a socket without the token or from another origin."""
    if not same_origin(ws.headers.get("origin"), ws.headers.get("host")):
        await _refuse(ws, 4403, "cross-origin console connections are refused")
        return False
    try:
        if policy is not None:
            policy.check(ws.headers.get("authorization"), mutating=True, cookie=ws.cookies.get(SESSION_COOKIE))
    except AuthError:
        await _refuse(ws, 4401, "a valid bearer token (or the session cookie of POST /session) is required")
        return False
    return True


def _queue_for(ws: WebSocket) -> tuple[asyncio.Queue[bytes], asyncio.Task[None]]:
    """Output to the client through a bounded queue and its own task: a slow
    client loses output, it never stalls the guest or the other viewers."""
    queue: asyncio.Queue[bytes] = asyncio.Queue(ATTACH_QUEUE)

    async def forward() -> None:
        while True:
            await ws.send_bytes(await queue.get())
    return queue, asyncio.create_task(forward())


def _offer(queue: asyncio.Queue[bytes], data: bytes) -> None:
    with contextlib.suppress(asyncio.QueueFull):
        queue.put_nowait(data)


async def _keys(ws: WebSocket) -> bytes | None:
    """The next keystrokes from the client; None when it went away."""
    message = await ws.receive()
    if message["type"] == "websocket.disconnect":
        return None
    return (message.get("bytes") or (message.get("text") or "").encode())[:MAX_KEYS]


async def attach_serial(ws: WebSocket, runner: LabRunner, policy: Policy | None, name: str, write: bool) -> None:
    if not await _admit(ws, policy):
        return
    try:
        console = runner.get(name).console
    except UnknownGuest:
        return await _refuse(ws, 4404, f"no guest named {name[:40]!r}")
    if console is None:
        return await _refuse(ws, 4409, f"guest {name} has no console yet")
    await ws.accept()
    loop = asyncio.get_running_loop()
    queue, sender = _queue_for(ws)

    def from_pump(data: bytes) -> None:  # on the console pump's thread
        loop.call_soon_threadsafe(_offer, queue, data)
    unwatch = console.watch(from_pump)
    try:
        while (keys := await _keys(ws)) is not None:
            if write and keys and not await asyncio.to_thread(console.type_if_idle, keys):
                _offer(queue, BUSY_NOTICE)
    except WebSocketDisconnect:
        pass
    finally:
        unwatch()
        sender.cancel()


async def attach_terminal(ws: WebSocket, terminals: Terminals, policy: Policy | None, name: str) -> None:
    if not await _admit(ws, policy):
        return
    try:
        hub = terminals.hub(name)
    except UnknownGuest:
        return await _refuse(ws, 4404, f"no guest named {name[:40]!r}")
    await ws.accept()
    queue, sender = _queue_for(ws)
    try:
        detach = await hub.attach(lambda data: _offer(queue, data))
    except GuestError as e:
        sender.cancel()
        return await ws.close(code=4409, reason=str(e)[:120])
    try:
        while (keys := await _keys(ws)) is not None:
            if keys:
                await hub.type(keys)
    except (WebSocketDisconnect, GuestError):
        pass
    finally:
        detach()
        sender.cancel()


async def _refuse(ws: WebSocket, code: int, reason: str) -> None:
    """Accept, then close with a code (4000 + the HTTP status) and a reason a
    client can show: a refused handshake would only say 403."""
    await ws.accept()
    await ws.close(code=code, reason=reason)


__all__ = ["Terminals", "attach_serial", "attach_terminal"]
