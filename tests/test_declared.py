"""The declared state: tied to the lab file it grew from, never half-written."""

from __future__ import annotations

import json

from bridgelab.model import declared
from bridgelab.model.spec import load_lab_text

LAB = "name: t\nbridge: {address: 10.0.0.1/24}\nguests:\n  - {name: a, image: x}\n  - {name: b, image: x}\n"


def test_declared_state_resumes_only_for_the_same_lab_file(tmp_path):
    lab = load_lab_text(LAB)
    source = declared.source_hash(LAB)
    declared.save(tmp_path, source, lab, {"b", "gone"})
    found = declared.load(tmp_path, source)
    assert found is not None and found.lab == lab
    assert found.stopped == {"b"}  # names no longer in the lab are dropped
    assert declared.load(tmp_path, declared.source_hash(LAB + "# edited\n")) is None
    assert not list(tmp_path.glob("*.tmp"))


def test_unreadable_or_invalid_declared_state_is_ignored(tmp_path):
    source = declared.source_hash(LAB)
    (tmp_path / declared.FILE).write_text("{not json")
    assert declared.load(tmp_path, source) is None
    (tmp_path / declared.FILE).write_text(json.dumps({"source": source, "lab": {"guests": "nope"}}))
    assert declared.load(tmp_path, source) is None
    assert declared.load(tmp_path / "missing", source) is None
