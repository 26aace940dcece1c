"""The folders of app/ are layers: a module imports only from its own layer,
the layers below it, and the shared modules."""

from __future__ import annotations

import ast
from pathlib import Path

APP = Path(__file__).parent.parent / "app"
LAYERS = ["model", "host", "guest", "lab", "api", "cli"]  # bottom up
SHARED = {"errors", "proc", "settings"}
# (importing layer, imported layer): known upward imports, each with its reason.
ALLOWED_UP: set[tuple[str, str]] = set()  # none: the lab owns its request and report models


def layer_of(path: Path) -> str:
    rel = path.relative_to(APP)
    return rel.parts[0] if len(rel.parts) > 1 else rel.stem


def imported_layers(path: Path) -> set[str]:
    """Layers named by the module's relative imports (bridgelab-internal)."""
    own = layer_of(path)
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if not isinstance(node, ast.ImportFrom) or node.level == 0:
            continue
        top_level = len(path.relative_to(APP).parts) == 1
        if node.level == 1 and not top_level:
            out.add(own)
        elif node.module:
            out.add(node.module.split(".")[0])
        else:  # `from .. import x`: x is a module of the package root, or its __version__
            out.update(a.name for a in node.names if not a.name.startswith("__"))
    return out


def test_every_module_lives_in_a_layer_or_is_shared():
    stray = [p.name for p in APP.glob("*.py") if p.stem not in SHARED | {"__init__"}]
    assert not stray, f"modules outside the layer folders: {stray}"
    assert sorted(p.name for p in APP.iterdir() if p.is_dir() and p.name != "__pycache__") == sorted(LAYERS)


def test_no_module_imports_a_layer_above_its_own():
    upward = []
    for path in sorted(APP.rglob("*.py")):
        own = layer_of(path)
        for other in imported_layers(path) - SHARED - {own}:
            assert other in LAYERS, f"{path}: imports unknown {other}"
            if own in SHARED or LAYERS.index(other) > LAYERS.index(own):
                if (own, other) not in ALLOWED_UP:
                    upward.append(f"{path.relative_to(APP)} imports {other}")
    assert not upward, upward


def test_the_shared_modules_import_only_each_other():
    for name in SHARED:
        assert imported_layers(APP / f"{name}.py") <= SHARED
