"""The API's door for peers: on the socket a lab with peers opens on its
underlay address, only GET /peering is served (and it always needs the
token). Everything else is 404 there, so that the rest of the API stays
where --listen put it (by default loopback only)."""

from __future__ import annotations

from fastapi.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

PEER_PATH = "/peering"
Address = tuple[str, int]


class PeerDoor:
    def __init__(self, app: ASGIApp, doors: list[Address]):
        self.app = app
        self.doors = {(host, int(port)) for host, port in doors}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        server = scope.get("server")
        if scope["type"] == "lifespan" or server is None or (server[0], int(server[1])) not in self.doors:
            return await self.app(scope, receive, send)
        if scope["type"] == "http" and scope["method"] == "GET" and scope["path"] == PEER_PATH:
            return await self.app(scope, receive, send)
        if scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": 1008})
            return None
        response = JSONResponse(status_code=404, content={"detail": f"only GET {PEER_PATH} is served to peers here"})
        await response(scope, receive, send)
        return None


__all__ = ["PEER_PATH", "PeerDoor"]
