"""REST API: routers, error -> HTTP mapping, and the lifespan that runs the lab."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any, AsyncIterator, Callable

from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse

from .errors import SpecError
from .lab import GuestBusy, LabRunner
from .spec import NetworkRequest

log = logging.getLogger(__name__)


def create_app(runner: LabRunner, request_exit: Callable[[], None] = lambda: None) -> FastAPI:
    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        runner.start_guests()
        try:
            yield
        finally:
            await runner.stop()

    app = FastAPI(title="bridgelab", version="0.1.0", lifespan=lifespan)

    @app.exception_handler(SpecError)
    async def _spec_error(request: Request, exc: SpecError) -> JSONResponse:
        detail = [{"loc": ["body", *i.path.split(".")], "msg": i.message, "type": "value_error"}
                  for i in exc.issues]
        return JSONResponse(status_code=422, content={"detail": detail})

    @app.exception_handler(GuestBusy)
    async def _busy(request: Request, exc: GuestBusy) -> JSONResponse:
        return JSONResponse(status_code=409, content={"detail": str(exc)})

    def guest_or_404(name: str) -> Any:
        try:
            return runner.get(name)
        except KeyError:
            raise HTTPException(404, f"no guest named {name!r}") from None

    @app.get("/healthz")
    async def healthz() -> dict[str, Any]:
        return {"status": "ok", **runner.summary()}

    @app.get("/guests")
    async def list_guests() -> list[dict[str, Any]]:
        return [runner.view(g) for g in runner.guests.values()]

    @app.get("/guests/{name}")
    async def get_guest(name: str) -> dict[str, Any]:
        return runner.view(guest_or_404(name))

    @app.put("/guests/{name}/network")
    async def put_network(name: str, body: NetworkRequest) -> dict[str, Any]:
        guest_or_404(name)
        return runner.view(await runner.set_network(name, body))

    @app.post("/guests/{name}/reboot")
    async def reboot(name: str) -> dict[str, Any]:
        guest_or_404(name)
        return runner.view(await runner.reboot(name))

    @app.post("/shutdown", status_code=202)
    async def shutdown() -> dict[str, str]:
        # Answer first, then stop: the caller polls /healthz until it is gone.
        asyncio.get_running_loop().call_later(0.1, request_exit)
        return {"status": "stopping"}

    return app
