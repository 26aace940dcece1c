"""Command line: `serve` runs the daemon; the rest are thin API clients or tools."""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import signal
import socket
import sys
import time
from pathlib import Path
from typing import Any

import httpx

from . import images
from .errors import BridgelabError, FieldIssue, ImageError, SpecError
from .plan import HostFacts, LabPlan, make_plan
from .spec import load_lab_text

log = logging.getLogger("bridgelab")
EXIT_INVALID = 2
DEFAULT_LISTEN = "127.0.0.1:8700"


def host_facts() -> HostFacts:
    return HostFacts(arch=platform.machine(), kvm=os.access("/dev/kvm", os.R_OK | os.W_OK))


def default_state_dir(lab_name: str) -> Path:
    return Path(os.environ.get("BRIDGELAB_STATE_DIR", "/run/bridgelab")) / lab_name


def load_plan(lab_file: Path, state_dir: Path | None) -> LabPlan:
    """Everything that can be checked before touching the host: spec, images, plan."""
    try:
        text = lab_file.read_text()
    except OSError as e:
        raise SpecError([FieldIssue("", f"cannot read {lab_file}: {e.strerror}")]) from None
    lab = load_lab_text(text)
    resolved: dict[str, images.Image] = {}
    issues: list[FieldIssue] = []
    for i, g in enumerate(lab.guests):
        if g.image in resolved:
            continue
        try:
            resolved[g.image] = images.resolve_image(g.image, lab_file.resolve().parent)
        except ImageError as e:
            issues.append(FieldIssue(f"guests[{i}].image", str(e)))
    if issues:
        raise SpecError(issues)
    return make_plan(lab, resolved, host_facts(), state_dir or default_state_dir(lab.name))


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
    import uvicorn

    from .api import create_app
    from .lab import LabRunner

    plan = load_plan(args.lab, args.state_dir)
    try:
        sock = bind_listen(args.listen)
    except (OSError, ValueError) as e:
        print(f"bridgelab: cannot listen on {args.listen}: {e}", file=sys.stderr)
        return EXIT_INVALID
    runner = LabRunner(plan, shutdown_timeout=args.shutdown_timeout)
    try:
        runner.lock()
        runner.setup_host()
        server: uvicorn.Server | None = None

        def request_exit() -> None:
            if server is not None:
                server.should_exit = True
        app = create_app(runner, request_exit)
        config = uvicorn.Config(app, log_level=args.log_level.lower(), lifespan="on", access_log=False)
        server = uvicorn.Server(config)
        # uvicorn re-raises the signal it caught once it has shut down; with the
        # default handler that would kill us before the taps and bridge are
        # removed. A handler of our own makes the re-raise harmless.
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: None)
        log.info("lab %s: bridge %s %s, %d guests, API on %s", plan.name, plan.bridge, plan.bridge_address,
                 len(plan.guests), args.listen)
        server.run(sockets=[sock])
    finally:
        runner.teardown_host()
        sock.close()
        if args.listen.startswith("unix:"):
            Path(args.listen[5:]).unlink(missing_ok=True)
    return 0


def cmd_validate(args: argparse.Namespace) -> int:
    plan = load_plan(args.lab, args.state_dir)
    for g in plan.guests:
        print(f"{g.name}: {g.arch.value} {g.accel} ip={g.ip} mac={g.mac} tap={g.tap} image={g.image.name}")
    return 0


# ---------------------------------------------------------------- API clients


def client(api: str, timeout: float = 30.0) -> httpx.Client:
    if api.startswith("unix:"):
        return httpx.Client(transport=httpx.HTTPTransport(uds=api[5:]), base_url="http://bridgelab",
                            timeout=timeout)
    base = api if "://" in api else f"http://{api}"
    return httpx.Client(base_url=base, timeout=timeout)


def cmd_status(args: argparse.Namespace) -> int:
    with client(args.api) as c:
        guests: list[dict[str, Any]] = c.get("/guests").raise_for_status().json()
    if args.json:
        print(json.dumps(guests, indent=2))
    else:
        print_table(guests)
    return 0 if all(g["state"] == "ready" for g in guests) else 1


def print_table(guests: list[dict[str, Any]]) -> None:
    print(f"{'NAME':16} {'STATE':12} {'IP':16} {'MAC':18} {'TAP':16} REASON")
    for g in guests:
        print(f"{g['name']:16} {g['state']:12} {g['ip']:16} {g['mac']:18} {g['tap']:16} {g['reason'] or ''}")


def cmd_down(args: argparse.Namespace) -> int:
    with client(args.api) as c:
        c.post("/shutdown").raise_for_status()
        deadline = time.monotonic() + args.timeout
        while time.monotonic() < deadline:
            try:
                c.get("/healthz", timeout=2)
            except httpx.TransportError:
                return 0
            time.sleep(0.5)
    print("bridgelab: daemon still answering after the timeout", file=sys.stderr)
    return 1


def cmd_image_build(args: argparse.Namespace) -> int:
    out = images.build_image(args.name, force=args.force)
    print(out)
    return 0


def cmd_image_path(args: argparse.Namespace) -> int:
    out = images.built_dir(args.name)
    print(out)
    return 0 if (out / images.MANIFEST).is_file() else 1


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="bridgelab", description=__doc__)
    p.add_argument("--log-level", default=os.environ.get("BRIDGELAB_LOG", "INFO"))
    sub = p.add_subparsers(dest="command", required=True)
    api_default = os.environ.get("BRIDGELAB_API", DEFAULT_LISTEN)

    s = sub.add_parser("serve", help="build the network, boot and configure the guests, serve the API")
    s.add_argument("--lab", type=Path, required=True)
    s.add_argument("--listen", default=DEFAULT_LISTEN, help="HOST:PORT or unix:/path (default %(default)s)")
    s.add_argument("--state-dir", type=Path, help="default: $BRIDGELAB_STATE_DIR/<lab> or /run/bridgelab/<lab>")
    s.add_argument("--shutdown-timeout", type=float, default=30.0)
    s.set_defaults(fn=cmd_serve)

    v = sub.add_parser("validate", help="check a lab file and print the resolved plan")
    v.add_argument("--lab", type=Path, required=True)
    v.add_argument("--state-dir", type=Path)
    v.set_defaults(fn=cmd_validate)

    for name, fn, helptext in (("status", cmd_status, "show the guests"), ("down", cmd_down, "stop the daemon")):
        c = sub.add_parser(name, help=helptext)
        c.add_argument("--api", default=api_default, help="HOST:PORT, URL or unix:/path")
        c.set_defaults(fn=fn)
        if name == "status":
            c.add_argument("--json", action="store_true")
        else:
            c.add_argument("--timeout", type=float, default=120.0)

    im = sub.add_parser("image", help="guest images").add_subparsers(dest="image_command", required=True)
    b = im.add_parser("build", help="build a recipe from images/ into the cache")
    b.add_argument("name")
    b.add_argument("--force", action="store_true")
    b.set_defaults(fn=cmd_image_build)
    ip = im.add_parser("path", help="print where a recipe's image is (or would be) cached")
    ip.add_argument("name")
    ip.set_defaults(fn=cmd_image_path)
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    try:
        return int(args.fn(args))
    except SpecError as e:
        print("bridgelab: invalid lab, nothing was created:", file=sys.stderr)
        for issue in e.issues:
            print(f"  {issue}", file=sys.stderr)
        return EXIT_INVALID
    except BridgelabError as e:
        print(f"bridgelab: {e}", file=sys.stderr)
        return 1
    except httpx.HTTPError as e:
        print(f"bridgelab: API error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
