"""What a starting daemon builds, and the build's progress as read from
mmdebstrap --verbose and bridgelab's own output (a parser: scripted lines)."""

from __future__ import annotations

from pathlib import Path

import pytest
from bridgelab.lab.image_prep import BuildProgress, _Counts, next_progress, unbuilt_recipes
from bridgelab.model.spec import load_lab_text

BUILD_OUTPUT = """\
2026-12-03 06:45:13,112 INFO bridgelab.proc: $ mmdebstrap --arch=amd64 --variant=minbase --verbose bookworm
I: running apt-get update...
I: downloading packages with apt...
0 upgraded, 4 newly installed, 0 to remove and 0 not upgraded.
I: extracting archives...
I: installing essential packages...
Setting up base-files (12.4+deb12u15) ...
Setting up bash (5.2.15-2+b13) ...
Setting up dpkg (1.21.23) ...
Setting up tar (1.34+dfsg-1.2+deb12u1) ...
I: installing remaining packages inside the chroot...
0 upgraded, 2 newly installed, 0 to remove and 0 not upgraded.
Setting up iproute2 (6.1.0-3) ...
Setting up systemd (252.39-1~deb12u2) ...
I: running --customize-hook in shell: sh -c 'chroot "$1" systemctl enable ssh.socket'
I: success in 37.8 seconds
2026-12-03 06:45:51,102 INFO bridgelab.proc: $ mke2fs -q -t ext4 -L bl-root -d root fs.raw 2G
2026-12-03 06:45:59,464 INFO bridgelab.proc: $ qemu-img convert -O qcow2 fs.raw disk.qcow2
2026-12-03 06:46:00,665 INFO bridgelab.model.image_build: built image debian-x86_64-networkd at /c/d
"""


def test_the_build_goes_through_its_phases_with_a_percent_while_packages_are_set_up() -> None:
    p = BuildProgress(image="debian-x86_64-networkd", phase="starting", percent=None, started_at=0.0,
                      images_left=())
    counts = _Counts()
    seen: list[tuple[str, float | None]] = []
    for line in BUILD_OUTPUT.splitlines():
        p = next_progress(p, line, counts)
        if not seen or seen[-1] != (p.phase, p.percent):
            seen.append((p.phase, p.percent))
    assert seen == [
        ("bootstrapping Debian (mmdebstrap)", None), ("downloading packages", None), ("extracting packages", None),
        ("installing essential packages", None), ("installing essential packages", 25.0),
        ("installing essential packages", 50.0), ("installing essential packages", 75.0),
        ("installing essential packages", 100.0), ("installing packages", None), ("installing packages", 50.0),
        ("installing packages", 100.0), ("customizing", None), ("making the filesystem", None),
        ("converting the disk to qcow2", None), ("built", None)]


def test_only_recipes_that_are_not_built_are_built(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BRIDGELAB_CACHE", str(tmp_path / "cache"))
    manifest = tmp_path / "mine" / "manifest.yaml"
    lab = load_lab_text(
        "bridge: {address: 10.0.0.1/24}\nguests:\n"
        "  - {name: a, image: debian-riscv64}\n  - {name: b, image: debian-riscv64}\n"
        "  - {name: c, arch: x86_64, image: debian-x86_64-networkd}\n"
        f"  - {{name: d, image: {manifest}}}\n  - {{name: e, image: no-such-recipe}}\n")
    assert unbuilt_recipes(lab, tmp_path) == ["debian-riscv64", "debian-x86_64-networkd"]


def test_a_build_removes_the_work_directories_of_interrupted_builds_and_no_running_one(tmp_path: Path) -> None:
    import os
    import subprocess

    from bridgelab.model.image_build import _remove_abandoned_builds

    out = tmp_path / "debian-x86_64-networkd" / "5f46dacccb0af956"
    out.parent.mkdir()
    gone = subprocess.Popen(["true"])
    gone.wait()  # a PID that no process has now
    dead = out.parent / f".build-{out.name}-{gone.pid}"
    live = out.parent / f".build-{out.name}-{os.getpid()}"
    other = out.parent / f".build-0123456789abcdef-{gone.pid}"  # an older recipe version's
    for d in (dead, live, other):
        (d / "root" / "etc").mkdir(parents=True)
    _remove_abandoned_builds(out)
    assert not dead.exists() and not other.exists() and live.exists()
