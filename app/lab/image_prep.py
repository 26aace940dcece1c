"""The images a lab needs before it can start, built by the daemon itself
while its API already answers (`serve --build-missing`, the appliance's
first start): which recipes are not built, the build's progress as read from
its output, and the builds, each a `bridgelab image build` child process
that a stopping daemon interrupts."""

from __future__ import annotations

import logging
import re
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

from ..errors import BridgelabError, ImageError
from ..model import images
from ..model.spec import Lab
from ..proc import run_lines

log = logging.getLogger(__name__)


def unbuilt_recipes(lab: Lab, base_dir: Path) -> list[str]:
    """Recipe names the lab's guests use that have no build for the current
    recipe; paths and added images are the user's files, never built here."""
    todo: list[str] = []
    for g in lab.guests:
        ref = g.image
        if "/" in ref or ref.endswith((".yaml", ".yml")) or ref in todo:
            continue
        try:
            images.resolve_image(ref, base_dir)
        except ImageError:
            try:
                images.find_recipe(ref)
            except ImageError:
                continue  # no such recipe: the plan says so, with the other errors
            todo.append(ref)
    return todo


@dataclass(frozen=True)
class BuildProgress:
    image: str
    phase: str
    percent: float | None  # of the packages being installed, when apt said how many
    started_at: float
    images_left: tuple[str, ...]
    failed: str | None = None


# What `bridgelab image build` prints (its own log lines, mmdebstrap's "I:"
# lines, apt and dpkg), and the phase each starts; first match wins.
_PHASES: tuple[tuple[re.Pattern[str], str], ...] = tuple((re.compile(p), phase) for p, phase in (
    (r"\$ mmdebstrap ", "bootstrapping Debian (mmdebstrap)"),
    (r"^I: (?:downloading|running apt-get update|setting up apt|retrieving)", "downloading packages"),
    (r"^I: extracting archives", "extracting packages"),
    (r"^I: installing essential packages", "installing essential packages"),
    (r"^I: installing remaining packages", "installing packages"),
    (r"^I: running --(?:customize|essential)-hook|^I: running special hook", "customizing"),
    (r"\$ (?:mkfs|mke2fs)", "making the filesystem"),
    (r"\$ (?:sfdisk|dd) ", "partitioning the disk"),
    (r"\$ qemu-img convert", "converting the disk to qcow2"),
    (r"built image ", "built"),
))
_NEWLY = re.compile(r"(\d+) newly installed")
# What the daemon's log keeps of a build: bridgelab's own lines and
# mmdebstrap's (I:, W:, E:), dpkg's errors; not apt's and dpkg's lines per
# package, which are counted. A failure's last lines are in its error anyway.
_LOGGED = re.compile(r"^(\d{4}-\d\d-\d\d |[IWE]: |dpkg: error|mmdebstrap: )")
_SETTING_UP = re.compile(r"^Setting up \S+ ")


@dataclass
class _Counts:
    total: int = 0
    done: int = 0


def next_progress(p: BuildProgress, line: str, counts: _Counts) -> BuildProgress:
    """The progress after one line of the build's output (mmdebstrap
    --verbose: apt says how many packages it will install, then dpkg sets
    each one up; the essential set's count comes while downloading). Pure
    but for `counts`, which it carries from line to line."""
    for pattern, phase in _PHASES:
        if pattern.search(line):
            return replace(p, phase=phase, percent=None) if phase != p.phase else p
    if m := _NEWLY.search(line):
        counts.total, counts.done = int(m.group(1)), 0
        return p
    if _SETTING_UP.search(line) and counts.total:
        counts.done += 1
        return replace(p, percent=round(min(100.0, 100.0 * counts.done / counts.total), 1))
    return p


@dataclass
class ImageBuilds:
    """The builds a starting daemon runs, one after the other, in a thread;
    `progress` is what the API shows meanwhile."""

    names: list[str]
    progress: BuildProgress | None = None
    finished: threading.Event = field(default_factory=threading.Event)
    _child: subprocess.Popen[str] | None = None
    _stopping: bool = False
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def start(self) -> threading.Thread:
        thread = threading.Thread(target=self._run, name="image-builds", daemon=True)
        thread.start()
        return thread

    @property
    def ok(self) -> bool:
        return self.finished.is_set() and self.progress is not None and self.progress.failed is None \
            and not self._stopping

    def stop(self) -> None:
        """Interrupt the running build (SIGINT: it removes its work directory)."""
        with self._lock:
            self._stopping = True
            child = self._child
        if child is not None and child.poll() is None:
            child.send_signal(signal.SIGINT)

    def _run(self) -> None:
        try:
            for i, name in enumerate(self.names):
                if self._stopping:
                    break
                self.progress = BuildProgress(image=name, phase="starting", percent=None, started_at=time.time(),
                                              images_left=tuple(self.names[i + 1:]))
                self._build(name)
        except BridgelabError as e:
            assert self.progress is not None
            if self._stopping:  # interrupted on purpose: not a failure
                log.info("building image %s: interrupted, the daemon is stopping", self.progress.image)
                return
            self.progress = replace(self.progress, failed=str(e)[-2000:])
            log.error("building image %s failed: %s", self.progress.image, e)
        finally:
            self.finished.set()

    def _build(self, name: str) -> None:
        counts = _Counts()
        log.info("building guest image %s while the API answers (progress: GET /healthz)", name)

        def on_line(line: str) -> None:
            if _LOGGED.match(line):  # the log keeps the build's story, not every package
                print(line, file=sys.stderr, flush=True)
            assert self.progress is not None
            self.progress = next_progress(self.progress, line, counts)

        def on_start(child: subprocess.Popen[str]) -> None:
            with self._lock:
                self._child = child
                if self._stopping:
                    child.send_signal(signal.SIGINT)
        run_lines([sys.executable, "-m", "bridgelab.cli", "image", "build", "--verbose", name], on_line,
                  on_start=on_start)


__all__ = ["BuildProgress", "ImageBuilds", "next_progress", "unbuilt_recipes"]
