"""The HTTP-client commands (status, wait, exec, add, network, reboot, stop, start,
remove, mesh, logs) and the raw-tty console attach."""

from __future__ import annotations

import argparse
import os
import re
import sys
import time
from pathlib import Path
from typing import Any

import httpx

from ..api.auth import TOKEN_ENV, client_token, default_token_file, env_token
from ..errors import BridgelabError
from ..lab.states import SETTLED, GuestState
from .exits import EXIT_INVALID, EXIT_TIMEOUT
from .output import as_json, emit

# Where compose.yaml's state volume holds the token (BRIDGELAB_STATE_DIR in the Dockerfile).
CONTAINER_TOKEN_FILE = "/var/lib/bridgelab/state/api-token"


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


class NoDaemon(BridgelabError):
    """Nothing answers at the API address: said once, with where and what next."""

    def __init__(self, api: str, why: object):
        reason = re.sub(r"^\[Errno \d+\] ", "", str(why)) or type(why).__name__
        super().__init__(f"no bridgelab daemon answers at {api} ({reason}). Start one with `bridgelab serve` "
                         "(it reads ./lab.yaml) or `docker compose up -d`, or point --api or $BRIDGELAB_API at "
                         "the one that runs")


def unauthorized_hint(token_file: Path | None) -> str:
    """After a 401: where the token is, on the host and in the appliance."""
    path = token_file or default_token_file()
    if env_token():
        mine = f"${TOKEN_ENV} is set, but the daemon has another token"
    elif os.access(path, os.R_OK):
        mine = f"{path} was sent, but the daemon has another token"
    else:
        mine = f"no token was sent: {path} is not readable here" + ("" if os.geteuid() == 0 else " (try sudo)")
    return (f"{mine}. The daemon's token is in the api-token file of its state directory: {default_token_file()} "
            f"on its host, or in the appliance `docker compose exec bridgelab cat {CONTAINER_TOKEN_FILE}`. "
            f"Pass it with --token-file FILE or ${TOKEN_ENV}")


def guest_names(prefix: str, parsed_args: argparse.Namespace, **_: Any) -> list[str]:
    """Shell completion of guest names, from the daemon (nothing when none answers)."""
    try:
        with client(parsed_args, timeout=2.0) as c:
            return [g["name"] for g in c.get("/guests").json() if g["name"].startswith(prefix)]
    except (httpx.HTTPError, ValueError, KeyError, TypeError):
        return []


def cmd_status(args: argparse.Namespace) -> int:
    with client(args) as c:
        guests: list[dict[str, Any]] = checked(c.get("/guests"))
    emit(args.format, guests, ("NAME", "STATE", "IP", "MAC", "TAP", "SSH", "REASON"),
         [(g["name"], g["state"], g["ip"], g["mac"], g["tap"], g.get("ssh") or "-", g["reason"] or "")
          for g in guests])
    return 0 if all(g["state"] == GuestState.ready for g in guests) else 1


def cmd_peers(args: argparse.Namespace) -> int:
    """The lab's other hosts: exit 0 when every one answers and none clashes."""
    with client(args) as c:
        peers: list[dict[str, Any]] = checked(c.get("/peers"))
    emit(args.format, peers, ("PEER", "STATE", "LAB", "BRIDGE", "GUESTS", "DETAIL"), [peer_row(p) for p in peers])
    return 0 if all(p["state"] == "up" and not p["clashes"] for p in peers) else 1


def peer_row(p: dict[str, Any]) -> tuple[str, ...]:
    d = p["declaration"] or {}
    guests = ", ".join(f"{g['name']} {g['ip']} ({g['state']})" for g in d.get("guests", [])) or "-"
    detail = "; ".join(p["clashes"]) if p["clashes"] else ("" if p["state"] == "up" else p["detail"])
    return (p["address"], p["state"], d.get("lab", "-"), d.get("bridge", "-"), guests, detail)


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


def cmd_wait(args: argparse.Namespace) -> int:
    """Long-poll in slices, printing each stage as it is reached (stderr)."""
    path = f"/guests/{args.name}/wait" if args.name else "/wait"
    deadline = time.monotonic() + args.timeout
    shown: set[tuple[str, str]] = set()
    shown_builds: set[str] = set()
    with client(args, timeout=None) as c:  # type: ignore[arg-type]
        while True:
            slice_s = max(0.0, min(10.0, deadline - time.monotonic()))
            try:
                r = c.get(path, params={"timeout": slice_s})
            except (httpx.RemoteProtocolError, httpx.ReadError):
                # A first start's build API hands the socket to the lab's:
                # a kept-alive connection to it may be reset; ask again.
                time.sleep(0.5)
                continue
            body = r.json() if r.status_code == 504 else checked(r)
            if (build := body.get("build")) and (line := build_line(build)) not in shown_builds:
                shown_builds.add(line)
                print(line, file=sys.stderr)
            for g in body["guests"]:
                for stage, _at in sorted(g["stages"].items(), key=lambda kv: kv[1]):
                    if (g["name"], stage) not in shown:
                        shown.add((g["name"], stage))
                        print(f"{g['name']}: {stage}", file=sys.stderr)
            if body["settled"] or time.monotonic() >= deadline:
                break
    for f in body["failed"]:
        print(f"bridgelab: {f['name']} failed: {f['reason']}\n{f['console_tail']}", file=sys.stderr)
    if args.format == "json":
        print(as_json(body))
    if not body["settled"]:
        waiting = [g["name"] + " (" + g["state"] + ")" for g in body["guests"]
                   if g["state"] not in SETTLED]
        print(f"bridgelab: timed out after {args.timeout:.0f}s waiting for {', '.join(waiting)}", file=sys.stderr)
        return EXIT_TIMEOUT
    if args.format == "table":
        print(" ".join(f"{g['name']}={g['ip']}" for g in body["guests"] if g["state"] == GuestState.ready))
    return 1 if body["failed"] else 0


