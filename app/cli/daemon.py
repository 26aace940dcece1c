"""`bridgelab serve`: bind the API first, then the host side, then the guests."""

from __future__ import annotations

import argparse
import logging
import signal
import socket
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from ..api.auth import TOKEN_ENV, Policy, default_token_file, env_token, load_or_create_token
from ..host import preflight
from ..lab.loader import load_lab
from .exits import EXIT_INVALID

if TYPE_CHECKING:
    from ..lab.runner import LabRunner

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
    plan, source = load_lab(args.lab, args.state_dir, resume=not args.fresh)
    token_file = args.token_file or default_token_file()
    policy = Policy.for_listen(args.listen, load_or_create_token(token_file))
    try:
        sock = bind_listen(args.listen)
    except (OSError, ValueError) as e:
        print(f"bridgelab: cannot listen on {args.listen}: {e}", file=sys.stderr)
        return EXIT_INVALID
    runner = LabRunner(plan, source, shutdown_timeout=args.shutdown_timeout, cold=args.cold)
    try:
        with runner.hosted():
            _serve(runner, args, policy, token_file, sock)
    finally:
        sock.close()
        if args.listen.startswith("unix:"):
            Path(args.listen[5:]).unlink(missing_ok=True)
    return 0


def _serve(runner: LabRunner, args: argparse.Namespace, policy: Policy, token_file: Path,
           sock: socket.socket) -> None:
    import uvicorn

    from ..api.app import create_app

    server: uvicorn.Server | None = None

    def request_exit() -> None:
        if server is not None:
            server.should_exit = True
    app = create_app(runner, request_exit, policy, exiting=lambda: server is not None and server.should_exit)
    # timeout_graceful_shutdown: a long-poll (/wait) or a console left open
    # must not hold the guests' shutdown back; the page's feed ends by itself.
    config = uvicorn.Config(app, log_level=args.log_level.lower(), lifespan="on", access_log=False,
                            limit_concurrency=1000, timeout_keep_alive=30, timeout_graceful_shutdown=5)
    server = uvicorn.Server(config)
    # uvicorn re-raises the signal it caught once it has shut down; with the
    # default handler that would kill us before the taps and bridge are
    # removed. A handler of our own makes the re-raise harmless.
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: None)
    exposure = ("reads open, changes need the token" if policy.open_reads else "every request needs the token")
    if policy.trusted_transport:
        exposure = "unix socket, mode 0600"
    plan = runner.plan
    log.info("lab %s: bridge %s %s, %d guests, API on %s (%s; token in %s)", plan.name, plan.bridge,
             plan.bridge_address or "(no address: proxy-arp)", len(plan.guests), args.listen, exposure,
             "$" + TOKEN_ENV if env_token() else token_file)
    server.run(sockets=[sock])
