"""How list-like commands print: `--format table` (columns as wide as their
longest cell, like docker and kubectl) or `--format json` (the API's own
objects, for jq and scripts)."""

from __future__ import annotations

import argparse
import json
from typing import Any, Sequence

FORMATS = ("table", "json")
GAP = "  "


def add_format(p: argparse.ArgumentParser) -> None:
    p.add_argument("--format", choices=FORMATS, default="table", help="output format (default %(default)s)")
    # The flag status and snapshot list had first; kept so scripts keep working.
    p.add_argument("--json", dest="format", action="store_const", const="json", help=argparse.SUPPRESS)


def table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Left-aligned columns separated by two spaces; the last column is not
    padded (it holds free text such as a reason)."""
    widths = [max(len(str(r[i])) for r in (headers, *rows)) for i in range(len(headers))]
    lines = [GAP.join(str(c).ljust(w) for c, w in zip(r[:-1], widths[:-1], strict=True)) + GAP + str(r[-1])
             for r in (headers, *rows)]
    return "\n".join(line.rstrip() for line in lines)


def as_json(data: Any) -> str:
    return json.dumps(data, indent=2)


def emit(fmt: str, data: Any, headers: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    print(as_json(data) if fmt == "json" else table(headers, rows))


__all__ = ["FORMATS", "add_format", "as_json", "emit", "table"]
