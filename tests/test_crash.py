"""Crash safety with a real riscv64 guest: the daemon is SIGKILLed at each
stage of bring-up and in the middle of each runtime change, and the next
`serve` must converge (tests/crashdrill.py says how each is checked): no
object twice, the killed run's qemu processes gone, and from the kill at
"verifying" on, the lab as declared with every guest ready. The kills are
chained in one lab of one guest (two after the runtime addition): a restart
the next kill cuts off is a crash loop, which must converge too, and it costs
one guest boot per scenario instead of two. The last SIGTERM must leave
nothing behind. bench/crash.py runs each kill alone on two guests and reports
the times as a table.
"""

from __future__ import annotations

import os
from typing import Iterator

import pytest
from bridgelab.model import image_build

from .crashdrill import SCENARIOS, Drill, run

pytestmark = pytest.mark.vm


@pytest.fixture(scope="module")
def drill(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Drill]:
    if os.geteuid() != 0:
        pytest.fail("VM tests need root")
    image_build.build_image("debian-riscv64")
    # One guest booting alone gets both of a 2-core runner's cores: under TCG
    # (one host thread per vCPU) its boot takes ~0.7x as long (docs/benchmarks.md).
    d = Drill(tmp_path_factory.mktemp("crash"), guests=1, cpus=2)
    try:
        yield d
    finally:
        d.close()


@pytest.mark.parametrize("scenario", list(SCENARIOS))
def test_a_killed_daemon_converges_at_the_next_start(drill, scenario):
    outcome = run(drill, scenario, chained=True)
    # What the kill left is what the restart had to sweep: something real.
    assert outcome.left.links and outcome.left.ledger, outcome.left.summary()
    assert outcome.converged, f"killed at {outcome.killed_at}:\n" + "\n".join(outcome.problems)

