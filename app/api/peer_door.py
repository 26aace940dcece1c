"""The API's door for peers: on the socket a lab with peers opens on its
underlay address, only GET /peering is served, and only with the token
(checked here: the policy of --listen, which may trust a unix socket's file
mode or open reads on loopback, says nothing about this socket). Everything
else is 404 there, so that the rest of the API stays where --listen put it
(by default loopback only)."""

from __future__ import annotations

from typing import Callable

from fastapi.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

PEER_PATH = "/peering"
Address = tuple[str, int]


class PeerDoor:
    def __init__(self, app: ASGIApp, doors: list[Address], token_matches: Callable[[str | None], bool]):
        self.app = app
        self.token_matches = token_matches
        self.doors = {(host, port) for host, port in doors}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        server = scope.get("server")
        # A unix socket's scope names (path, None): never a door.
        if scope["type"] == "lifespan" or server is None or tuple(server[:2]) not in self.doors:
            return await self.app(scope, receive, send)
        if scope["type"] == "http" and scope["method"] == "GET" and scope["path"] == PEER_PATH:
            authorization = dict(scope.get("headers") or []).get(b"authorization", b"").decode("latin-1")
            if self.token_matches(authorization or None):
                return await self.app(scope, receive, send)
            response = JSONResponse(status_code=401, content={"detail": "peers show the lab's token"},
                                    headers={"WWW-Authenticate": "Bearer"})
            await response(scope, receive, send)
            return None
        if scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": 1008})
            return None
        response = JSONResponse(status_code=404, content={"detail": f"only GET {PEER_PATH} is served to peers here"})
        await response(scope, receive, send)
        return None


__all__ = ["PEER_PATH", "PeerDoor"]
