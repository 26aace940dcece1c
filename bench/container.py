#!/usr/bin/env python3
"""The appliance container against native `bridgelab serve`, same lab, one run.

  build      `docker build` of the appliance image (cached layers dropped with
             --no-cache), and the image's size;
  cold       (--cold) `docker compose up` with an empty images dir: the guest
             image is built inside the container, then the lab comes up;
  compose    `docker compose up -d` until every guest is ready (API), warm
             image cache;
  native     `bridgelab serve` on the host for the same lab file, until ready;
  down       `docker compose down` until it returns, then the host is checked
             clean (no bridge, tap or qemu of the lab).

Runs in the host's network namespace as users do, with a lab-specific bridge
and subnet (10.213.78.0/24) and no uplink. Needs a running dockerd and the
base image (tests/test_container.py makes both). Medians over --reps.

    sudo .venv/bin/python bench/container.py --reps 3 [--cold] [--build]
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
from bridgelab.model import image_build
from bridgelab.model.plan import derive_tap
from common import end_daemon

ROOT = Path(__file__).resolve().parent.parent
DOCKER = "/usr/bin/docker"
PORT = 18741
CA = Path("/etc/ssl/certs/ca-certificates.crt")


def sh(*argv: str, **kw) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, check=True, capture_output=True, text=True, **kw)


def wait_ready(api: httpx.Client, proc: subprocess.Popen | None = None, limit: float = 1200) -> list[dict]:
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise SystemExit("daemon exited before the lab was ready")
        try:
            guests = api.get("/guests").json()
            if guests and all(g["state"] in ("ready", "failed") for g in guests):
                if any(g["state"] != "ready" for g in guests):
                    raise SystemExit(f"a guest failed: {guests}")
                return guests
        except httpx.TransportError:
            pass
        time.sleep(0.25)
    raise SystemExit("timed out waiting for the lab")


def host_clean(lab: str) -> bool:
    links = sh("ip", "-o", "link", "show").stdout
    ours = [f"{lab}-br", *(derive_tap(lab, g) for g in ("rv1", "rv2"))]
    qemu = []
    for p in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            cmd = p.read_bytes()
        except OSError:
            continue
        if cmd.startswith(b"qemu-system") and lab.encode() in cmd:
            qemu.append(p)
    return not any(f" {name}:" in links for name in ours) and not qemu


class Compose:
    def __init__(self, tmp: Path, lab: str, images_dir: Path) -> None:
        self.env = {**os.environ, "BRIDGELAB_IMAGES_DIR": str(images_dir), "BRIDGELAB_LAB_DIR": str(tmp),
                    "BRIDGELAB_LAB_FILE": "lab.yaml", "BRIDGELAB_PORT": str(PORT), "COMPOSE_PROJECT_NAME": lab}
        self.base = ["docker-compose", "-f", str(ROOT / "compose.yaml")]

    def __call__(self, *args: str) -> subprocess.CompletedProcess[str]:
        return sh(*self.base, *args, env=self.env, cwd=ROOT)


def time_build(no_cache: bool) -> dict[str, float]:
    secret = ["--secret", f"id=ca,src={CA}"] if CA.exists() else []
    t0 = time.monotonic()
    sh(DOCKER, "build", "-q", *(["--no-cache"] if no_cache else []), *secret, "-t", "bridgelab:latest",
       str(ROOT), env={**os.environ, "DOCKER_BUILDKIT": "1"})
    took = time.monotonic() - t0
    size = int(sh(DOCKER, "image", "inspect", "-f", "{{.Size}}", "bridgelab:latest").stdout)
    return {"docker_build_s": took, "image_mb": size / 1e6}


def compose_cycle(compose: Compose, api: httpx.Client, lab: str) -> dict[str, float]:
    t0 = time.monotonic()
    compose("up", "-d", "--no-build")
    wait_ready(api)
    up = time.monotonic() - t0
    t1 = time.monotonic()
    compose("down")
    down = time.monotonic() - t1
    if not host_clean(lab):
        raise SystemExit("compose down left lab objects on the host")
    return {"compose_up_ready_s": up, "compose_down_clean_s": down}


def native_cycle(tmp: Path, lab: str) -> dict[str, float]:
    sock = tmp / "native.sock"
    env = dict(os.environ)
    t0 = time.monotonic()
    proc = subprocess.Popen([sys.executable, "-m", "bridgelab.cli", "serve", "--lab", str(tmp / "lab.yaml"),
                             "--listen", f"unix:{sock}", "--state-dir", str(tmp / "native-state"),
                             "--token-file", str(tmp / "native-state" / "api-token")],
                            stdout=subprocess.DEVNULL, stderr=open(tmp / "native.log", "wb"), env=env)
    api = httpx.Client(transport=httpx.HTTPTransport(uds=str(sock)), base_url="http://b", timeout=10)
    try:
        wait_ready(api, proc)
        up = time.monotonic() - t0
        t1 = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        proc.wait(120)
        down = time.monotonic() - t1
    finally:
        api.close()
        end_daemon(proc)
    if not host_clean(lab):
        raise SystemExit("native serve left lab objects on the host")
    return {"native_up_ready_s": up, "native_down_clean_s": down}


def warm_images_dir(tmp: Path) -> Path:
    built = image_build.build_image("debian-riscv64")
    d = tmp / "images" / "cache" / "debian-riscv64"
    d.mkdir(parents=True)
    sh("cp", "-al", str(built), str(d / built.name))
    return tmp / "images"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--cold", action="store_true", help="also time one up with an empty images dir")
    ap.add_argument("--build", action="store_true", help="also time a --no-cache docker build")
    args = ap.parse_args()
    lab = f"blbc{secrets.token_hex(2)}"
    results: dict[str, list[float]] = {}

    def record(r: dict[str, float]) -> None:
        print(json.dumps({k: round(v, 2) for k, v in r.items()}), flush=True)
        for k, v in r.items():
            results.setdefault(k, []).append(v)

    with tempfile.TemporaryDirectory(prefix="blbench-") as t:
        tmp = Path(t)
        (tmp / "lab.yaml").write_text(
            f"name: {lab}\nbridge: {{name: {lab}-br, address: 10.213.78.1/24}}\n"
            "guests:\n  - {name: rv1, image: debian-riscv64}\n  - {name: rv2, image: debian-riscv64}\n")
        api = httpx.Client(base_url=f"http://127.0.0.1:{PORT}", timeout=10)
        record(time_build(no_cache=args.build))
        if args.cold:
            cold_dir = tmp / "cold-images"
            cold_dir.mkdir()
            compose = Compose(tmp, lab, cold_dir)
            try:
                t0 = time.monotonic()
                compose("up", "-d", "--no-build")
                wait_ready(api, limit=3600)
                record({"cold_up_ready_s": time.monotonic() - t0})
                compose("down")
            finally:
                subprocess.run([*compose.base, "down", "-v"], env=compose.env, cwd=ROOT, capture_output=True)
            shutil.rmtree(cold_dir)
        compose = Compose(tmp, lab, warm_images_dir(tmp))
        try:
            for _ in range(args.reps):
                record(compose_cycle(compose, api, lab))
                record(native_cycle(tmp, lab))
        finally:
            subprocess.run([*compose.base, "down", "-v"], env=compose.env, cwd=ROOT, capture_output=True)
    print("\nmedians:")
    for k, v in results.items():
        print(f"  {k:24s} {statistics.median(v):8.2f}  (n={len(v)})")
    up_c, up_n = (statistics.median(results[k]) for k in ("compose_up_ready_s", "native_up_ready_s"))
    print(f"  compose/native up ratio  {up_c / up_n:8.2f}")


if __name__ == "__main__":
    main()
