"""What must hold on the host before bridgelab creates anything on it.

The iptables lock. iptables-legacy serialises every change through an flock
on /run/xtables.lock (or $XTABLES_LOCKFILE), a file it creates on first use.
A container shares the host's lock through the host's /run, mounted at
/host/run: a directory that always exists, so the bind mount can never create
anything (Docker makes a missing bind source a directory, and a directory at
/run/xtables.lock breaks every iptables-legacy command on the host).
bridgelab never deletes that path: it did not create it, and deleting a lock
file can let two holders in. It says how to repair it instead.
"""

from __future__ import annotations

import os
from pathlib import Path

from ..errors import HostNetError

XTABLES_LOCK = Path("/run/xtables.lock")
HOST_RUN = Path("/host/run")  # where compose.yaml mounts the host's /run


def xtables_lock() -> Path:
    return Path(os.environ.get("XTABLES_LOCKFILE") or XTABLES_LOCK)


def host_path(path: Path) -> Path:
    """The path as the host sees it (inside the container, /host/run is its /run)."""
    return Path("/run") / path.relative_to(HOST_RUN) if path.is_relative_to(HOST_RUN) else path


def xtables_lock_problem(path: Path) -> str | None:
    if path.is_dir():
        return (f"the iptables lock {host_path(path)} is a directory, not a file, so every iptables-legacy "
                "command on this host fails ('can't open lock file ... Is a directory'). A container bind mount "
                "of the missing file made it (Docker creates a missing bind source as a directory). "
                f"Repair it on the host with: sudo rmdir {host_path(path)}")
    if path.exists() and not path.is_file():
        return f"the iptables lock {host_path(path)} is not a regular file; move it away, then start again"
    if not path.parent.is_dir():
        hint = (" (mount the host's /run there, as compose.yaml does)" if path.is_relative_to(HOST_RUN) else "")
        return f"the iptables lock's directory {path.parent} does not exist{hint}"
    return None


def preflight() -> None:
    """Raise with every problem and its repair; nothing is created before this passes."""
    problems = [p for p in (xtables_lock_problem(xtables_lock()),) if p]
    if problems:
        raise HostNetError("\n".join(problems))


__all__ = ["HOST_RUN", "XTABLES_LOCK", "host_path", "preflight", "xtables_lock", "xtables_lock_problem"]
