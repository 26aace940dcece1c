"""Deadlines that follow the host's load.

A boot deadline in wall-clock seconds fails guests only because the host is
busy: with 8 riscv64 guests on 2 cores under TCG each gets a quarter of a
core, and a login prompt that takes 35 s alone takes minutes. Here time
counts at full speed while the host has a core for every runnable task, and
proportionally slower when it is oversubscribed (the 1-minute load average
over the cores). A guest that is truly stuck still runs out of time: even on
a host loaded 8 times over its deadline arrives, 8 times later.
"""

from __future__ import annotations

import os
import time
from typing import Callable


def host_load() -> float:
    """Runnable tasks per core (1-minute load average / cores)."""
    return os.getloadavg()[0] / (os.cpu_count() or 1)


class PacedDeadline:
    def __init__(self, seconds: float, load: Callable[[], float] = host_load,
                 clock: Callable[[], float] = time.monotonic):
        self.budget = seconds
        self._load = load
        self._clock = clock
        self._last = clock()
        self._used = 0.0
        self._slowest = 1.0

    def _advance(self) -> float:
        """The time used so far, in paced seconds; returns the current pace."""
        now = self._clock()
        pace = max(1.0, self._load())
        self._slowest = max(self._slowest, pace)
        self._used += (now - self._last) / pace
        self._last = now
        return pace

    def remaining(self) -> float:
        """Wall-clock seconds left at the current pace (<= 0 when out of time)."""
        pace = self._advance()
        return (self.budget - self._used) * pace

    def describe(self) -> str:
        """For the error a user reads: the budget, and how the load stretched it."""
        stretched = f", stretched by a host load of up to {self._slowest:.1f}x its cores" if self._slowest > 1 else ""
        return f"{self.budget:.0f}s{stretched}"


__all__ = ["PacedDeadline", "host_load"]
