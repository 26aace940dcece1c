"""Command line: `serve` runs the daemon; the rest are thin API clients or tools."""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import socket
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx

from ..api.auth import TOKEN_ENV, Policy, client_token, default_token_file, env_token, load_or_create_token
from ..errors import BridgelabError, FieldIssue, SettingsError, SpecError
from ..host import cleanup, preflight
from ..lab.loader import load_lab, load_plan
from ..lab.states import SETTLED, GuestState
from ..model import images
from ..model.spec import lab_name_problem, load_lab_text
from ..settings import Settings, current

if TYPE_CHECKING:
    from ..lab.runner import LabRunner

log = logging.getLogger("bridgelab")
EXIT_INVALID = 2
DEFAULT_LISTEN = "127.0.0.1:8700"


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
    runner = LabRunner(plan, source, shutdown_timeout=args.shutdown_timeout)
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
    app = create_app(runner, request_exit, policy)
    config = uvicorn.Config(app, log_level=args.log_level.lower(), lifespan="on", access_log=False,
                            limit_concurrency=1000, timeout_keep_alive=30)
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


def cmd_validate(args: argparse.Namespace) -> int:
    plan = load_plan(args.lab, args.state_dir)
    if plan.uplink is not None:
        up = plan.uplink
        print(f"uplink: {up.mode} via {up.interface} ({up.reason}); self-test target {up.target or 'none'}")
    for g in plan.guests:
        ssh = f" ssh=127.0.0.1:{g.user_nic.ssh_port}" if g.user_nic else ""
        print(f"{g.name}: {g.arch.value} {g.accel} ip={g.ip} gateway={g.gateway} mac={g.mac} tap={g.tap} "
              f"image={g.image.name}{ssh}")
    return 0


def cmd_preflight(args: argparse.Namespace) -> int:
    preflight.preflight()
    return 0


def cmd_cleanup(args: argparse.Namespace) -> int:
    """Remove what dead daemons left; exit 0 when no leftover remains."""
    preflight.preflight()
    lab = None if args.all else lab_name(args.lab)
    report = cleanup.cleanup(lab, args.state_dir)
    for r in report.labs.values():
        for line in ([r.skipped] if r.skipped else []) + r.removed:
            print(f"lab {r.lab}: {line}")
    if report.left:
        print("still on this host:\n" + "\n".join(f"  {x}" for x in report.left))
        return 1
    print("done: nothing a dead daemon left remains" if report.labs else "nothing to clean up")
    return 0


def lab_name(ref: str) -> str:
    """`--lab` of cleanup: a lab name, or a lab file to read the name from."""
    path = Path(ref)
    if "/" in ref or path.suffix in (".yaml", ".yml"):
        try:
            return load_lab_text(path.read_text()).name
        except OSError as e:
            raise SpecError([FieldIssue("", f"cannot read {path}: {e.strerror}")]) from None
    if problem := lab_name_problem(ref):
        raise SpecError([FieldIssue("--lab", problem)])
    return ref


# ---------------------------------------------------------------- API clients


def client(args: argparse.Namespace, timeout: float = 30.0) -> httpx.Client:
    api: str = args.api
    token = client_token(args.token_file)
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    if api.startswith("unix:"):
        return httpx.Client(transport=httpx.HTTPTransport(uds=api[5:]), base_url="http://bridgelab",
                            timeout=timeout, headers=headers)
    base = api if "://" in api else f"http://{api}"
    return httpx.Client(base_url=base, timeout=timeout, headers=headers)


def checked(response: httpx.Response) -> Any:
    """The JSON body of a success; an APIError with the server's own words otherwise."""
    if response.is_success:
        return response.json() if response.content else None
    try:
        detail = response.json().get("detail", response.text)
    except ValueError:
        detail = response.text
    if isinstance(detail, list):  # 422: one line per field
        detail = "; ".join(f"{'.'.join(str(p) for p in d.get('loc', [])[1:])}: {d.get('msg')}" for d in detail)
    raise APIError(response.status_code, str(detail))


class APIError(BridgelabError):
    def __init__(self, status: int, detail: str):
        self.status = status
        super().__init__(f"{status}: {detail}")


def cmd_status(args: argparse.Namespace) -> int:
    with client(args) as c:
        guests: list[dict[str, Any]] = checked(c.get("/guests"))
    if args.json:
        print(json.dumps(guests, indent=2))
    else:
        print_table(guests)
    return 0 if all(g["state"] == GuestState.ready for g in guests) else 1


