"""What a test run (or a benchmark) must leave exactly as it found it.

`capture()` reads the host's state with the system's own tools, never
bridgelab's code; `differences()` says what changed, section by section:

- links, addresses and routes in the root network namespace (without the
  IPv6 link-local ones the kernel adds when a link first has carrier), and
  the list of named network namespaces;
- iptables-save of both backends and `nft list ruleset`, without counters;
- the sysctls bridgelab may write (ip_forward, proxy_arp, proxy_delay) and
  the br_netfilter switch it reads;
- binfmt_misc: whether it is mounted, and its entries;
- mounts a run could leave: binfmt_misc, namespaces, overlays, and anything
  under /run, /var/lib/docker or /tmp (but for the engine's own host-network
  sandbox, /run/docker/netns/default, which dockerd mounts when it starts its
  first container and keeps for its lifetime, like docker0);
- what bridgelab uses under /run: /run/xtables.lock (absent, file or
  directory) and /run/bridgelab;
- Docker's containers, volumes and networks, when an engine answers;
- qemu processes.

Every section can be read from another network namespace or /run root, so the
guard's own tests can change a throwaway copy and see the difference.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

DOCKER = "/usr/bin/docker"
_COUNTERS = re.compile(r"\[\d+:\d+\]")
_NFT_COUNTER = re.compile(r"counter packets \d+ bytes \d+")
_MOUNT_ROOTS = ("/run", "/var/lib/docker", "/tmp", "/proc/sys/fs/binfmt_misc")
_MOUNT_TYPES = {"binfmt_misc", "nsfs", "overlay"}
_ENGINE_MOUNTS = {"/run/docker/netns/default"}


def _out(argv: list[str], ns: str | None = None) -> str:
    if ns is not None:
        argv = ["ip", "netns", "exec", ns, *argv]
    if shutil.which(argv[0]) is None:
        return f"({argv[0]} not installed)"
    p = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    return p.stdout if p.returncode == 0 else f"({' '.join(argv)} failed: {p.stderr.strip()[:200]})"


def _ip_json(ns: str | None, *args: str) -> list[dict[str, Any]]:
    text = _out(["ip", "-j", *args], ns)
    return json.loads(text) if text.startswith("[") else []


def links(ns: str | None = None) -> dict[str, str]:
    return {x["ifname"]: (x.get("linkinfo") or {}).get("info_kind", "") for x in _ip_json(ns, "-d", "link", "show")}


# What the kernel configures by itself when a link first has carrier (IPv6
# link-local addresses and the routes that follow them), as docker0 does the
# first time a container uses it: not configuration anyone set.
_AUTOCONF_ROUTES = ("fe80::/64 ", "local fe80:", "multicast ff00::/8 ")


def addresses(ns: str | None = None) -> dict[str, list[str]]:
    return {x["ifname"]: sorted(f"{a['local']}/{a['prefixlen']}" for a in x.get("addr_info", [])
                                if not (a.get("family") == "inet6" and a.get("scope") == "link"))
            for x in _ip_json(ns, "addr", "show")}


def routes(ns: str | None = None) -> list[str]:
    """Without `linkdown` (carrier comes and goes, the route does not) and
    without the kernel's IPv6 link-local autoconfiguration."""
    lines = (line.replace(" linkdown", "").strip()
             for line in _out(["ip", "route", "show", "table", "all"], ns).splitlines())
    return sorted(line for line in lines if not line.startswith(_AUTOCONF_ROUTES))


def iptables(backend: str, ns: str | None = None) -> list[str]:
    return [_COUNTERS.sub("[0:0]", line) for line in _out([f"iptables-{backend}-save"], ns).splitlines()
            if line and not line.startswith("#")]


def nftables(ns: str | None = None) -> list[str]:
    return [_NFT_COUNTER.sub("counter", line) for line in _out(["nft", "list", "ruleset"], ns).splitlines()]


def sysctls(ns: str | None = None) -> dict[str, str]:
    """ip_forward, every interface's proxy_arp and proxy_delay, br_netfilter's switch."""
    script = ("cd /proc/sys/net && for f in ipv4/ip_forward ipv4/conf/*/proxy_arp ipv4/neigh/*/proxy_delay "
              "bridge/bridge-nf-call-iptables; do [ -e \"$f\" ] && echo \"$f=$(cat \"$f\")\"; done; true")
    return dict(line.split("=", 1) for line in _out(["sh", "-c", script], ns).splitlines() if "=" in line)


