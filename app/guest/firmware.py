"""Hands off the firmware: when a keystroke on the console could stop an
autoboot, and how a stopped one is resumed.

U-Boot (the riscv64 firmware chain: OpenSBI, then U-Boot, then extlinux)
counts down 2 s before it boots, and any byte that reaches the UART before
or during that countdown stops it at its `=>` prompt, where the guest then
waits for ever. A login's probe newline is such a byte: it goes out every
8 s without a match, and a reboot's shutdown puts the 2 s countdown at a
random point of that period, so some reboots were stopped. So the
console sends no probe from the moment a boot is on its way (connect before
`cont`, or a reboot that was asked for) until the boot is past the firmware
(a kernel or userspace marker), and a countdown that was stopped anyway (a
human typing, a byte that was queued in qemu's socket) is resumed once with
U-Boot's `boot`.
"""

from __future__ import annotations

import time
from typing import Callable

# Past the firmware: nothing that counts down reads the console any more.
PAST_FIRMWARE = frozenset({"kernel", "userspace"})
# A boot whose firmware prints no marker at all (SeaBIOS and OVMF print to
# the screen, not the serial port) must still get probes eventually; the
# firmware chain reaches "Starting kernel" in about 4 s under TCG, and this
# leaves room for eight guests on two cores.
HOLD_LIMIT = 180.0

# U-Boot's countdown, then its prompt: the autoboot was stopped. `[^=]`
# keeps the match inside the countdown line (the boot that follows a countdown
# that ran out prints "root=..." before anything that could look like "=> ").
UBOOT_STOPPED = r"Hit any key to stop autoboot:[^=]{0,200}=> "
UBOOT_RESUME = "boot"


class FirmwareGuard:
    """Whether a keystroke now is safe. Fed by the console's reader thread
    (`saw`) and by whoever asks the guest to reboot (`expect_reset`);
    plain attribute writes, so no lock is needed between the two."""

    def __init__(self, clock: Callable[[], float] = time.monotonic):
        self._clock = clock
        self._held_since: float | None = None

    def expect_reset(self) -> None:
        """A boot is on its way: a fresh qemu about to run, or a reboot asked for."""
        self._held_since = self._clock()

    def restored(self) -> None:
        """The guest was restored from a snapshot: it runs past its firmware already."""
        self._held_since = None

    def saw(self, stage: str) -> None:
        """A boot stage marker went by on the console (console_stream.BOOT_MARKERS)."""
        if stage == "firmware":
            self._held_since = self._clock()
        elif stage in PAST_FIRMWARE:
            self._held_since = None

    def keys_safe(self) -> bool:
        if self._held_since is None:
            return True
        if self._clock() - self._held_since > HOLD_LIMIT:
            self._held_since = None
            return True
        return False


__all__ = ["FirmwareGuard", "HOLD_LIMIT", "UBOOT_RESUME", "UBOOT_STOPPED"]