def print_table(guests: list[dict[str, Any]]) -> None:
    print(f"{'NAME':16} {'STATE':12} {'IP':16} {'MAC':18} {'TAP':16} {'SSH':16} REASON")
    for g in guests:
        print(f"{g['name']:16} {g['state']:12} {g['ip']:16} {g['mac']:18} {g['tap']:16} {g.get('ssh') or '-':16} "
              f"{g['reason'] or ''}")


def cmd_down(args: argparse.Namespace) -> int:
    with client(args) as c:
        checked(c.post("/shutdown"))
        deadline = time.monotonic() + args.timeout
        while time.monotonic() < deadline:
            try:
                c.get("/healthz", timeout=2)
            except httpx.TransportError:
                return 0
            time.sleep(0.5)
    print("bridgelab: daemon still answering after the timeout", file=sys.stderr)
    return 1


EXIT_TIMEOUT = 124  # as timeout(1)


def cmd_wait(args: argparse.Namespace) -> int:
    """Long-poll in slices, printing each stage as it is reached (stderr)."""
    path = f"/guests/{args.name}/wait" if args.name else "/wait"
    deadline = time.monotonic() + args.timeout
    shown: set[tuple[str, str]] = set()
    with client(args, timeout=None) as c:  # type: ignore[arg-type]
        while True:
            slice_s = max(0.0, min(10.0, deadline - time.monotonic()))
            r = c.get(path, params={"timeout": slice_s})
            body = r.json() if r.status_code == 504 else checked(r)
            for g in body["guests"]:
                for stage, _at in sorted(g["stages"].items(), key=lambda kv: kv[1]):
                    if (g["name"], stage) not in shown:
                        shown.add((g["name"], stage))
                        print(f"{g['name']}: {stage}", file=sys.stderr)
            if body["settled"] or time.monotonic() >= deadline:
                break
    for f in body["failed"]:
        print(f"bridgelab: {f['name']} failed: {f['reason']}\n{f['console_tail']}", file=sys.stderr)
    if not body["settled"]:
        waiting = [g["name"] + " (" + g["state"] + ")" for g in body["guests"]
                   if g["state"] not in SETTLED]
        print(f"bridgelab: timed out after {args.timeout:.0f}s waiting for {', '.join(waiting)}", file=sys.stderr)
        return EXIT_TIMEOUT
    print(" ".join(f"{g['name']}={g['ip']}" for g in body["guests"] if g["state"] == GuestState.ready))
    return 1 if body["failed"] else 0


def cmd_exec(args: argparse.Namespace) -> int:
    argv = args.argv
    if not argv:
        print("bridgelab: exec needs a command after --", file=sys.stderr)
        return EXIT_INVALID
    with client(args, timeout=args.timeout + 30) as c:
        body = checked(c.post(f"/guests/{args.name}/exec",
                              json={"argv": argv, "timeout": args.timeout, "max_output": args.max_output}))
    sys.stdout.write(body["output"])
    sys.stderr.write(body["stderr"] or "")
    if body["truncated"]:
        print(f"bridgelab: output cut at {args.max_output} bytes", file=sys.stderr)
    if body["timed_out"]:
        print(f"bridgelab: timed out after {args.timeout:.0f}s", file=sys.stderr)
        return EXIT_TIMEOUT
    return int(body["exit_code"])


def cmd_add(args: argparse.Namespace) -> int:
    spec: dict[str, Any] = {"name": args.name, "image": args.image, "arch": args.arch, "cpus": args.cpus,
                            "memory": args.memory}
    for key in ("ip", "mac"):
        if getattr(args, key):
            spec[key] = getattr(args, key)
    with client(args) as c:
        g = checked(c.post("/guests", json=spec))
    print(f"{g['name']}: {g['state']} ip={g['ip']} mac={g['mac']} tap={g['tap']}")
    if args.wait:
        args.timeout = args.wait
        return cmd_wait(args)
    return 0


def _guest_action(method: str, suffix: str) -> Any:
    def run(args: argparse.Namespace) -> int:
        with client(args, timeout=args.timeout) as c:
            body = checked(c.request(method, f"/guests/{args.name}{suffix}"))
        if body:
            print(f"{body['name']}: {body['state']}" + (f" ({body['reason']})" if body.get("reason") else ""))
            # reboot and start answer while booting, stop once stopped
            return 0 if body["state"] in (GuestState.ready, GuestState.stopped, GuestState.booting) else 1
        return 0
    return run


