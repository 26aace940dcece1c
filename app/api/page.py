"""The status page at `/`: our own HTML, script and style (static/), xterm.js
from a package (settings.web_assets, never the repository), and the live
feed the page draws from (`GET /events`, server-sent events).

The feed sends the whole lab (summary and guests) whenever it changed, so a
page that reconnects is whole again at once; it is built from the runner's
memory, never from files, once per change, and ends when the daemon is
exiting."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path
from typing import Any, AsyncIterator, Callable

from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, StreamingResponse
from fastapi.staticfiles import StaticFiles

from ..lab.runner import LabRunner
from ..settings import current
from .schemas import Health, LabState
from .views import guest_view, summary

STATIC = Path(__file__).parent / "static"
# The feed waits for a change at most this long before it looks whether its
# page is gone or the daemon is exiting (a shutdown must not wait for it).
FEED_WAKE = 0.5
KEEPALIVE = 15.0  # a comment line this often, so proxies keep an idle feed open


def lab_state(runner: LabRunner, terminal: bool) -> LabState:
    return LabState(health=Health(status="ok", **summary(runner)), terminal=terminal,
                    guests=[guest_view(g, tail="") for g in runner.guests.values()])


async def feed(request: Request, runner: LabRunner, exiting: Callable[[], bool], terminal: bool
               ) -> AsyncIterator[str]:
    """The lab whenever it changed (the runner's generation moved), woken by
    the change itself rather than by polling."""
    seen, quiet = -1, 0.0
    while not exiting() and not await request.is_disconnected():
        if runner.ctx.generation != seen:
            seen = runner.ctx.generation
            yield f"event: lab\ndata: {lab_state(runner, terminal).model_dump_json()}\n\n"
            quiet = 0.0
        elif quiet >= KEEPALIVE:
            yield ": keep-alive\n\n"
            quiet = 0.0
        change = runner.ctx.change
        t0 = asyncio.get_running_loop().time()
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(change.wait(), FEED_WAKE)
        quiet += asyncio.get_running_loop().time() - t0


def mount_page(app: FastAPI, runner: LabRunner, read: list[Any], exiting: Callable[[], bool]) -> None:
    xterm = current().web_assets / "xterm"
    terminal = (xterm / "xterm.js").is_file()

    @app.get("/", include_in_schema=False)
    async def page() -> FileResponse:
        return FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-cache"})

    @app.get("/events", include_in_schema=False, dependencies=read)
    async def events(request: Request) -> StreamingResponse:
        """The lab as server-sent events (`event: lab`, data: LabState JSON), on every change."""
        return StreamingResponse(feed(request, runner, exiting, terminal), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"})

    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    # check_dir=False: without xterm.js the page still shows the lab, and says
    # how to get the console.
    app.mount("/vendor/xterm", StaticFiles(directory=xterm, check_dir=False), name="xterm")


__all__ = ["feed", "lab_state", "mount_page"]
