"""REST API: routes, error -> HTTP mapping, auth, body limits, and the lifespan that runs the lab."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Annotated, Any, AsyncIterator, Awaitable, Callable

from fastapi import Depends, FastAPI, Path, Query, Request, WebSocket
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from fastapi_offline import FastAPIOffline

from .. import __version__
from ..errors import (AuthError, BridgelabError, CrossOrigin, GuestBusy, GuestError, GuestTimeout, SpecError,
                      UnknownGuest)
from ..lab.runner import LabRunner
from .auth import SESSION_COOKIE, Policy, reader_of, same_origin, session_value
from .consoles import Terminals, attach_serial, attach_terminal
from .methods import AllowEveryMethod
from .page import mount_page
from .peer_door import Address, PeerDoor
from .schemas import (
    GUEST_NAME_PATTERN,
    AddGuest,
    ErrorBody,
    ExecRequest,
    ExecResult,
    GuestView,
    Health,
    MeshReport,
    NetworkRequest,
    PeerView,
    Readiness,
    SNAPSHOT_NAME_PATTERN,
    SnapshotRequest,
    SessionRequest,
    SnapshotView,
    ValidationErrorBody,
    WaitResult,
)
from .view_cache import GuestViews
from ..model.peering import Declaration
from .views import console_tail, guest_view, peer_view, readiness, snapshot_view, summary, wait_result

log = logging.getLogger(__name__)
MAX_BODY = 64 * 1024
MAX_WAIT = 3600.0

GuestName = Annotated[str, Path(pattern=GUEST_NAME_PATTERN, max_length=32, examples=["rv1"])]
SnapName = Annotated[str, Path(pattern=SNAPSHOT_NAME_PATTERN, max_length=32, examples=["before-test"])]
ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorBody, "description": "the body is not JSON"},
    401: {"model": ErrorBody, "description": "missing or wrong bearer token"},
    403: {"model": ErrorBody, "description": "a browser page of another origin tried to change the lab"},
    502: {"model": ErrorBody, "description": "the guest's console or agent failed during the request"},
    404: {"model": ErrorBody, "description": "no such guest"},
    409: {"model": ErrorBody, "description": "the guest is busy or in the wrong state"},
    413: {"model": ErrorBody, "description": "request body too large"},
}


def dynamic_422(description: str, **examples: str) -> dict[int | str, dict[str, Any]]:
    """A 422 that depends on the lab's state (subnet, names in use, built
    images), which no schema can state: documented with examples, so that a
    client knows to expect it although its request matched the schema."""
    return {422: {"model": ValidationErrorBody, "description": description, "content": {"application/json": {
        "examples": {
        key: {"summary": detail, "value": {"detail": [{"loc": ["body"], "msg": detail, "type": "value_error"}]}}
            for key, detail in examples.items()}}}}}


# First match wins: the specific guest errors before GuestError (the guest
# failed us: 502, like a gateway whose upstream broke).
STATUS = {UnknownGuest: 404, GuestBusy: 409, GuestTimeout: 504, AuthError: 401, CrossOrigin: 403,
          GuestError: 502}


class BodyLimit:
    """Reject bodies over MAX_BODY, declared or streamed, before any handler sees them.
    A streamed (chunked) body is read here first, up to the limit, and replayed:
    bodies are small, and a handler must never see a cut one."""

    def __init__(self, app: Any, limit: int = MAX_BODY):
        self.app = app
        self.limit = limit

    async def __call__(self, scope: dict[str, Any], receive: Callable[[], Awaitable[dict[str, Any]]],
                       send: Callable[[dict[str, Any]], Awaitable[None]]) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope.get("headers") or [])
        declared = headers.get(b"content-length")
        if declared is not None:
            if not declared.isdigit() or int(declared) > self.limit:
                return await _too_large(scope, receive, send, self.limit)
            return await self.app(scope, receive, send)
        if b"transfer-encoding" not in headers:  # HTTP/1.1: neither header, no body (every GET)
            return await self.app(scope, receive, send)
        body = b""
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return await self.app(scope, _replay([message], receive), send)
            body += message.get("body", b"")
            if len(body) > self.limit:
                return await _too_large(scope, receive, send, self.limit)
            if not message.get("more_body"):
                break
        await self.app(scope, _replay([{"type": "http.request", "body": body, "more_body": False}], receive), send)


def _replay(messages: list[dict[str, Any]], receive: Callable[[], Awaitable[dict[str, Any]]]
            ) -> Callable[[], Awaitable[dict[str, Any]]]:
    async def replayed() -> dict[str, Any]:
        return messages.pop(0) if messages else await receive()
    return replayed


async def _too_large(scope: Any, receive: Any, send: Any, limit: int) -> None:
    response = JSONResponse(status_code=413, content={"detail": f"request body over {limit} bytes"})
    await response(scope, receive, send)


def create_app(runner: LabRunner, request_exit: Callable[[], None] = lambda: None,
               policy: Policy | None = None, exiting: Callable[[], bool] = lambda: False,
               peer_doors: list[Address] | None = None) -> FastAPI:
    """`peer_doors`: the sockets (host, port) where peers knock: GET /peering alone is served there."""
    terminals = Terminals(runner)
    views = GuestViews(lambda: runner.ctx.generation)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        runner.start_guests()
        try:
            yield
        finally:
            await terminals.close()
            await runner.stop()

    # /docs and /redoc load Swagger UI and ReDoc from the fastapi-offline
    # package, not from a CDN: a lab host is often offline.
    app = FastAPIOffline(title="bridgelab", version=__version__, lifespan=lifespan, responses=ERRORS,
                         description="QEMU guests on one Linux bridge: readiness, exec, network, runtime guests.")
    app.add_middleware(BodyLimit)
    if peer_doors:
        if policy is None:
            raise ValueError("a door for peers needs the token's policy")
        app.add_middleware(PeerDoor, doors=peer_doors, token_matches=policy.token_matches)
    app.add_middleware(AllowEveryMethod, routes=lambda: app.routes)

    async def writer(request: Request) -> None:
        # A browser names its page's origin on every change it sends: only
        # the daemon's own page may use the session cookie to change the lab.
        if not same_origin(request.headers.get("origin"), request.headers.get("host")):
            raise CrossOrigin("cross-origin requests may not change the lab")
        if policy is not None:
            policy.check(request.headers.get("authorization"), mutating=True,
                         cookie=request.cookies.get(SESSION_COOKIE))

    read = [Depends(reader_of(policy))]
    write = [Depends(writer)]

    @app.exception_handler(SpecError)
    async def _spec_error(request: Request, exc: SpecError) -> JSONResponse:
        detail = [{"loc": ["body", *[p for p in i.path.split(".") if p]], "msg": i.message, "type": "value_error"}
                  for i in exc.issues]
        return JSONResponse(status_code=422, content={"detail": detail})

    @app.exception_handler(BridgelabError)
    async def _domain_error(request: Request, exc: BridgelabError) -> JSONResponse:
        status = next((code for cls, code in STATUS.items() if isinstance(exc, cls)), 500)
        headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
        return JSONResponse(status_code=status, content={"detail": str(exc)}, headers=headers)

    @app.post("/session", status_code=204, responses={401: {"model": ErrorBody, "description": "wrong token"}})
    async def open_session(body: SessionRequest, request: Request) -> Response:
        """For browsers: the token, once, for an HttpOnly, SameSite=Strict
        session cookie that the page's requests and consoles then carry. The
        token never goes into a URL."""
        if not same_origin(request.headers.get("origin"), request.headers.get("host")):
            raise CrossOrigin("cross-origin requests may not open a session")
        if policy is not None and not policy.token_matches(f"Bearer {body.token}"):
            raise AuthError("wrong token (see the token file or $BRIDGELAB_TOKEN)")
        response = Response(status_code=204)
        response.set_cookie(SESSION_COOKIE, session_value(policy.token if policy else body.token), httponly=True,
                            samesite="strict", secure=request.url.scheme == "https", path="/")
        return response

    @app.delete("/session", status_code=204)
    async def close_session() -> Response:
        response = Response(status_code=204)
        response.delete_cookie(SESSION_COOKIE, httponly=True, samesite="strict", path="/")
        return response

    @app.get("/healthz", dependencies=read)
    async def healthz() -> Health:
        return Health(status="ok", **summary(runner))

    @app.get("/readyz", dependencies=read, response_model=Readiness,
             responses={503: {"model": Readiness, "description": "a guest is not ready: on its way, failed "
                                                                 "(with the reason) or stopped"}})
    async def readyz() -> Any:
        """200 when every guest of the lab is ready, else 503 with each guest's
        state: for a healthcheck (`docker compose up --wait`, `depends_on:
        service_healthy`) and for CI. /healthz only says the daemon answers."""
        body = readiness(list(runner.guests.values()))
        return body if body.ready else JSONResponse(status_code=503, content=body.model_dump(mode="json"))

    @app.get("/guests", dependencies=read, response_model=list[GuestView])
    async def list_guests() -> Response:
        return Response(views.many(list(runner.guests.values())), media_type="application/json")

    @app.post("/guests", dependencies=write, status_code=201, responses=dynamic_422(
        "invalid by the schema, or in conflict with the lab as it is now",
        address_outside="10.198.102.9 is outside the bridge network 10.198.101.0/24",
        address_in_use="10.198.101.1 is already used by guest rv1",
        name_in_use="guest rv1 already exists",
        image_not_built="image debian-x86_64 is not built: bridgelab image build debian-x86_64"))
    async def add_guest(body: AddGuest) -> GuestView:
        """Add a guest to the running lab: a new tap, qemu, configuration. Returns at once
        (state `booting`); wait for it with `GET /guests/{name}/wait`."""
        return guest_view(await runner.add_guest(body))

    @app.get("/guests/{name}", dependencies=read, response_model=GuestView)
    async def get_guest(name: GuestName) -> Response:
        return Response(views.one(runner.get(name)), media_type="application/json")

    @app.delete("/guests/{name}", dependencies=write, status_code=204)
    async def remove_guest(name: GuestName) -> None:
        """Power the guest down, remove its tap and its state."""
        await runner.remove_guest(name)

    @app.get("/wait", dependencies=read, responses={504: {"model": WaitResult, "description": "timed out"}})
    async def wait_lab(timeout: Annotated[float, Query(ge=0, le=MAX_WAIT)] = 30.0) -> Any:
        """Long-poll until every guest is ready, failed or stopped (200), or the timeout (504)."""
        return _wait_response(wait_result(*await runner.wait(None, timeout)))

    @app.get("/guests/{name}/wait", dependencies=read,
             responses={504: {"model": WaitResult, "description": "timed out"}})
    async def wait_guest(name: GuestName, timeout: Annotated[float, Query(ge=0, le=MAX_WAIT)] = 30.0) -> Any:
        return _wait_response(wait_result(*await runner.wait([name], timeout)))

    @app.post("/guests/{name}/exec", dependencies=write, responses=dynamic_422(
        "invalid by the schema, or arguments over the total length",
        too_long="arguments too long (16384 characters in all)"))
    async def exec_in_guest(name: GuestName, body: ExecRequest) -> ExecResult:
        """Run a command in the guest; its exit code and merged output. Serialized per guest."""
        return await runner.exec(name, body)

    @app.put("/guests/{name}/network", dependencies=write, responses=dynamic_422(
        "invalid by the schema, or in conflict with the lab as it is now",
        address_outside="10.198.102.9 is outside the bridge network 10.198.101.0/24",
        address_in_use="10.198.101.1 is already used by guest rv1",
        bridge_address="10.198.101.114 is the bridge's own address",
        gateway_outside="gateway 192.0.2.1 is not on the guest's network"))
    async def put_network(name: GuestName, body: NetworkRequest) -> GuestView:
        return guest_view(await runner.set_network(name, body))

    @app.post("/guests/{name}/reboot", dependencies=write)
    async def reboot(name: GuestName) -> GuestView:
        return guest_view(await runner.reboot(name))

    @app.post("/guests/{name}/stop", dependencies=write)
    async def stop_guest(name: GuestName) -> GuestView:
        return guest_view(await runner.stop_guest(name))

    @app.post("/guests/{name}/start", dependencies=write)
    async def start_guest(name: GuestName) -> GuestView:
        return guest_view(await runner.start_guest(name))

    json_errors = {code: {"model": ErrorBody, "content": {"application/json": {}}} for code in (401, 404, 413)}

    @app.get("/guests/{name}/console", dependencies=write, response_class=PlainTextResponse,
             responses={200: {"content": {"text/plain": {"example": "bridgelab login: root"}}},
                        **json_errors})  # type: ignore[dict-item]
    async def console_log(name: GuestName, lines: Annotated[int, Query(ge=1, le=10000)] = 100) -> str:
        """The last lines of the serial console, escapes stripped."""
        return console_tail(runner.get(name).plan.paths.console_log, lines, limit=lines * 400)

    @app.websocket("/guests/{name}/console/attach")
    async def console_attach(ws: WebSocket, name: str, write: bool = False) -> None:
        """The live serial console, shared with the automation through the one
        reader. Read-only unless ?write=true; keystrokes are then passed on
        only while no automation command is running."""
        await attach_serial(ws, runner, policy, name, write)

    @app.websocket("/guests/{name}/terminal")
    async def terminal_attach(ws: WebSocket, name: str) -> None:
        """The guest's console for people: its virtio console (hvc0), where
        the guest runs its own getty, with echo. Shared by every viewer;
        apart from the automation's serial console."""
        await attach_terminal(ws, terminals, policy, name)

    # Snapshots: per guest, and for the whole lab as one consistent state.
    @app.get("/guests/{name}/snapshots", dependencies=read)
    async def list_guest_snapshots(name: GuestName) -> list[SnapshotView]:
        return [snapshot_view(s) for s in await asyncio.to_thread(runner.list_snapshots, [name])]

    @app.post("/guests/{name}/snapshots", dependencies=write, status_code=201)
    async def save_guest_snapshot(name: GuestName, body: SnapshotRequest) -> list[SnapshotView]:
        """Save the guest's memory, devices and disk under a name (replacing one of that name)."""
        return [snapshot_view(s) for s in await runner.save_snapshot([name], body.name)]

    @app.post("/guests/{name}/snapshots/{snap}/restore", dependencies=write)
    async def restore_guest_snapshot(name: GuestName, snap: SnapName) -> list[GuestView]:
        """Put the guest back to the snapshot, set its clock, verify it; the other guests run on."""
        return [guest_view(g) for g in await runner.restore_snapshot([name], snap)]

    @app.delete("/guests/{name}/snapshots/{snap}", dependencies=write, status_code=204)
    async def delete_guest_snapshot(name: GuestName, snap: SnapName) -> None:
        await runner.delete_snapshot([name], snap)

    @app.get("/snapshots", dependencies=read)
    async def list_snapshots() -> list[SnapshotView]:
        return [snapshot_view(s) for s in await asyncio.to_thread(runner.list_snapshots, [])]

    @app.post("/snapshots", dependencies=write, status_code=201)
    async def save_lab_snapshot(body: SnapshotRequest) -> list[SnapshotView]:
        """Every guest paused, then saved, then resumed: one consistent state of the lab."""
        return [snapshot_view(s) for s in await runner.save_snapshot([], body.name)]

    @app.post("/snapshots/{snap}/restore", dependencies=write)
    async def restore_lab_snapshot(snap: SnapName) -> list[GuestView]:
        return [guest_view(g) for g in await runner.restore_snapshot([], snap)]

    @app.delete("/snapshots/{snap}", dependencies=write, status_code=204)
    async def delete_lab_snapshot(snap: SnapName) -> None:
        await runner.delete_snapshot([], snap)

    @app.post("/mesh", dependencies=write)
    async def mesh() -> MeshReport:
        """Every ready guest pings the bridge and every other guest; failures say where."""
        return await runner.mesh_check()

    @app.get("/peering", dependencies=write, responses={404: {"model": ErrorBody, "description": "no peers"}})
    async def peering() -> Declaration:
        """This host's part of the lab, for its peers (always with the token):
        its underlay address, bridge, VNI and guests."""
        return runner.peers().mine()

    @app.get("/peers", dependencies=read, responses={404: {"model": ErrorBody, "description": "no peers"}})
    async def peers() -> list[PeerView]:
        """The other hosts of the lab: whether each answers, what it declared, and any clash."""
        lab_peers = runner.peers()
        mine = lab_peers.mine()
        return [peer_view(v, mine) for v in lab_peers.views.values()]

    @app.post("/shutdown", status_code=202, dependencies=write)
    async def shutdown() -> dict[str, str]:
        # Answer first, then stop: the caller polls /healthz until it is gone.
        asyncio.get_running_loop().call_later(0.1, request_exit)
        return {"status": "stopping"}

    mount_page(app, runner, read, exiting)
    return app


def _wait_response(result: WaitResult) -> Any:
    if result.settled:
        return result
    return JSONResponse(status_code=504, content=result.model_dump(mode="json"))


__all__ = ["BodyLimit", "MAX_BODY", "create_app"]