def cmd_mesh(args: argparse.Namespace) -> int:
    with client(args, timeout=300) as c:
        report = checked(c.post("/mesh"))
    for p in report["pairs"]:
        mark = "ok  " if p["ok"] else "FAIL"
        print(f"{mark} {p['source']:12} -> {p['target']:12} {p['target_ip']:16} {p['diagnosis']}"
              + ("" if p["ok"] else f": {p['detail']}"))
    for p in report.get("uplink", []):
        mark = "ok  " if p["ok"] else "FAIL"
        print(f"{mark} {p['source']:12} -> {'uplink':12} {p['target']:16} {p['layer']}"
              + ("" if p["ok"] else f": {p['detail']}"))
    for name in report["skipped"]:
        print(f"skip {name}: not ready")
    return 0 if report["ok"] else 1


DETACH = b"\x1d"  # Ctrl-], as telnet and virsh console


def cmd_console(args: argparse.Namespace) -> int:
    """Attach to a guest's serial console over the API's websocket."""
    import threading

    from websockets.exceptions import ConnectionClosed
    from websockets.sync.client import connect, unix_connect

    token = client_token(args.token_file)
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    path = f"/guests/{args.name}/console/attach" + ("?write=true" if args.write else "")
    api: str = args.api
    if api.startswith("unix:"):
        ws = unix_connect(api[5:], f"ws://bridgelab{path}", additional_headers=headers)
    else:
        base = api.split("://", 1)[-1].rstrip("/")
        ws = connect(f"{'wss' if api.startswith('https') else 'ws'}://{base}{path}", additional_headers=headers)
    print(f"bridgelab: attached to {args.name}" + (" (Ctrl-] detaches)" if args.write else " (read-only; Ctrl-C)"),
          file=sys.stderr)

    def show() -> None:
        try:
            for data in ws:
                sys.stdout.buffer.write(data if isinstance(data, bytes) else data.encode())
                sys.stdout.buffer.flush()
        except ConnectionClosed:
            pass
    reader = threading.Thread(target=show, daemon=True)
    reader.start()
    try:
        if args.write and sys.stdin.isatty():
            _type_raw(ws)
        else:
            reader.join()
    except KeyboardInterrupt:
        pass
    finally:
        ws.close()
    return 0


def _type_raw(ws: Any) -> None:
    import termios
    import tty

    fd = sys.stdin.fileno()
    saved = termios.tcgetattr(fd)
    tty.setraw(fd)
    try:
        while (keys := os.read(fd, 1024)) and DETACH not in keys:
            ws.send(keys)
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)


def cmd_logs(args: argparse.Namespace) -> int:
    with client(args) as c:
        r = c.get(f"/guests/{args.name}/console", params={"lines": args.lines})
        if not r.is_success:
            checked(r)
    print(r.text)
    return 0


def cmd_image_build(args: argparse.Namespace) -> int:
    out = images.build_image(args.name, force=args.force)
    print(out)
    return 0


def cmd_image_path(args: argparse.Namespace) -> int:
    out = images.built_dir(args.name)
    print(out)
    return 0 if (out / images.MANIFEST).is_file() else 1


