"""A second Docker engine whose containers live in a network namespace: the
other "host" of a two-appliance lab, each appliance started with `docker
compose up`, as on two machines.

A host-networking container shares the network namespace of the runtime
that starts it (containerd's shim), so containerd and dockerd both run in
the namespace, and in one private mount namespace (the engine mounts the
containers' root filesystems where runc must see them, and nothing of it
reaches the host's mount table). containerd is started here with its own
configuration rather than left to dockerd: dockerd would use a system
containerd (/run/containerd/containerd.sock) where one runs, which lives in
the host's namespace. Everything the engine stores is under one temporary
directory, removed at the end; the image comes from the host's engine
(`docker save | docker load`), there being no registry.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Iterator

from .conftest import stop_process

DOCKER = "/usr/bin/docker"

CONTAINERD_CONFIG = """\
version = 2
root = "{dir}/containerd/root"
state = "{dir}/containerd/state"
# The CRI plugin would set up Kubernetes networking; /opt/containerd is the opt plugin's.
disabled_plugins = ["io.containerd.grpc.v1.cri", "io.containerd.internal.v1.opt"]
[grpc]
  address = "{dir}/containerd.sock"
[ttrpc]
  address = "{dir}/containerd.sock.ttrpc"
"""

# dockerd touches nothing in the namespace beyond its containers: no docker0,
# no iptables chains, no forwarding switched on (the appliance does its own).
DOCKERD_ARGS = ("--bridge=none", "--iptables=false", "--ip-forward=false", "--ip-masq=false",
                "--userland-proxy=false")


class Engine:
    def __init__(self, ns: str, root: Path):
        self.ns = ns
        self.root = root
        self.sock = root / "docker.sock"
        self.env = {**os.environ, "DOCKER_HOST": f"unix://{self.sock}"}

    def docker(self, *argv: str, check: bool = True, **kw) -> subprocess.CompletedProcess[str]:
        return subprocess.run([DOCKER, *argv], env=self.env, check=check, capture_output=True, text=True, **kw)

    def load(self, image: str) -> None:
        """The host engine's image, copied in."""
        save = subprocess.Popen([DOCKER, "save", image], stdout=subprocess.PIPE)
        load = subprocess.run([DOCKER, "load", "-q"], env=self.env, stdin=save.stdout, capture_output=True, text=True)
        assert save.stdout is not None
        save.stdout.close()
        assert save.wait() == 0 and load.returncode == 0, load.stderr


def _wait_answering(engine: Engine, dockerd: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 60
    while engine.docker("info", check=False).returncode != 0:
        if dockerd.poll() is not None or time.monotonic() > deadline:
            raise AssertionError(f"the namespace's dockerd did not answer: {log.read_text()[-3000:]}")
        time.sleep(0.25)


@contextlib.contextmanager
def engine_in(ns: str) -> Iterator[Engine]:
    # A short path: containerd's and dockerd's sockets live under it (108-byte limit).
    root = Path(tempfile.mkdtemp(prefix="blde", dir="/tmp"))
    engine = Engine(ns, root)
    (root / "containerd.toml").write_text(CONTAINERD_CONFIG.format(dir=root))
    (root / "daemon.json").write_text("{}\n")  # not the host's /etc/docker/daemon.json
    log = root / "engine.log"
    script = (f'containerd --config {root}/containerd.toml & echo $! > {root}/containerd.pid; '
              f'exec dockerd --config-file {root}/daemon.json --containerd {root}/containerd.sock '
              f'--data-root {root}/data --exec-root {root}/exec --pidfile {root}/docker.pid '
              f'-H unix://{engine.sock} {" ".join(DOCKERD_ARGS)}')
    # unshare and nsenter exec (no fork): the Popen's pid is dockerd's.
    dockerd = subprocess.Popen(["unshare", "--mount", "--propagation", "slave", "--",
                                "nsenter", f"--net=/run/netns/{ns}", "--", "sh", "-c", script],
                               stdout=open(log, "ab"), stderr=subprocess.STDOUT)
    try:
        _wait_answering(engine, dockerd, log)
        yield engine
    finally:
        stop_process(dockerd, 30)
        _end_containerd(root / "containerd.pid")
        shutil.rmtree(root, ignore_errors=True)


def _running(pid: int, comm: str) -> bool:
    """The process is alive (not a zombie) and is still the one named."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.index("(") + 1:stat.rindex(")")] == comm and stat.rsplit(")", 1)[1].split()[0] != "Z"


def _end_containerd(pid_file: Path) -> None:
    """The containerd this engine started (by its recorded PID, checked to be it)."""
    try:
        pid = int(pid_file.read_text())
    except (OSError, ValueError):
        return
    if _running(pid, "containerd"):
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 15
        while _running(pid, "containerd") and time.monotonic() < deadline:
            time.sleep(0.1)
        if _running(pid, "containerd"):
            os.kill(pid, signal.SIGKILL)