def build_line(build: dict[str, Any]) -> str:
    """A first start's image build, as `wait` shows it: the phase, and the
    percent in steps of 10 (one line per step, not per package)."""
    percent = build.get("percent")
    step = f" {int(percent // 10 * 10)}%" if percent is not None else ""
    return f"building image {build['image']}: {build['phase']}{step}"


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


def guest_action(method: str, suffix: str) -> Any:
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
    emit(args.format, report, ("RESULT", "SOURCE", "TARGET", "IP", "LAYER", "DETAIL"), mesh_rows(report))
    return 0 if report["ok"] else 1


def mesh_rows(report: dict[str, Any]) -> list[tuple[str, ...]]:
    def row(p: dict[str, Any], target: str, ip: str, layer: str) -> tuple[str, ...]:
        return ("ok" if p["ok"] else "FAIL", p["source"], target, ip, layer, "" if p["ok"] else p["detail"])
    rows = [row(p, p["target"], p["target_ip"], p["diagnosis"]) for p in report["pairs"]]
    rows += [row(p, "uplink", p["target"], p["layer"]) for p in report.get("uplink", [])]
    rows += [("skip", name, "-", "-", "-", "not ready") for name in report["skipped"]]
    return rows


DETACH = b"\x1d"  # Ctrl-], as telnet and virsh console


def cmd_console(args: argparse.Namespace) -> int:
    """A guest's console for people (hvc0, its own getty, with echo), or with
    --serial the serial console bridgelab automates (read-only unless --write)."""
    import threading

    from websockets.exceptions import ConnectionClosed
    from websockets.sync.client import connect, unix_connect

    token = client_token(args.token_file)
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    if args.serial:
        path = f"/guests/{args.name}/console/attach" + ("?write=true" if args.write else "")
    else:
        path = f"/guests/{args.name}/terminal"
    interactive = args.write or not args.serial
    api: str = args.api
    try:
        if api.startswith("unix:"):
            ws = unix_connect(api[5:], f"ws://bridgelab{path}", additional_headers=headers)
        else:
            base = api.split("://", 1)[-1].rstrip("/")
            ws = connect(f"{'wss' if api.startswith('https') else 'ws'}://{base}{path}", additional_headers=headers)
    except (ConnectionRefusedError, FileNotFoundError) as e:
        raise NoDaemon(api, e) from None
    print(f"bridgelab: attached to {args.name}" + (" (Ctrl-] detaches)" if interactive else " (read-only; Ctrl-C)"),
          file=sys.stderr)

    last_output = [time.monotonic()]

    def show() -> None:
        try:
            for data in ws:
                last_output[0] = time.monotonic()
                sys.stdout.buffer.write(data if isinstance(data, bytes) else data.encode())
                sys.stdout.buffer.flush()
        except ConnectionClosed:
            pass
    reader = threading.Thread(target=show, daemon=True)
    reader.start()
    try:
        if not args.serial:
            ws.send(b"\r")  # a getty prints its prompt once: Enter brings it back
        if interactive and sys.stdin.isatty():
            _type_raw(ws)
        elif interactive:
            _type_piped(ws, last_output)
        else:
            reader.join()
    except KeyboardInterrupt:
        pass
    finally:
        ws.close()
    return 0


# Piped input goes a line at a time, each once the guest has been quiet: a
# login turns echo off with TCSAFLUSH before the password, which drops
# whatever was typed ahead.
QUIET = 1.0
LINE_WAIT = 30.0


def _type_piped(ws: Any, last_output: list[float]) -> None:
    def settle() -> None:
        deadline = time.monotonic() + LINE_WAIT
        while time.monotonic() < deadline and time.monotonic() - last_output[0] < QUIET:
            time.sleep(0.1)
    settle()
    for line in sys.stdin.buffer:
        ws.send(line.rstrip(b"\r\n") + b"\r")
        last_output[0] = time.monotonic()
        settle()


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
