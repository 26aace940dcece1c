"""Persistent taps through /dev/net/tun, as `ip tuntap add` makes them.

pyroute2 does the same ioctls, with about a millisecond of its request
machinery around each tap; for a lab of many guests that was most of the
host setup (bench/hostnet.py). The kernel has no netlink call that creates
a tap, so this is the whole of it: TUNSETIFF, then TUNSETPERSIST.
"""

from __future__ import annotations

import errno
import fcntl
import os
import struct

from ..errors import HostNetError

TUNSETIFF = 0x400454CA
TUNSETPERSIST = 0x400454CB
IFF_TAP = 0x0002
IFF_NO_PI = 0x1000
IFF_TUN_EXCL = 0x8000  # fail if the name exists: never adopt somebody else's tap
IFNAMSIZ = 16


def create_tap(ifname: str) -> None:
    """A new persistent tap named ifname, down and unattached; HostNetError
    when the kernel refuses (the name taken, no /dev/net/tun, no permission)."""
    try:
        fd = os.open("/dev/net/tun", os.O_RDWR | os.O_CLOEXEC)
    except OSError as e:
        hint = "; is /dev/net/tun present (modprobe tun)?" if e.errno == errno.ENOENT else ""
        raise HostNetError(f"cannot create tap {ifname}: {e.strerror}{hint}") from None
    try:
        fcntl.ioctl(fd, TUNSETIFF, struct.pack(f"{IFNAMSIZ}sH", ifname.encode(), IFF_TAP | IFF_NO_PI | IFF_TUN_EXCL))
        fcntl.ioctl(fd, TUNSETPERSIST, 1)
    except OSError as e:
        raise HostNetError(f"cannot create tap {ifname}: {e.strerror}") from None
    finally:
        os.close(fd)


__all__ = ["create_tap"]
