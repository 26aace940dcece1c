"""Where bridgelab keeps its state on this host (one definition for every command)."""

from __future__ import annotations

import os
from pathlib import Path

STATE_DIR_ENV = "BRIDGELAB_STATE_DIR"
DEFAULT_STATE_ROOT = Path("/run/bridgelab")


def state_root() -> Path:
    """Every lab's state directory lives under here by default (`<root>/<lab>`),
    and the API token file too: $BRIDGELAB_STATE_DIR, else /run/bridgelab."""
    return Path(os.environ.get(STATE_DIR_ENV) or DEFAULT_STATE_ROOT)


def lab_state_dir(lab: str) -> Path:
    return state_root() / lab
