"""What a snapshot is valid for: everything that, if changed, makes restoring
it wrong. Pure, apart from asking a qemu binary its version once.

A snapshot stays valid while all of these are unchanged:
- the qemu binary and its version (device state formats change between them);
- the machine and device arguments, paths aside (state for another device
  model cannot be loaded);
- the image (the overlay's backing disk must be the one the snapshot was
  taken on);
- the MAC, the address, prefix, gateway and DNS, and the login (the guest in
  the snapshot was configured with them).
"""

from __future__ import annotations

import functools
import hashlib
import shutil

from .. import proc
from ..errors import CommandFailed
from ..model.plan import GuestPlan
from . import qemu_argv

Key = dict[str, str]


@functools.cache
def qemu_version(binary: str) -> str:
    path = shutil.which(binary) or binary
    try:
        first = proc.run([path, "--version"], timeout=10).stdout.splitlines()[:1]
    except CommandFailed as e:
        return f"{path}: unknown version ({e})"
    return f"{path} {first[0] if first else '?'}"


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def machine_args(g: GuestPlan) -> list[str]:
    """The qemu argv with the guest's own files and the image's named, not located."""
    argv = qemu_argv.argv(g)
    places = {str(g.paths.dir): "<guest>"}
    for f in (g.image.disk, g.image.kernel, g.image.initrd, g.image.firmware, g.image.payload):
        if f is not None:
            places[str(f)] = f"<image>/{f.name}"
    out = []
    for a in argv[1:]:
        for path, name in places.items():
            a = a.replace(path, name)
        out.append(a)
    return out


def image_fingerprint(g: GuestPlan) -> str:
    """The image's manifest (as resolved) and its disk file's size and mtime."""
    try:
        disk = g.image.disk.stat()
        identity = f"{disk.st_size}:{disk.st_mtime_ns}"
    except OSError:
        identity = "missing"
    return f"{g.image.name} {_digest(g.image.model_dump_json() + identity)}"


def key(g: GuestPlan) -> Key:
    net = f"{g.ip} gateway {g.gateway or '-'} dns {','.join(map(str, g.dns)) or '-'}"
    if g.mtu:  # only when set, so that snapshots kept before MTUs existed stay valid
        net += f" mtu {g.mtu}"
    return {
        "qemu": qemu_version(qemu_argv.ARCHES[g.arch].binary),
        "machine": _digest("\0".join(machine_args(g))),
        "image": image_fingerprint(g),
        "mac": g.mac,
        "network": net,
        "login": f"{g.login.user} {_digest(g.login.password)}",
    }


def mismatch(saved: Key, now: Key) -> str | None:
    """Which fields changed, for the log line that explains a cold boot."""
    changed = [f for f in sorted(set(saved) | set(now)) if saved.get(f) != now.get(f)]
    if not changed:
        return None
    return ", ".join(f"{f} ({saved.get(f, '-')} -> {now.get(f, '-')})" if f in ("mac", "network")
                     else f for f in changed)


__all__ = ["Key", "image_fingerprint", "key", "machine_args", "mismatch", "qemu_version"]