def parser(env: Settings) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="bridgelab", description=__doc__)
    p.add_argument("--log-level", default=env.log)
    sub = p.add_subparsers(dest="command", required=True)
    api_default = env.api

    s = sub.add_parser("serve", help="build the network, boot and configure the guests, serve the API")
    s.add_argument("--lab", type=Path, required=True)
    s.add_argument("--listen", default=DEFAULT_LISTEN, help="HOST:PORT or unix:/path (default %(default)s)")
    s.add_argument("--state-dir", type=Path, help="default: $BRIDGELAB_STATE_DIR/<lab> or /run/bridgelab/<lab>")
    s.add_argument("--shutdown-timeout", type=float, default=30.0)
    s.add_argument("--token-file", type=Path, help="default: $BRIDGELAB_STATE_DIR/api-token (created on first start)")
    s.add_argument("--fresh", action="store_true", help="start from the lab file, ignoring runtime changes "
                                                          "recorded by an earlier run")
    s.set_defaults(fn=cmd_serve)

    v = sub.add_parser("validate", help="check a lab file and print the resolved plan")
    v.add_argument("--lab", type=Path, required=True)
    v.add_argument("--state-dir", type=Path)
    v.set_defaults(fn=cmd_validate)

    def api_command(name: str, fn: Any, helptext: str) -> argparse.ArgumentParser:
        c = sub.add_parser(name, help=helptext)
        c.add_argument("--api", default=api_default, help="HOST:PORT, URL or unix:/path (default: $BRIDGELAB_API "
                                                          "or %(default)s)")
        c.add_argument("--token-file", type=Path, help="default: $BRIDGELAB_TOKEN, else the daemon's token file")
        c.set_defaults(fn=fn)
        return c

    api_command("status", cmd_status, "show the guests (exit 0 when all are ready)").add_argument(
        "--json", action="store_true")
    api_command("down", cmd_down, "stop the daemon: guests power off, host objects go").add_argument(
        "--timeout", type=float, default=120.0)
    w = api_command("wait", cmd_wait, "wait until a guest (or all) is ready; exit 1 if one failed, 124 on timeout")
    w.add_argument("name", nargs="?")
    w.add_argument("--timeout", type=float, default=900.0)
    e = api_command("exec", cmd_exec, "run a command in a guest; exits with its exit code (124 on timeout)")
    e.add_argument("name")
    e.epilog = "usage: bridgelab exec NAME [--timeout S] -- COMMAND [ARG...]"
    e.add_argument("--timeout", type=float, default=60.0)
    e.add_argument("--max-output", type=int, default=1 << 20)
    a = api_command("add", cmd_add, "add a guest to the running lab")
    a.add_argument("name")
    a.add_argument("--image", required=True)
    a.add_argument("--arch", default="riscv64")
    a.add_argument("--cpus", type=int, default=1)
    a.add_argument("--memory", default="1G")
    a.add_argument("--ip")
    a.add_argument("--mac")
    a.add_argument("--wait", type=float, metavar="SECONDS", help="then wait for it, up to SECONDS")
    for verb, method, suffix, helptext in (("remove", "DELETE", "", "power a guest down and remove it"),
                                           ("stop", "POST", "/stop", "power a guest down, keep it"),
                                           ("start", "POST", "/start", "boot a stopped guest again"),
                                           ("reboot", "POST", "/reboot", "reboot a guest through its shell")):
        c = api_command(verb, _guest_action(method, suffix), helptext)
        c.add_argument("name")
        c.add_argument("--timeout", type=float, default=900.0)
    api_command("mesh", cmd_mesh, "ping every pair of guests now; explain failures")
    co = api_command("console", cmd_console, "attach to a guest's live serial console")
    co.add_argument("name")
    co.add_argument("--write", action="store_true", help="send keystrokes (only while no automation runs)")
    lg = api_command("logs", cmd_logs, "the tail of a guest's serial console")
    lg.add_argument("name")
    lg.add_argument("-n", "--lines", type=int, default=100)

    cl = sub.add_parser("cleanup", help="remove what a dead daemon left on this host (links, rules, routes, "
                                        "sysctls, processes); exit 0 when nothing is left")
    which = cl.add_mutually_exclusive_group(required=True)
    which.add_argument("--lab", metavar="NAME|FILE", help="one lab, by name or lab file")
    which.add_argument("--all", action="store_true", help="every lab on this host whose daemon is not running")
    cl.add_argument("--state-dir", type=Path, help="with --lab: its state directory (default: "
                                                    "$BRIDGELAB_STATE_DIR/<lab> or /run/bridgelab/<lab>)")
    cl.set_defaults(fn=cmd_cleanup)
    pf = sub.add_parser("preflight", help="check that this host can run a lab, before anything is created")
    pf.set_defaults(fn=cmd_preflight)

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
    argv = list(sys.argv[1:] if argv is None else argv)
    # Everything after the first `--` is the guest command, untouched by argparse.
    command = argv[argv.index("--") + 1:] if "--" in argv else []
    try:
        env = current()
    except SettingsError as e:
        print(f"bridgelab: {e}", file=sys.stderr)
        return EXIT_INVALID
    args = parser(env).parse_args(argv[:argv.index("--")] if "--" in argv else argv)
    args.argv = command
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    try:
        return int(args.fn(args))
    except SpecError as e:
        print("bridgelab: invalid lab, nothing was created:", file=sys.stderr)
        for issue in e.issues:
            print(f"  {issue}", file=sys.stderr)
        return EXIT_INVALID
    except APIError as e:
        print(f"bridgelab: {e}", file=sys.stderr)
        return EXIT_INVALID if e.status == 422 else 1
    except BridgelabError as e:
        print(f"bridgelab: {e}", file=sys.stderr)
        return 1
    except httpx.HTTPError as e:
        print(f"bridgelab: API error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
