#!/usr/bin/env python3
"""The floor of bench/api.py: a bare ASGI app that answers every request
with the bytes in BODY_FILE, served by uvicorn with the settings the daemon
uses (uvloop, httptools, no access log) on a unix socket. Whatever bridgelab
does per request on top of this is its own cost.

    bare_app.py BODY_FILE SOCKET
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Awaitable, Callable

import uvicorn
from bridgelab.cli.daemon import HTTP, LOOP


def app_for(body: bytes) -> Callable[..., Awaitable[None]]:
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]

    async def app(scope: dict[str, Any], receive: Callable[..., Any], send: Callable[..., Any]) -> None:
        if scope["type"] != "http":
            return
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": body})
    return app


if __name__ == "__main__":
    uvicorn.run(app_for(Path(sys.argv[1]).read_bytes()), uds=sys.argv[2], loop=LOOP, http=HTTP,
                access_log=False, log_level="warning", lifespan="off")