def netns_names() -> list[str]:
    return sorted(x["name"] for x in _ip_json(None, "netns", "list"))


def mounts(mountinfo: Path = Path("/proc/self/mountinfo")) -> list[str]:
    found = []
    for line in mountinfo.read_text().splitlines():
        fields = line.split()
        point, fstype = fields[4], fields[fields.index("-") + 1]
        if point in _ENGINE_MOUNTS:
            continue
        if fstype in _MOUNT_TYPES or any(point == r or point.startswith(r + "/") for r in _MOUNT_ROOTS):
            found.append(f"{point} {fstype}")
    return sorted(found)


def binfmt(root: Path = Path("/proc/sys/fs/binfmt_misc")) -> dict[str, str]:
    """Entries and their first line (enabled/disabled), when binfmt_misc is mounted."""
    if not (root / "register").exists():
        return {"(not mounted)": ""}
    return {p.name: p.read_text().splitlines()[0] for p in sorted(root.iterdir())
            if p.name not in ("register", "status")}


def path_kind(path: Path) -> str:
    if path.is_symlink():
        return "symlink"
    if path.is_dir():
        return "directory"
    if path.is_file():
        return "file"
    return "other" if path.exists() else "absent"


def run_paths(run: Path = Path("/run")) -> dict[str, str]:
    """/run/xtables.lock and the /run/bridgelab tree, each path with its kind."""
    found = {"xtables.lock": path_kind(run / "xtables.lock"), "bridgelab": path_kind(run / "bridgelab")}
    if (run / "bridgelab").is_dir():
        found |= {str(p.relative_to(run)): path_kind(p) for p in sorted((run / "bridgelab").rglob("*"))}
    return found


def docker_objects() -> dict[str, list[str]]:
    if not Path(DOCKER).exists() or subprocess.run([DOCKER, "info"], capture_output=True).returncode != 0:
        return {"engine": ["not running"]}
    listings = {"containers": ["ps", "-a", "--format", "{{.ID}} {{.Names}}"],
                "volumes": ["volume", "ls", "--format", "{{.Name}}"],
                "networks": ["network", "ls", "--format", "{{.ID}} {{.Name}}"]}
    return {k: sorted(_out([DOCKER, *argv]).splitlines()) for k, argv in listings.items()}


def qemu_processes(proc: Path = Path("/proc")) -> list[str]:
    found = []
    for stat in proc.glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:
            continue
        comm, rest = text[text.index("(") + 1:text.rindex(")")], text.rsplit(")", 1)[1].split()
        if comm.startswith("qemu-system") and rest[0] != "Z":
            found.append(f"{stat.parent.name} {comm} started {rest[19]}")
    return sorted(found)


def capture(ns: str | None = None, run: Path = Path("/run")) -> dict[str, Any]:
    """The whole state; `ns` reads the network sections from that namespace
    (and leaves out what is host-wide)."""
    state: dict[str, Any] = {
        "links": links(ns), "addresses": addresses(ns), "routes": routes(ns),
        "iptables-nft": iptables("nft", ns), "iptables-legacy": iptables("legacy", ns), "nftables": nftables(ns),
        "sysctls": sysctls(ns), "run": run_paths(run),
    }
    if ns is None:
        state |= {"netns": netns_names(), "mounts": mounts(), "binfmt_misc": binfmt(), "docker": docker_objects(),
                  "qemu": qemu_processes()}
    return state


def differences(before: dict[str, Any], after: dict[str, Any]) -> list[str]:
    """Pure: one line per changed item, `section: - old` / `section: + new`."""
    out = []
    for section in sorted(set(before) | set(after)):
        old, new = before.get(section), after.get(section)
        if old == new:
            continue
        if isinstance(old, dict) and isinstance(new, dict):
            for key in sorted(set(old) | set(new)):
                if old.get(key) != new.get(key):
                    out.append(f"{section}: {key}: {old.get(key, '(absent)')!r} -> {new.get(key, '(absent)')!r}")
        elif isinstance(old, list) and isinstance(new, list):
            changed = [f"{section}: - {x}" for x in old if x not in new] + [f"{section}: + {x}" for x in new
                                                                            if x not in old]
            out += changed or [f"{section}: the same lines in another order (or repeated)"]
        else:
            out.append(f"{section}: {old!r} -> {new!r}")
    return out


__all__ = ["capture", "differences"]
