"""`bridgelab serve`: bind the API first, then the host side, then the guests."""

from __future__ import annotations

import argparse
import gc
import logging
import signal
import socket
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Final

from ..api.auth import TOKEN_ENV, Policy, default_token_file, env_token, load_or_create_token
from ..host import preflight
from ..lab.loader import load_lab
from .exits import EXIT_INVALID

if TYPE_CHECKING:
    from ..lab.runner import LabRunner
    from ..model.plan import LabPlan
    from ..model.spec import Lab

log = logging.getLogger("bridgelab")


def bind_listen(spec: str) -> socket.socket:
    """Bind before creating anything, so a busy port fails cleanly."""
    if spec.startswith("unix:"):
        path = Path(spec[5:])
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.exists():  # a stale socket is replaced; a live one is somebody's
            probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                probe.connect(str(path))
                raise OSError(f"{path} is in use by a running server")
            except ConnectionRefusedError:
                path.unlink()
            finally:
                probe.close()
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.bind(str(path))
        path.chmod(0o600)
    else:
        host, _, port = spec.rpartition(":")
        host = host.strip("[]") or "127.0.0.1"
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        s = socket.socket(family, socket.SOCK_STREAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind((host, int(port)))
    s.listen(128)
    return s


def cmd_serve(args: argparse.Namespace) -> int:
    from ..lab.runner import LabRunner

    preflight.preflight()
    token_file = args.token_file or default_token_file()
    lab, todo = _images_to_build(args.lab) if args.build_missing else (None, [])
    if lab is None or not todo:  # every check before the socket, so a bad lab fails before it is served
        plan, source = load_lab(args.lab, args.state_dir, resume=not args.fresh)
    policy = Policy.for_listen(args.listen, load_or_create_token(token_file))
    try:
        sock = bind_listen(args.listen)
    except (OSError, ValueError) as e:
        print(f"bridgelab: cannot listen on {args.listen}: {e}", file=sys.stderr)
        return EXIT_INVALID
    if lab is not None and todo:
        try:
            if (code := _build_while_serving(lab, todo, args, policy, sock)) is not None:
                return code
            plan, source = load_lab(args.lab, args.state_dir, resume=not args.fresh)
        except BaseException:
            sock.close()
            raise
    try:
        peer_sock = _peer_socket(plan, args.listen)
    except OSError as e:
        sock.close()
        print(f"bridgelab: cannot listen for peers: {e}", file=sys.stderr)
        return EXIT_INVALID
    runner = LabRunner(plan, source, shutdown_timeout=args.shutdown_timeout, cold=args.cold, peer_token=policy.token)
    try:
        with runner.hosted():
            _serve(runner, args, policy, token_file, [sock, *([peer_sock] if peer_sock else [])])
    finally:
        sock.close()
        if peer_sock is not None:
            peer_sock.close()
        if args.listen.startswith("unix:"):
            Path(args.listen[5:]).unlink(missing_ok=True)
    return 0


def _peer_socket(plan: LabPlan, listen: str) -> socket.socket | None:
    """With peers, the API also answers on this host's underlay address, at
    the peers' API port, for GET /peering alone (api/peer_door.py): the
    peers find each other there, while the rest of the API stays where
    --listen put it. None without peers, or when --listen already covers it."""
    if plan.overlay is None:
        return None
    host, _, port = listen.rpartition(":")
    if not listen.startswith("unix:") and int(port) == plan.overlay.api_port and \
            host.strip("[]") in ("0.0.0.0", "::", "", str(plan.overlay.local)):
        return None
    return bind_listen(f"{plan.overlay.local}:{plan.overlay.api_port}")


def _images_to_build(lab_file: Path) -> tuple[Lab | None, list[str]]:
    """The lab file, parsed once, and the recipes it names that are not built."""
    from ..lab.image_prep import unbuilt_recipes
    from ..model.spec import load_lab_text

    try:
        lab = load_lab_text(lab_file.read_text())
    except OSError:
        return None, []  # load_lab reports it
    return lab, unbuilt_recipes(lab, lab_file.resolve().parent)


def _build_while_serving(lab: Lab, todo: list[str], args: argparse.Namespace, policy: Policy,
                         sock: socket.socket) -> int | None:
    """Build the images with the build's API on a copy of the socket (closing
    it leaves the listening socket to the lab's API; connections wait in its
    backlog in between). None when built; else the exit code: 0 when a
    signal stopped the build, 1 when it failed."""
    import os
    import threading

    import uvicorn

    from ..api.building import create_build_app
    from ..lab.image_prep import ImageBuilds

    builds = ImageBuilds(todo)
    server = uvicorn.Server(uvicorn.Config(create_build_app(builds, lab, policy), log_level=args.log_level.lower(),
                                           access_log=False, timeout_graceful_shutdown=5,
                                           loop=LOOP, http=HTTP))
    log.info("lab %s: building %s first; the API answers meanwhile on %s", lab.name, ", ".join(todo), args.listen)

    def end_when_built() -> None:
        builds.finished.wait()
        server.should_exit = True
    builds.start()
    threading.Thread(target=end_when_built, name="build-watch", daemon=True).start()
    _quiet_signals()
    server.run(sockets=[socket.socket(fileno=os.dup(sock.fileno()))])
    if not builds.finished.is_set():  # a signal ended the server: stop the build too
        builds.stop()
        builds.finished.wait()
        log.info("stopped during the image build; nothing of the lab was created")
        return 0
    return None if builds.ok else 1


# uvloop's event loop and httptools' parser (both dependencies): about twice
# the requests per second of asyncio's loop and h11 (bench/api.py).
LOOP: Final = "uvloop"
HTTP: Final = "httptools"


def _quiet_signals() -> None:
    """uvicorn re-raises the signal it caught once it has shut down; with the
    default handler that would kill us before the taps and bridge are
    removed. A handler of our own makes the re-raise harmless."""
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: None)


def _serve(runner: LabRunner, args: argparse.Namespace, policy: Policy, token_file: Path,
           socks: list[socket.socket]) -> None:
    import uvicorn

    from ..api.app import create_app

    server: uvicorn.Server | None = None

    def request_exit() -> None:
        if server is not None:
            server.should_exit = True
    app = create_app(runner, request_exit, policy, exiting=lambda: server is not None and server.should_exit,
                     peer_doors=[s.getsockname()[:2] for s in socks[1:]])
    # timeout_graceful_shutdown: a long-poll (/wait) or a console left open
    # must not hold the guests' shutdown back; the page's feed ends by itself.
    config = uvicorn.Config(app, log_level=args.log_level.lower(), lifespan="on", access_log=False,
                            limit_concurrency=1000, timeout_keep_alive=30, timeout_graceful_shutdown=5,
                            loop=LOOP, http=HTTP)
    server = uvicorn.Server(config)
    # Everything loaded so far (FastAPI, pydantic, pyroute2) lives as long as
    # the daemon; frozen, the collector stops walking it on every full
    # collection. (Not measured on its own: bench/api.py's open-loop p99
    # moved more with the host's noise than with this.)
    gc.freeze()
    _quiet_signals()
    exposure = ("reads open, changes need the token" if policy.open_reads else "every request needs the token")
    if policy.trusted_transport:
        exposure = "unix socket, mode 0600"
    plan = runner.plan
    log.info("lab %s: bridge %s %s, %d guests, API on %s (%s; token in %s)", plan.name, plan.bridge,
             plan.bridge_address or "(no address: proxy-arp)", len(plan.guests), args.listen, exposure,
             "$" + TOKEN_ENV if env_token() else token_file)
    server.run(sockets=socks)
