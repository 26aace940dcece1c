"""The API while the daemon builds the images its lab needs (a first start):
up from the first second, it says what is being built and how far it got.

/healthz answers `building` with the build's phase and percent; /readyz and
/wait answer as for a lab whose guests are all pending (503, 504), with the
build besides; every other path is 503 with Retry-After. When the builds are
done this app stops and the lab's own API takes over the same socket."""

from __future__ import annotations

import asyncio
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Query
from fastapi.responses import JSONResponse

from .. import __version__
from ..lab.image_prep import BuildProgress, ImageBuilds
from ..lab.states import GuestState
from ..model.spec import Lab
from .auth import Policy, reader_of
from .schemas import Building, BuildView, GuestReadiness, Readiness, WaitResult

RETRY_AFTER = "5"
WAIT_POLL = 0.5  # seconds between looks at the build during GET /wait


def step(v: BuildView) -> tuple[str, str, int | None]:
    return v.image, v.phase, None if v.percent is None else int(v.percent // 10)


def build_view(p: BuildProgress) -> BuildView:
    return BuildView(image=p.image, phase=p.phase, percent=p.percent, started_at=p.started_at,
                     images_left=list(p.images_left), failed=p.failed)


def create_build_app(builds: ImageBuilds, lab: Lab, policy: Policy | None) -> FastAPI:
    app = FastAPI(title="bridgelab (building images)", version=__version__, docs_url=None, redoc_url=None)

    reader = reader_of(policy)

    def view() -> BuildView:
        progress = builds.progress or BuildProgress(image=builds.names[0], phase="starting", percent=None,
                                                    started_at=0.0, images_left=tuple(builds.names[1:]))
        return build_view(progress)

    def readiness() -> Readiness:
        names = [g.name for g in lab.guests]
        return Readiness(ready=False, waiting=names, failed=[], stopped=[], build=view(),
                         guests=[GuestReadiness(name=n, state=GuestState.pending, reason=None) for n in names])

    @app.get("/healthz", dependencies=[Depends(reader)])
    async def healthz() -> Building:
        return Building(status="building", lab=lab.name, build=view())

    @app.get("/readyz", dependencies=[Depends(reader)])
    async def readyz() -> JSONResponse:
        return JSONResponse(status_code=503, content=readiness().model_dump(mode="json"))

    @app.get("/wait", dependencies=[Depends(reader)])
    @app.get("/guests/{name}/wait", dependencies=[Depends(reader)])
    async def wait(timeout: Annotated[float, Query(ge=0, le=3600)] = 30.0) -> JSONResponse:
        """Until the build moves on (a phase, or ten percent), the builds end
        (the lab's API then answers the next call) or the timeout: always
        504, not settled, with the build; `bridgelab wait` shows each step."""
        start = step(view())
        deadline = asyncio.get_running_loop().time() + timeout
        while not builds.finished.is_set() and step(view()) == start \
                and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(WAIT_POLL)
        body = WaitResult(settled=False, ready=[], failed=[], guests=[], build=view())
        return JSONResponse(status_code=504, content=body.model_dump(mode="json"))

    @app.api_route("/{path:path}", methods=["GET", "POST", "PUT", "DELETE", "PATCH"], include_in_schema=False)
    async def starting(path: str) -> Any:
        v = view()
        percent = f", {v.percent:.0f}%" if v.percent is not None else ""
        return JSONResponse(status_code=503, headers={"Retry-After": RETRY_AFTER},
                            content={"detail": f"lab {lab.name} is starting: building image {v.image} "
                                               f"({v.phase}{percent}); GET /healthz shows the progress"})

    return app


__all__ = ["build_view", "create_build_app"]
