"""The appliance container end to end, with a real Docker engine, in the
host's network namespace (as users run it).

Lab-specific names and a subnet nothing else here uses (blci-br0,
10.213.77.0/24), no uplink, and traffic only to the guests on that bridge.
The guest image comes from the host cache (hard links), as a user's second
`up` would find it.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator

import httpx
import pytest
from bridgelab.model import image_build, images

from . import hoststate
from .conftest import netns
from .engine_ns import engine_in

pytestmark = pytest.mark.container
ROOT = Path(__file__).resolve().parent.parent
DOCKER = "/usr/bin/docker"  # Debian's client: it has BuildKit secrets
BASE = "debian:bookworm-slim"
PORT = 18731
PEER_NET, PEER_API = "172.31.97", 18733  # the peer test's underlay (a veth, never the host's NIC)
PEER_TOKEN = "container-peer-token-0123456789"
CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")


def sh(*argv: str, check: bool = True, **kw) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, check=check, capture_output=True, text=True, **kw)


@pytest.fixture(scope="module")
def engine() -> None:
    """The Docker engine tests/run starts before the tests (so that the
    host-state guard's view already includes it)."""
    if shutil.which("dockerd") is None or not Path(DOCKER).exists():
        pytest.fail("docker.io is not installed (tests/run installs it)")
    if sh(DOCKER, "info", check=False).returncode != 0:
        pytest.fail("no Docker engine answers; tests/run starts one")


@pytest.fixture(scope="module")
def image(engine) -> str:
    """No registry is reachable: make the base with mmdebstrap, then build."""
    if sh(DOCKER, "image", "inspect", BASE, check=False).returncode != 0:
        mm = subprocess.Popen(["mmdebstrap", "--variant=minbase", "--include=ca-certificates", "bookworm", "-",
                               "http://deb.debian.org/debian"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        sh(DOCKER, "import", "-", BASE, stdin=mm.stdout)
        assert mm.wait() == 0
    secret = ["--secret", f"id=ca,src={CA_BUNDLE}"] if CA_BUNDLE.exists() else []
    build = sh(DOCKER, "build", "-q", *secret, "-t", "bridgelab:latest", str(ROOT), check=False,
               env={**os.environ, "DOCKER_BUILDKIT": "1"})
    assert build.returncode == 0, build.stderr[-3000:]
    return "bridgelab:latest"


def _lab_processes(tag: str) -> list[str]:
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            args = cmdline.read_bytes().split(b"\0")
        except OSError:
            continue
        if args and args[0].startswith(b"qemu-system") and any(tag.encode() in a for a in args):
            found.append(cmdline.parent.name)
    return found


def tree(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hoststate.path_kind(p) for p in sorted(root.rglob("*"))}


def test_compose_up_ready_mesh_then_down_leaves_host_clean(image, tmp_path):
    image_build.build_image("debian-riscv64")  # no-op when cached
    cached = images.built_dir("debian-riscv64")
    img_dir = tmp_path / "images"
    (img_dir / "cache" / "debian-riscv64").mkdir(parents=True)
    sh("cp", "-al", str(cached), str(img_dir / "cache" / "debian-riscv64" / cached.name))
    lab_name = f"blci{secrets.token_hex(2)}"
    bridge = f"{lab_name}-br"
    lab_dir = tmp_path / "lab"
    lab_dir.mkdir()
    # One guest: the lab boots three times here, and guest to guest across
    # the bridge is the same kernel path as outside a container (tests/test_vm.py).
    # Booting alone, it gets two vCPUs (one TCG thread each; docs/benchmarks.md).
    (lab_dir / "lab.yaml").write_text(
        f"name: {lab_name}\nbridge: {{name: {bridge}, address: 10.213.77.1/24}}\n"
        "guests:\n  - {name: rv1, image: debian-riscv64, cpus: 2}\n")
    env = {**os.environ, "BRIDGELAB_IMAGES_DIR": str(img_dir), "BRIDGELAB_LAB_DIR": str(lab_dir),
           "BRIDGELAB_PORT": str(PORT), "COMPOSE_PROJECT_NAME": lab_name}
    env.pop("XTABLES_LOCKFILE", None)  # the container must use the host's own lock, as for users
    compose = ["docker-compose", "-f", str(ROOT / "compose.yaml")]
    api = httpx.Client(base_url=f"http://127.0.0.1:{PORT}", timeout=10)
    host_paths = {"lab": tree(lab_dir), "images": tree(img_dir), "run": hoststate.run_paths()}

    def container() -> str:
        return sh(*compose, "ps", "-q", "bridgelab", env=env, cwd=ROOT).stdout.strip()

    def inspect(fmt: str) -> str:
        return sh(DOCKER, "inspect", "-f", fmt, container()).stdout.strip()

    def healthy_once_ready(guests: list[dict]) -> None:
        """The healthcheck asks /readyz: healthy once every guest is ready (and not before)."""
        assert guests and all(g["state"] == "ready" for g in guests), guests
        deadline = time.monotonic() + 60
        while (health := inspect("{{.State.Health.Status}}")) != "healthy":
            assert health == "starting" and time.monotonic() < deadline, health
            time.sleep(1)

    def up_until_settled() -> list[dict]:
        up = sh(*compose, "up", "-d", "--no-build", env=env, check=False, cwd=ROOT)
        assert up.returncode == 0, up.stderr
        return settled()

    def settled() -> list[dict]:
        deadline = time.monotonic() + 600
        guests: list[dict] = []
        while time.monotonic() < deadline:
            try:
                guests = api.get("/guests").json()
                if guests and all(g["state"] in ("ready", "failed") for g in guests):
                    break
            except httpx.TransportError:
                pass
            time.sleep(1)
        return guests

    def saves() -> str:
        return sh("iptables-nft-save").stdout + sh("iptables-legacy-save").stdout

    def rule_count() -> int:
        """Tagged jumps into the lab's chains, in either backend: 0 or 1, never duplicated."""
        return sum(1 for line in saves().splitlines() if f"bridgelab lab={lab_name}" in line and "-j BL-" in line)

    def lab_links() -> str:
        return sh("ip", "-o", "link", "show").stdout

    try:
        # Start-up refusals, before anything is created: a lab file that is
        # not there, and a directory where the host's iptables lock belongs
        # (made here under a test directory of the host's /run, never at
        # /run/xtables.lock itself, which the host's iptables-legacy uses).
        missing = sh(*compose, "run", "--rm", "-T", "bridgelab", env={**env, "BRIDGELAB_LAB_FILE": "nope.yaml"},
                     check=False, cwd=ROOT)
        assert missing.returncode == 1 and f"no lab file nope.yaml in {lab_dir}" in missing.stderr, missing.stderr
        bad_lock = Path("/run") / f"{lab_name}-test" / "xtables.lock"
        bad_lock.mkdir(parents=True)
        try:
            refused = sh(*compose, "run", "--rm", "-T", "-e", f"XTABLES_LOCKFILE=/host{bad_lock}", "bridgelab",
                         "bridgelab", "cleanup", "--all", env=env, check=False, cwd=ROOT)
        finally:
            bad_lock.rmdir()
            bad_lock.parent.rmdir()
        assert refused.returncode == 1 and f"sudo rmdir {bad_lock}" in refused.stderr, refused.stderr
        assert sh("ip", "-o", "link", "show").stdout.count(bridge) == 0

        guests = up_until_settled()
        logs = sh(*compose, "logs", "--no-color", env=env, check=False, cwd=ROOT).stdout
        assert [g["state"] for g in guests] == ["ready"], logs[-4000:]
        healthy_once_ready(guests)
        assert api.get("/readyz").json()["ready"] is True
        assert guests[0]["mesh"] == {"10.213.77.1": True}
        for g in guests:
            assert sh("ping", "-n", "-q", "-c", "1", "-w", "5", g["ip"], check=False).returncode == 0
        assert f"lab {lab_name} ready: rv1 " in logs
        assert "restored" not in guests[0]["stages"], guests[0]["stages"]  # the first start boots
        snaps = api.get("/snapshots").json()
        assert [(s["guest"], s["name"], s["valid"]) for s in snaps] == [("rv1", "ready", True)], snaps
        taps = [g["tap"] for g in guests]
        # Uplink sysctls need /proc/sys/net writable, and nothing else in /proc/sys.
        # (access(2) only: this lab has no uplink and must not change the host.)
        probe = "test -w /proc/sys/net/ipv4/ip_forward && echo net; test -w /proc/sys/kernel/hostname && echo kernel"
        writable = sh(*compose, "exec", "-T", "bridgelab", "sh", "-c", probe, env=env, check=False,
                      cwd=ROOT).stdout.split()
        assert writable == ["net"], writable
        # The status page, with xterm.js from the image (trixie's libjs-xterm), not a CDN.
        assert "<title>bridgelab</title>" in api.get("/").text
        xterm = api.get("/vendor/xterm/xterm.js")
        assert xterm.status_code == 200 and len(xterm.content) > 100_000
        assert api.get("/vendor/xterm/addons/fit/xterm-addon-fit.js").status_code == 200

        # The daemon dies (SIGKILL: no teardown), which leaves the host objects
        # behind; `restart: unless-stopped` starts a new one, which sweeps them
        # from the ledger in the state volume and converges, no duplicates.
        assert inspect("{{.HostConfig.RestartPolicy.Name}} {{.RestartCount}}") == "unless-stopped 0"
        sh(*compose, "exec", "-T", "bridgelab", "sh", "-c", "kill -KILL $(cat /proc/1/task/1/children)",
           env=env, cwd=ROOT)
        deadline = time.monotonic() + 60
        while inspect("{{.RestartCount}}") == "0":
            assert time.monotonic() < deadline, "Docker did not restart the appliance"
            time.sleep(0.5)
        assert bridge in lab_links()
        again = settled()
        assert [g["state"] for g in again] == ["ready"]
        assert [g["ip"] for g in again] == [g["ip"] for g in guests]
        # The second `up` is warm: the guest comes back from its ready snapshot in the state volume.
        assert "restored" in again[0]["stages"] and "firmware" not in again[0]["stages"], again[0]["stages"]
        logs = sh(*compose, "logs", "--no-color", env=env, check=False, cwd=ROOT).stdout
        assert "guest rv1: warm start from ready snapshot" in logs, logs[-3000:]
        assert rule_count() in (0, 1)
        links = lab_links()
        assert links.count(f" {bridge}:") == 1 and all(links.count(f" {t}:") == 1 for t in taps)

        # While the lab runs, cleanup in a second container (plain `docker
        # run`: compose v1 cannot `run` next to a running host-network
        # service) leaves it alone: the daemon's locks are seen across containers.
        live = sh(DOCKER, "run", "--rm", "--network", "host", "--cap-add", "NET_ADMIN",
                  "-v", f"{lab_name}_bridgelab-state:/var/lib/bridgelab/state", "-v", "/run:/host/run",
                  "-e", "XTABLES_LOCKFILE=/host/run/xtables.lock", image, "bridgelab", "cleanup", "--all",
                  check=False)
        assert live.returncode == 0 and f"lab {lab_name}: its daemon is running: left alone" in live.stdout, \
            live.stdout + live.stderr
        assert all(f" {t}:" in lab_links() for t in taps)

        # Killed again, this time cleaned up by `bridgelab cleanup` instead of
        # another `up`, from a one-off container as docs/appliance.md says.
        run = [*compose, "run", "--rm", "-T", "bridgelab", "bridgelab", "cleanup", "--all"]
        sh(*compose, "kill", env=env, cwd=ROOT)  # killed by hand: no restart
        time.sleep(2)
        assert inspect("{{.State.Status}} {{.RestartCount}}") == "exited 1", inspect("{{.State.Status}}")
        cleaned = sh(*run, env=env, check=False, cwd=ROOT)
        assert cleaned.returncode == 0, cleaned.stdout + cleaned.stderr
        assert f"lab {lab_name}: removed {bridge}" in cleaned.stdout, cleaned.stdout
        links = lab_links()
        assert bridge not in links and not any(t in links for t in taps)
        assert rule_count() == 0 and f"bridgelab lab={lab_name}" not in saves()
        second = sh(*run, env=env, check=False, cwd=ROOT)
        assert second.returncode == 0 and "nothing to clean up" in second.stdout, second.stdout

        # From the clean host, up once more: the graceful `down` below must
        # then power the guest off cleanly.
        again = up_until_settled()
        assert [g["state"] for g in again] == ["ready"]
    except BaseException:
        sh(*compose, "down", "-v", env=env, check=False, cwd=ROOT)
        raise
    down = sh(*compose, "down", env=env, check=False, cwd=ROOT)
    try:
        assert down.returncode == 0, down.stderr
        assert _lab_processes(lab_name) == []
        links = lab_links()
        assert bridge not in links and not any(t in links for t in taps)
        assert rule_count() == 0 and f"bridgelab lab={lab_name}" not in saves()
        for name in ("rv1",):  # powered off cleanly: overlays must check clean
            check = sh(DOCKER, "run", "--rm", "--network", "none", "-v", f"{lab_name}_bridgelab-state:/s",
                       "-v", f"{img_dir}:/var/lib/bridgelab/images:ro", "--entrypoint", "qemu-img",
                       image, "check", f"/s/{lab_name}/guests/{name}/overlay.qcow2", check=False)
            assert check.returncode == 0, (name, check.stdout, check.stderr)
            # `down` keeps the snapshots (in the state volume); `down -v` below drops them.
            listed = sh(DOCKER, "run", "--rm", "--network", "none", "-v", f"{lab_name}_bridgelab-state:/s",
                        "-v", f"{img_dir}:/var/lib/bridgelab/images:ro", "--entrypoint", "qemu-img",
                        image, "snapshot", "-l", f"/s/{lab_name}/guests/{name}/overlay.qcow2", check=False)
            assert " ready " in listed.stdout, listed.stdout + listed.stderr
        # Nothing was created on the host through a bind mount.
        assert {"lab": tree(lab_dir), "images": tree(img_dir), "run": hoststate.run_paths()} == host_paths
    finally:
        sh(*compose, "down", "-v", env=env, check=False, cwd=ROOT)


@contextlib.contextmanager
def peer_host(lab: str) -> Iterator[str]:
    """Another "host" for the appliance's lab: a network namespace on a veth
    underlay (PEER_NET: .1 on the host's side, .2 in the namespace)."""
    ul = f"{lab}-ul"
    with contextlib.ExitStack() as stack:
        ns = stack.enter_context(netns("blcp"))
        sh("ip", "link", "add", ul, "type", "veth", "peer", "name", "eth0", "netns", ns)
        stack.callback(sh, "ip", "link", "del", ul, check=False)
        sh("ip", "addr", "add", f"{PEER_NET}.1/30", "dev", ul)
        sh("ip", "link", "set", ul, "up")
        sh("ip", "-n", ns, "addr", "add", f"{PEER_NET}.2/30", "dev", "eth0")
        sh("ip", "-n", ns, "link", "set", "eth0", "up")
        sh("ip", "-n", ns, "link", "set", "lo", "up")
        yield ns


def test_compose_up_wait_returns_once_every_guest_is_ready_and_fails_when_one_fails(image, tmp_path):
    """`docker compose up -d --wait` (Compose v2, from tests/compose-v2) is the
    whole CI recipe: it returns 0 only when the lab is ready (the healthcheck
    asks /readyz), and non-zero when a guest fails (here once a short
    BRIDGELAB_READY_WITHIN is over).

    The ready lab spans two appliances (docs/peers.md), each started with
    `docker compose up` and a `peers:` entry: one on this host, one on
    another "host" (a namespace on a veth underlay with its own Docker
    engine, tests/engine_ns.py). Their guests reach each other across
    VXLAN, and `down` leaves neither the VXLAN port nor the firewall chain
    behind."""
    docker_config = os.environ.get("COMPOSE_V2_CONFIG")
    if not docker_config:
        pytest.fail("no Compose v2: tests/run provides it (tests/compose-v2) in $COMPOSE_V2_CONFIG")
    image_build.build_image("debian-riscv64")
    cached = images.built_dir("debian-riscv64")
    img_dir = tmp_path / "images"
    (img_dir / "cache" / "debian-riscv64").mkdir(parents=True)
    sh("cp", "-al", str(cached), str(img_dir / "cache" / "debian-riscv64" / cached.name))
    api = httpx.Client(base_url=f"http://127.0.0.1:{PORT}", timeout=10)
    host_run = hoststate.run_paths()

    def lab(name: str, guest: str, extra: str = "", folder: str = "",
            bridge: str = "10.213.78.1/24") -> tuple[list[str], dict[str, str]]:
        lab_dir = tmp_path / (folder or name)
        lab_dir.mkdir()
        (lab_dir / "lab.yaml").write_text(f"name: {name}\nbridge: {{name: {name}-br, address: {bridge}}}\n"
                                          f"{extra}guests:\n  - {guest}\n")
        env = {**os.environ, "DOCKER_CONFIG": docker_config, "BRIDGELAB_IMAGES_DIR": str(img_dir),
               "BRIDGELAB_LAB_DIR": str(lab_dir), "BRIDGELAB_PORT": str(PORT), "COMPOSE_PROJECT_NAME": name}
        env.pop("XTABLES_LOCKFILE", None)
        return [DOCKER, "compose", "-f", str(ROOT / "compose.yaml")], env

    ready_name = f"blw{secrets.token_hex(2)}"
    compose, env = lab(ready_name, "{name: rv1, image: debian-riscv64, cpus: 2, ip: 10.213.78.10}",
                       f"peers: {{hosts: [{PEER_NET}.2], api_port: {PEER_API}}}\n")
    _, peer_env = lab(ready_name, "{name: rv9, image: debian-riscv64, cpus: 2, ip: 10.213.78.20}",
                      f"peers: {{hosts: [{PEER_NET}.1], api_port: {PEER_API}}}\n", folder="peer",
                      bridge="10.213.78.2/24")
    assert sh(*compose, "version", env=env).stdout.startswith("Docker Compose version 2.")
    token = {"Authorization": f"Bearer {PEER_TOKEN}"}
    env["BRIDGELAB_TOKEN"] = peer_env["BRIDGELAB_TOKEN"] = PEER_TOKEN  # one token on both hosts
    with peer_host(ready_name) as ns, engine_in(ns) as peer_engine:
        peer_engine.load(image)
        peer_env["DOCKER_HOST"] = peer_engine.env["DOCKER_HOST"]
        up_cmd = [*compose, "up", "-d", "--wait", "--no-build"]
        try:
            peer_up = subprocess.Popen(up_cmd, env=peer_env, cwd=ROOT, stdout=subprocess.PIPE,
                                       stderr=subprocess.STDOUT, text=True)
            up = sh(*up_cmd, env=env, check=False, cwd=ROOT, timeout=1200)
            peer_out = peer_up.communicate(timeout=1200)[0]
            assert up.returncode == 0, up.stdout + up.stderr
            assert peer_up.returncode == 0, peer_out
            ready = api.get("/readyz")  # at once: --wait returned only once the lab was ready
            assert ready.status_code == 200 and [g["state"] for g in ready.json()["guests"]] == ["ready"], \
                ready.text
            # The mesh asks the peers again first, so the declaration below is the one it used:
            # the other appliance's guest ready (its --wait has returned), not its state up to
            # a poll interval ago.
            pairs = {p["target"]: p for p in api.post("/mesh", headers=token).json()["pairs"]}
            assert pairs[f"rv9@{PEER_NET}.2"]["ok"] and pairs[f"bridge@{PEER_NET}.2"]["ok"], pairs
            peers = api.get("/peers", headers=token).json()
            assert [(p["address"], p["state"], p["clashes"]) for p in peers] == [(f"{PEER_NET}.2", "up", [])]
            assert [(g["name"], g["state"]) for g in peers[0]["declaration"]["guests"]] == [("rv9", "ready")], peers
            assert "_vx" in sh("ip", "-o", "link", "show", "master", f"{ready_name}-br").stdout
            # ...and the other way: the peer appliance's own CLI, inside its container
            there = sh(*compose, "exec", "-T", "bridgelab", "bridgelab", "mesh", env=peer_env, cwd=ROOT,
                       check=False)
            assert there.returncode == 0 and f"rv1@{PEER_NET}.1" in there.stdout, there.stdout + there.stderr
        finally:
            down = sh(*compose, "down", "-v", env=env, check=False, cwd=ROOT)
            peer_down = sh(*compose, "down", "-v", env=peer_env, check=False, cwd=ROOT)
        assert peer_down.returncode == 0, peer_down.stderr
        assert f"{ready_name}-br" not in sh("ip", "-n", ns, "-o", "link").stdout
    assert down.returncode == 0, down.stderr
    assert _lab_processes(ready_name) == [] and f"{ready_name}-br" not in sh("ip", "-o", "link").stdout
    saves = sh("iptables-nft-save").stdout + sh("iptables-legacy-save").stdout
    assert f"bridgelab lab={ready_name}" not in saves, "the VXLAN port's INPUT chain went with the lab"

    failing_name = f"blf{secrets.token_hex(2)}"
    compose, env = lab(failing_name, '{name: rv1, image: debian-riscv64, qemu_args: ["-device", "no-such-device"]}')
    env["BRIDGELAB_READY_WITHIN"] = "5s"
    try:
        t0 = time.monotonic()
        up = sh(*compose, "up", "-d", "--wait", "--no-build", env=env, check=False, cwd=ROOT, timeout=600)
        waited = time.monotonic() - t0
        assert up.returncode != 0 and "unhealthy" in up.stdout + up.stderr, up.stdout + up.stderr
        assert waited < 120, waited
        body = api.get("/readyz").json()
        assert body["failed"] == ["rv1"] and "no-such-device" in body["guests"][0]["reason"], body
    finally:
        down = sh(*compose, "down", "-v", env=env, check=False, cwd=ROOT)
    assert down.returncode == 0, down.stderr
    assert f"{failing_name}-br" not in sh("ip", "-o", "link").stdout
    assert hoststate.run_paths() == host_run  # no host path made by a bind mount


def test_a_first_start_builds_its_image_while_the_api_answers(image, tmp_path):
    """No image in the cache: the daemon builds it itself, and its API
    answers from the first seconds with the build's phase and percent
    (/healthz, /readyz, `bridgelab wait`), then serves the lab. An x86_64
    image (native: about a minute) and a guest whose qemu cannot start, so
    that nothing boots once it is built."""
    name = f"blb{secrets.token_hex(2)}"
    img_dir, lab_dir = tmp_path / "images", tmp_path / "lab"
    img_dir.mkdir()
    lab_dir.mkdir()
    (lab_dir / "lab.yaml").write_text(
        f"name: {name}\nbridge: {{name: {name}-br, address: 10.213.79.1/24}}\nguests:\n"
        '  - {name: nd, arch: x86_64, image: debian-x86_64-networkd, accel: tcg, qemu_args: ["-device", "nope"]}\n')
    env = {**os.environ, "BRIDGELAB_IMAGES_DIR": str(img_dir), "BRIDGELAB_LAB_DIR": str(lab_dir),
           "BRIDGELAB_PORT": str(PORT), "COMPOSE_PROJECT_NAME": name}
    env.pop("XTABLES_LOCKFILE", None)
    compose = ["docker-compose", "-f", str(ROOT / "compose.yaml")]
    api = httpx.Client(base_url=f"http://127.0.0.1:{PORT}", timeout=10)
    try:
        up = sh(*compose, "up", "-d", "--no-build", env=env, check=False, cwd=ROOT)
        assert up.returncode == 0, up.stderr
        t0 = time.monotonic()
        health: dict = {}
        while time.monotonic() - t0 < 60 and not health:
            try:
                health = api.get("/healthz").raise_for_status().json()
            except httpx.HTTPError:
                time.sleep(0.3)
        answered = time.monotonic() - t0
        assert health.get("status") == "building", health
        assert health["build"]["image"] == "debian-x86_64-networkd" and health["build"]["failed"] is None, health
        assert answered < 30, answered  # the API is up while the build has just begun
        ready = api.get("/readyz")
        assert ready.status_code == 503 and ready.json()["waiting"] == ["nd"] and ready.json()["build"], ready.text
        busy = api.post("/mesh")
        assert busy.status_code == 503 and busy.headers["retry-after"], busy.text
        assert f"lab {name} is starting: building image debian-x86_64-networkd" in busy.json()["detail"]
        wait = sh(sys.executable, "-m", "bridgelab.cli", "wait", "--api", f"127.0.0.1:{PORT}", "--timeout", "900",
                  check=False, timeout=1000)
        shown = [ln for ln in wait.stderr.splitlines() if ln.startswith("building image debian-x86_64-networkd: ")]
        assert any(re.search(r": installing (essential )?packages [1-9]0%$", ln) for ln in shown), wait.stderr
        assert shown[-1].endswith(": built") or any("converting the disk" in ln for ln in shown), shown
        # Then the lab's own API: its guest settles (failed: its qemu cannot start).
        assert wait.returncode == 1 and "nd failed" in wait.stderr, wait.stderr
        assert api.get("/healthz").json()["status"] == "ok"
        assert [p.name for p in (img_dir / "cache").iterdir()] == ["debian-x86_64-networkd"]
        logs = sh(*compose, "logs", "--no-color", env=env, check=False, cwd=ROOT).stdout
        assert "building guest image debian-x86_64-networkd while the API answers" in logs, logs[-3000:]
        assert "Setting up " not in logs  # every package's line is counted, not logged
    finally:
        sh(*compose, "down", "-v", env=env, check=False, cwd=ROOT)
    assert f"{name}-br" not in sh("ip", "-o", "link").stdout
