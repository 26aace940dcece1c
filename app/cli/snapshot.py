"""`bridgelab snapshot save|restore|list|rm NAME [GUEST...]`: without guests,
the whole lab as one consistent state; with guests, each of them."""

from __future__ import annotations

import argparse
import re
import sys
import time
from typing import Any
from urllib.parse import quote

from ..api.schemas import GUEST_NAME_PATTERN, RESERVED_SNAPSHOT_PREFIX, SNAPSHOT_NAME_PATTERN
from .client import checked, client
from .exits import EXIT_INVALID
from .output import add_format, as_json, emit

ACTIONS = ("save", "restore", "list", "rm")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("action", choices=ACTIONS)
    p.add_argument("words", nargs="*", metavar="NAME [GUEST...]",
                   help="the snapshot's name (not for list), then guests (default: the whole lab)")
    add_format(p)
    p.epilog = ("save NAME [GUEST...] | restore NAME [GUEST...] | list [GUEST...] | rm NAME [GUEST...]; "
                "restore waits until the guests are verified again")


def cmd_snapshot(args: argparse.Namespace) -> int:
    words: list[str] = list(args.words)
    name = None if args.action == "list" else (words.pop(0) if words else None)
    problem = _problem(args.action, name, words)
    if problem:
        print(f"bridgelab snapshot: {problem}", file=sys.stderr)
        return EXIT_INVALID
    with client(args, timeout=900.0) as c:
        if args.action == "list":
            rows: list[dict[str, Any]] = []
            for path in _paths(words):
                rows += checked(c.get(path))
            return _show(rows, args.format)
        assert name is not None
        if args.action == "save":
            body = {"name": name}
            rows = [r for path in _paths(words) for r in checked(c.post(path, json=body))]
            return _show(rows, args.format)
        if args.action == "restore":
            t0 = time.monotonic()
            guests = [g for path in _paths(words) for g in checked(c.post(f"{path}/{quote(name)}/restore"))]
            if args.format == "json":
                print(as_json(guests))
            else:
                for g in guests:
                    print(f"{g['name']}: {g['state']}" + (f" ({g['reason']})" if g.get("reason") else ""))
            print(f"restored in {time.monotonic() - t0:.2f}s", file=sys.stderr)
            return 0 if all(g["state"] == "ready" for g in guests) else 1
        for path in _paths(words):
            checked(c.delete(f"{path}/{quote(name)}"))
        return 0


def _problem(action: str, name: str | None, guests: list[str]) -> str | None:
    if action != "list" and name is None:
        return f"{action} needs a snapshot name"
    if name is not None and (not re.match(SNAPSHOT_NAME_PATTERN, name) or name.startswith(RESERVED_SNAPSHOT_PREFIX)):
        return f"invalid snapshot name {name[:40]!r}: 1-32 of A-Z a-z 0-9 _ . -, not starting with bridgelab-"
    bad = [g for g in guests if not re.match(GUEST_NAME_PATTERN, g)]
    return f"invalid guest name {bad[0][:40]!r}" if bad else None


def _paths(guests: list[str]) -> list[str]:
    return [f"/guests/{g}/snapshots" for g in guests] if guests else ["/snapshots"]


def _show(rows: list[dict[str, Any]], fmt: str) -> int:
    def created(r: dict[str, Any]) -> str:
        return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(r["created"]))

    def save(r: dict[str, Any]) -> str:
        return f"{r['save_seconds']:.2f}s" if r.get("save_seconds") is not None else "-"
    emit(fmt, rows, ("GUEST", "NAME", "SIZE", "CREATED", "SAVE", "VALID"),
         [(r["guest"], r["name"], f"{r['size'] / 2**20:.1f}M", created(r), save(r),
           "yes" if r["valid"] else f"no: {r['invalid_because']}") for r in rows])
    return 0
