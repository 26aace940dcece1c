"""The code's own checks: types (mypy over app/, tests/ and bench/, with pydantic's plugin; settings in
pyproject.toml) and lint (ruff). A wrong field name on a ledger entry or a
request model fails here, in seconds, instead of in a VM test."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _run(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", *argv], cwd=ROOT, capture_output=True, text=True, timeout=600)


def test_the_package_type_checks():
    r = _run("mypy", "--cache-dir", str(ROOT / ".mypy_cache"))
    assert r.returncode == 0, r.stdout + r.stderr


def test_the_code_is_lint_clean():
    r = _run("ruff", "check", "app", "tests", "bench")
    assert r.returncode == 0, r.stdout + r.stderr
