"""Command line: `serve` runs the daemon; the rest are thin API clients or tools."""
# PYTHON_ARGCOMPLETE_OK  (argcomplete's global completion looks for this line)

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any

import argcomplete
import httpx

from .. import __version__
from ..errors import BridgelabError, SettingsError, SpecError
from ..settings import Settings, current
from .client import (
    APIError,
    NoDaemon,
    cmd_add,
    cmd_console,
    cmd_down,
    cmd_exec,
    cmd_logs,
    cmd_mesh,
    cmd_peers,
    cmd_status,
    cmd_wait,
    guest_action,
    guest_names,
    unauthorized_hint,
)
from .daemon import cmd_serve
from .inventory import cmd_inventory
from .exits import EXIT_INVALID, EXIT_NO_DAEMON
from .output import add_format
from . import image, snapshot
from .tools import cmd_cleanup, cmd_preflight, cmd_validate

log = logging.getLogger("bridgelab")
DEFAULT_LISTEN = "127.0.0.1:8700"
DEFAULT_LAB = Path("lab.yaml")


def parser(env: Settings) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="bridgelab", description=__doc__)
    p.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    p.add_argument("--log-level", default=env.log)
    # --api and --token-file go before or after the subcommand, as with docker -H.
    p.add_argument("--api", default=env.api, help="HOST:PORT, URL or unix:/path (default: $BRIDGELAB_API or "
                                                 "%(default)s)")
    p.add_argument("--token-file", type=Path, help="default: $BRIDGELAB_TOKEN, else the daemon's token file")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("serve", help="build the network, boot and configure the guests, serve the API")
    s.add_argument("--lab", type=Path, default=DEFAULT_LAB, help="the lab file (default ./%(default)s)")
    s.add_argument("--listen", default=DEFAULT_LISTEN, help="HOST:PORT or unix:/path (default %(default)s)")
    s.add_argument("--state-dir", type=Path, help="default: $BRIDGELAB_STATE_DIR/<lab> or /run/bridgelab/<lab>")
    s.add_argument("--shutdown-timeout", type=float, default=30.0)
    s.add_argument("--token-file", type=Path, default=argparse.SUPPRESS,
                   help="default: $BRIDGELAB_STATE_DIR/api-token (created on first start)")
    s.add_argument("--fresh", action="store_true", help="start from the lab file, ignoring runtime changes "
                                                          "recorded by an earlier run")
    s.add_argument("--cold", action="store_true", help="boot every guest, even one with a valid ready snapshot")
    s.add_argument("--build-missing", action="store_true",
                   help="build the recipe images the lab needs and lacks, with the API answering meanwhile "
                        "(progress on /healthz and `bridgelab wait`), then start the lab")
    s.set_defaults(fn=cmd_serve)

    v = sub.add_parser("validate", help="check a lab file and print the resolved plan")
    v.add_argument("--lab", type=Path, default=DEFAULT_LAB, help="the lab file (default ./%(default)s)")
    v.add_argument("--state-dir", type=Path)
    add_format(v)
    v.set_defaults(fn=cmd_validate)

    def api_command(name: str, fn: Any, helptext: str) -> argparse.ArgumentParser:
        c = sub.add_parser(name, help=helptext)
        c.add_argument("--api", default=argparse.SUPPRESS, help="as before the subcommand")
        c.add_argument("--token-file", type=Path, default=argparse.SUPPRESS, help="as before the subcommand")
        c.set_defaults(fn=fn)
        return c

    def guest_arg(c: argparse.ArgumentParser, **kw: Any) -> None:
        c.add_argument("name", **kw).completer = guest_names  # type: ignore[attr-defined]

    add_format(api_command("status", cmd_status, "show the guests (exit 0 when all are ready)"))
    api_command("down", cmd_down, "stop the daemon: guests power off, host objects go").add_argument(
        "--timeout", type=float, default=120.0)
    w = api_command("wait", cmd_wait, "wait until a guest (or all) is ready; exit 1 if one failed, 124 on timeout")
    guest_arg(w, nargs="?")
    w.add_argument("--timeout", type=float, default=900.0)
    add_format(w)
    e = api_command("exec", cmd_exec, "run a command in a guest; exits with its exit code (124 on timeout)")
    guest_arg(e)
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
        c = api_command(verb, guest_action(method, suffix), helptext)
        guest_arg(c)
        c.add_argument("--timeout", type=float, default=900.0)
    add_format(api_command("mesh", cmd_mesh, "ping every pair of guests now; explain failures"))
    add_format(api_command("peers", cmd_peers, "the lab's other hosts (peers): whether each answers, its guests, "
                                               "any clash (exit 0 when all answer and none clashes)"))
    inv = api_command("inventory", cmd_inventory, "the guests with an ssh NIC, as an Ansible inventory or an "
                                                  "ssh_config (ssh -F FILE NAME)")
    inv.add_argument("--format", choices=("ansible", "ssh-config"), default="ansible")
    co = api_command("console", cmd_console, "log in on a guest's console (its own, with echo; Ctrl-] detaches), "
                                             "or watch the serial console bridgelab automates (--serial)")
    guest_arg(co)
    co.add_argument("--serial", action="store_true", help="the automation's serial console, read-only")
    co.add_argument("--write", action="store_true", help="with --serial: send keystrokes (only while no "
                                                         "automation runs)")
    snapshot.add_arguments(api_command("snapshot", snapshot.cmd_snapshot,
                                       "save, restore, list or remove snapshots of running guests"))
    lg = api_command("logs", cmd_logs, "the tail of a guest's serial console")
    guest_arg(lg)
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

    image.add_parsers(sub)
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
    p = parser(env)
    argcomplete.autocomplete(p)  # returns only when the shell is not asking for completions
    args = p.parse_args(argv[:argv.index("--")] if "--" in argv else argv)
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
        if e.status == 401:
            print(f"bridgelab: {unauthorized_hint(args.token_file)}", file=sys.stderr)
        return EXIT_INVALID if e.status == 422 else 1
    except NoDaemon as e:
        print(f"bridgelab: {e}", file=sys.stderr)
        return EXIT_NO_DAEMON
    except httpx.ConnectError as e:
        print(f"bridgelab: {NoDaemon(args.api, e)}", file=sys.stderr)
        return EXIT_NO_DAEMON
    except BridgelabError as e:
        print(f"bridgelab: {e}", file=sys.stderr)
        return 1
    except httpx.HTTPError as e:
        print(f"bridgelab: API error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
