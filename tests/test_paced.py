"""Deadlines paced by the host's load (guest/paced.py), on a clock and a
load the test sets."""

from __future__ import annotations

from bridgelab.guest.paced import PacedDeadline


class Host:
    def __init__(self) -> None:
        self.now = 0.0
        self.load = 1.0


def test_an_idle_host_counts_wall_time():
    h = Host()
    d = PacedDeadline(60, load=lambda: h.load, clock=lambda: h.now)
    h.now = 59.0
    assert d.remaining() == 1.0
    h.now = 61.0
    assert d.remaining() < 0 and d.describe() == "60s"


def test_a_host_loaded_four_times_over_stretches_the_deadline_fourfold_and_says_so():
    h = Host()
    h.load = 4.0
    d = PacedDeadline(60, load=lambda: h.load, clock=lambda: h.now)
    h.now = 200.0
    assert d.remaining() == 40.0  # 50 paced seconds used of 60: 10 left, 40 s of wall time at this pace
    h.now = 240.0
    assert d.remaining() <= 0  # a stuck guest still runs out, four times later
    assert d.describe() == "60s, stretched by a host load of up to 4.0x its cores"


def test_time_counts_at_the_pace_of_each_stretch():
    h = Host()
    d = PacedDeadline(100, load=lambda: h.load, clock=lambda: h.now)
    h.now = 40.0
    d.remaining()  # 40 s at load 1
    h.load = 2.0
    h.now = 100.0  # 60 s at load 2: 30 paced seconds
    assert d.remaining() == (100 - 70) * 2
