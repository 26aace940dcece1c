"""Every BRIDGELAB_* variable is a field of the one Settings class, which
the table in docs/appliance.md is generated from; the appliance uses the same names."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from bridgelab.errors import SettingsError
from bridgelab.settings import IptablesBackend, Settings, current, markdown_table

ROOT = Path(__file__).parent.parent
NAME = re.compile(r"BRIDGELAB_[A-Z_]+")


def test_the_readme_table_is_the_generated_one():
    assert markdown_table() in (ROOT / "docs" / "appliance.md").read_text()


def test_every_variable_the_code_and_the_appliance_read_is_a_setting():
    fields = {f"BRIDGELAB_{n.upper()}" for n in Settings.model_fields}
    files = [ROOT / "compose.yaml", ROOT / "entrypoint.sh", ROOT / "Dockerfile", *sorted((ROOT / "app").rglob("*.py"))]
    used = {m: f.name for f in files for m in NAME.findall(f.read_text())}
    assert {m: f for m, f in used.items() if m not in fields} == {}


def test_empty_counts_as_unset_and_values_are_typed(monkeypatch):
    monkeypatch.setenv("BRIDGELAB_TOKEN", "")
    monkeypatch.setenv("BRIDGELAB_IPTABLES", "legacy")
    monkeypatch.setenv("BRIDGELAB_STATE_DIR", "/tmp/x")
    s = current()
    assert s.token is None and s.iptables is IptablesBackend.legacy and s.state_dir == Path("/tmp/x")


def test_a_bad_value_is_a_clear_error_before_anything_runs(monkeypatch):
    monkeypatch.setenv("BRIDGELAB_IPTABLES", "iptables-nft")
    with pytest.raises(SettingsError, match=r"\$BRIDGELAB_IPTABLES: Input should be 'nft' or 'legacy'"):
        current()
    env = {k: v for k, v in os.environ.items() if not k.startswith("BRIDGELAB_")}
    p = subprocess.run([sys.executable, "-m", "bridgelab.cli", "status"], capture_output=True, text=True,
                       env={**env, "BRIDGELAB_IPTABLES": "iptables-nft"})
    assert p.returncode == 2 and "BRIDGELAB_IPTABLES" in p.stderr and "Traceback" not in p.stderr, p.stderr


def test_the_version_is_written_once_in_pyproject():
    import tomllib

    import bridgelab
    from bridgelab.api import app

    declared = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    assert bridgelab.__version__ == declared
    assert "version=__version__" in Path(app.__file__).read_text()
