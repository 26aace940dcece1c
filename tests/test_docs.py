"""The commands the docs show still exist: every concrete `bridgelab ...`
line in a shell block of README.md and docs/*.md parses with the CLI's own
parser (synopsis lines, with [optional] or a|b parts, are for reading)."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
from bridgelab.cli.main import parser
from bridgelab.settings import current

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
_BLOCK = re.compile(r"```(?:sh|bash|console)\n(.*?)```", re.S)
_SYNOPSIS = re.compile(r"[\[\]|()]|\.\.\.|\bNAME\b|\bGUEST\b")


def doc_commands() -> list[tuple[str, list[str]]]:
    found = []
    for doc in DOCS:
        for block in _BLOCK.findall(doc.read_text()):
            for line in block.replace("\\\n", " ").splitlines():
                lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
                lexer.whitespace_split = True
                try:
                    words = list(lexer)
                except ValueError:
                    continue
                for command in _commands(words):
                    found.append((f"{doc.relative_to(ROOT)}: {line.strip()}", command))
    return found


def _commands(words: list[str]) -> list[list[str]]:
    """The bridgelab invocations on one line: after `;`/`&&`, up to a redirect,
    and inside `docker compose exec [-T] bridgelab ...`."""
    out: list[list[str]] = []
    current_cmd: list[str] = []
    for w in [*words, ";"]:
        if w in (";", "&&", "||"):
            if current_cmd:
                out.append(current_cmd)
            current_cmd = []
        else:
            current_cmd.append(w)
    commands = []
    for cmd in out:
        cmd = cmd[:next((i for i, w in enumerate(cmd) if w in (">", "|", ">>")), len(cmd))]
        while cmd[:1] == ["sudo"]:
            cmd = cmd[1:]
        if cmd[:3] in (["docker", "compose", "exec"], ["docker-compose", "exec", "-T"]) or cmd[:2] == [
                "docker-compose", "exec"]:
            cmd = [w for w in cmd if w not in ("-T",)]
            cmd = cmd[cmd.index("bridgelab") + 1:] if "bridgelab" in cmd else []
        if cmd[:1] == ["bridgelab"] and len(cmd) > 1:
            commands.append(cmd[1:])
    return commands


def test_the_docs_show_enough_commands_to_check() -> None:
    concrete = [c for _, c in doc_commands() if not _SYNOPSIS.search(" ".join(c))]
    assert len(concrete) >= 15, concrete


@pytest.mark.parametrize("where, argv", [(w, c) for w, c in doc_commands()
                                         if not _SYNOPSIS.search(" ".join(c))])
def test_a_command_in_the_docs_parses(where: str, argv: list[str]) -> None:
    options = argv[:argv.index("--")] if "--" in argv else argv  # as main(): the rest is the guest's
    try:
        parser(current()).parse_args(options)
    except SystemExit as e:
        pytest.fail(f"{where}: the CLI refuses {argv} (exit {e.code})")
