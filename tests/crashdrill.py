"""SIGKILL `bridgelab serve` at a chosen moment, start it again, and check
that it converges: the lab as declared, every guest ready, no object twice.

Shared by tests/test_crash.py (which asserts) and bench/crash.py (which
reports the times and the leftovers as a table). A drill owns one network
namespace and one state directory; the daemon, its qemu processes and
everything it creates live there, and `close()` removes them.

The moments are the guest states of bring-up (booting, login, configuring,
verifying, ready) and the middle of three runtime changes: adding a guest
(while it boots), `PUT /guests/{name}/network` (while it configures) and
removing a guest (while it powers off). Run alone, each restart must reach
ready and a SIGTERM after it leave nothing behind; chained (the test tier),
the kills follow each other in one lab, as in a crash loop, and one SIGTERM
at the end must leave nothing behind.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import httpx
import yaml
from bridgelab.host import firewall

from .conftest import links_in, netns

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "two-riscv64.yaml"
LAB = "crash"  # the example lab under its own name: its rules carry this tag
BRIDGE = "br0"
READY_TIMEOUT = 900.0
STAGE_TIMEOUT = 600.0

Guests = dict[str, dict[str, Any]]


@dataclass
class Leftovers:
    """What a killed daemon left for the next start to sweep."""

    qemu: int
    links: list[str]
    tagged_rules: int
    ledger: dict[str, int]

    def summary(self) -> str:
        kinds = ", ".join(f"{n} {k}" for k, n in sorted(self.ledger.items()))
        return (f"{self.qemu} qemu, links {' '.join(self.links) or '-'}, {self.tagged_rules} tagged rules; "
                f"ledger: {kinds or 'empty'}")


@dataclass
class Outcome:
    scenario: str
    killed_at: str  # what the guests were doing at the kill
    left: Leftovers
    expected: dict[str, str]  # guest -> ip the restart must reach
    ready_after: float  # seconds from the restart to every guest ready (or, for a chained
    # bring-up kill, to the restart's own qemu started)
    problems: list[str] = field(default_factory=list)  # empty when it converged

    @property
    def converged(self) -> bool:
        return not self.problems


class Drill:
    def __init__(self, tmp: Path, guests: int | None = None, cpus: int | None = None):
        """`guests`: the first so many guests of the example lab (all by
        default); `cpus`: their vCPUs, if not the example's."""
        tmp.mkdir(parents=True, exist_ok=True)
        spec = yaml.safe_load(EXAMPLE.read_text())
        spec["name"] = LAB
        spec["guests"] = spec["guests"][:guests]
        for g in spec["guests"]:
            g["cpus"] = cpus or g["cpus"]
        self.lab_file = tmp / "lab.yaml"
        self.lab_file.write_text(yaml.safe_dump(spec))
        self.state = tmp / "s"
        self.sock = tmp / "api.sock"
        self.log = tmp / "serve.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.api = httpx.Client(transport=httpx.HTTPTransport(uds=str(self.sock)), base_url="http://b", timeout=60)
        # The namespace last: nothing after it can fail before close() owns it.
        self._stack = contextlib.ExitStack()
        self._stack.callback(self.api.close)
        self.ns = self._stack.enter_context(netns("blcr"))
        self._stack.callback(self._stop_quietly)

    # ------------------------------------------------------------ the daemon

    def start(self) -> None:
        argv = ["ip", "netns", "exec", self.ns, sys.executable, "-m", "bridgelab.cli", "serve", "--lab",
                str(self.lab_file), "--listen", f"unix:{self.sock}", "--state-dir", str(self.state),
                "--token-file", str(self.state / "api-token")]  # never /run, outside the tests too
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT)

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def guests(self) -> Guests:
        return {g["name"]: g for g in self.api.get("/guests").raise_for_status().json()}

    def wait_for(self, what: str, predicate: Callable[[Guests], bool], timeout: float = STAGE_TIMEOUT,
                 every: float = 0.02) -> Guests:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.running():
                raise AssertionError(f"serve exited while waiting for {what}:\n{self.tail()}")
            try:
                guests = self.guests()
                if guests and predicate(guests):
                    return guests
            except httpx.TransportError:
                pass
            time.sleep(every)
        raise AssertionError(f"no {what} within {timeout:.0f}s:\n{self.tail()}")

    def kill(self) -> Leftovers:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)  # the daemon, by the PID this drill started
        self.proc.wait()
        return self.leftovers()

    def stop(self) -> int:
        """SIGTERM, as `docker compose down` does; the daemon's exit status."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(180)

    def _stop_quietly(self) -> None:
        if self.running():
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.stop()
        if self.running():
            assert self.proc is not None
            self.proc.kill()
            self.proc.wait()
        for pid in self.qemu_pids():  # a failed drill must not leave guests behind: ours, by PID
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)

    def close(self) -> None:
        self._stack.close()

    def tail(self) -> str:
        return self.log.read_text(errors="replace")[-3000:] if self.log.exists() else ""

    # ------------------------------------------------------------ what is there

    def qemu_pids(self) -> list[int]:
        """Running qemu processes of this drill's lab (their argv names its state dir)."""
        found = []
        for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
            try:
                args = cmdline.read_bytes().split(b"\0")
                state = (cmdline.parent / "stat").read_text().rsplit(")", 1)[1].split()[0]
            except OSError:
                continue
            if args[0].startswith(b"qemu-system") and state != "Z" and any(str(self.state).encode() in a
                                                                          for a in args):
                found.append(int(cmdline.parent.name))
        return sorted(found)

    def ledger(self) -> list[dict[str, Any]]:
        path = self.state / "ledger.json"
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []

    def tagged_rules(self) -> int:
        saves = "".join(subprocess.run(["ip", "netns", "exec", self.ns, f"iptables-{b}-save"], capture_output=True,
                                       text=True).stdout for b in firewall.BACKENDS)
        return sum(1 for line in saves.splitlines() if line.startswith("-A ") and firewall.lab_tag(LAB) in line)

    def leftovers(self) -> Leftovers:
        kinds: dict[str, int] = {}
        for e in self.ledger():
            kinds[e["kind"]] = kinds.get(e["kind"], 0) + 1
        return Leftovers(qemu=len(self.qemu_pids()), links=sorted(set(links_in(self.ns)) - {"lo"}),
                         tagged_rules=self.tagged_rules(), ledger=kinds)

    # ------------------------------------------------------------ convergence

    def restart_and_check(self, expected: dict[str, str], before: list[int], settle: bool = True
                          ) -> tuple[float, list[str]]:
        """Start serve again; (seconds until checked, what is wrong). `before`:
        the qemu PIDs the killed run left, which must all be gone. With
        `settle`, every guest must come up ready; without, the check comes as
        soon as the restart has swept and started its own qemu, and bring-up
        goes on (for the next kill)."""
        t0 = time.monotonic()
        self.start()
        if settle:
            guests = self.wait_for("all guests settled",
                                   lambda g: all(x["state"] in ("ready", "failed") for x in g.values()),
                                   READY_TIMEOUT, every=0.2)
        else:
            guests = self.wait_for("the restart's own qemu started", lambda g: all(
                "qemu_started" in x["stages"] and x["pid"] not in before for x in g.values()), every=0.2)
        elapsed = time.monotonic() - t0
        return elapsed, self.problems(guests, expected, before, settled=settle)

    def problems(self, guests: Guests, expected: dict[str, str], before: list[int], settled: bool = True
                 ) -> list[str]:
        found = []
        addresses = {n: g["ip"] for n, g in guests.items()}
        if addresses != expected:
            found.append(f"guests {addresses}, expected {expected}")
        if settled and (not_ready := {n: g["state"] for n, g in guests.items() if g["state"] != "ready"}):
            found.append(f"guests not ready: {not_ready}")
        taps = {g["tap"] for g in guests.values()}
        if set(links_in(self.ns)) != {"lo", BRIDGE, *taps}:
            found.append(f"links {sorted(links_in(self.ns))}, expected lo, {BRIDGE} and taps {sorted(taps)}")
        pids, reported = self.qemu_pids(), sorted(g["pid"] or 0 for g in guests.values())
        if len(pids) != len(expected) or reported != pids:
            found.append(f"qemu processes {pids}, expected one per declared guest ({len(expected)}), "
                         f"the ones the API reports: {reported}")
        if survivors := sorted(set(before) & set(pids)):
            found.append(f"qemu of the killed run still running: {survivors}")
        recorded = sorted((e["kind"], e.get("ifname") or e.get("pid") or e.get("cmd")) for e in self.ledger())
        if len(recorded) != len(set(recorded)):
            found.append(f"ledger has duplicates: {recorded}")
        jumps = [line for line in self._saves().splitlines() if line.startswith("-A ")
                 and firewall.lab_tag(LAB) in line and "-j BL-" in line]
        if len(jumps) > 1:
            found.append(f"tagged jumps duplicated: {jumps}")
        return found

    def _saves(self) -> str:
        return "".join(subprocess.run(["ip", "netns", "exec", self.ns, f"iptables-{b}-save"], capture_output=True,
                                      text=True).stdout for b in firewall.BACKENDS)

    def clean_after_sigterm(self) -> list[str]:
        """SIGTERM the running daemon: it must exit 0 and leave nothing."""
        found = []
        if (rc := self.stop()) != 0:
            found.append(f"serve exited {rc}:\n{self.tail()}")
        left = self.leftovers()
        if left.qemu or left.links or left.tagged_rules or left.ledger:
            found.append(f"left after SIGTERM: {left.summary()}")
        return found


# ---------------------------------------------------------------- the scenarios


def ready_ips(guests: Guests) -> dict[str, str]:
    return {n: g["ip"] for n, g in guests.items()}


def _in_background(fn: Callable[[], object]) -> threading.Thread:
    """A request the kill will cut off: its error is the point, not a failure."""
    def run() -> None:
        with contextlib.suppress(httpx.HTTPError):
            fn()
    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t


def _ensure_ready(d: Drill) -> Guests:
    if not d.running():
        d.start()
    guests = d.wait_for("all guests settled", lambda g: all(x["state"] in ("ready", "failed") for x in g.values()),
                        READY_TIMEOUT, every=0.2)
    if any(g["state"] != "ready" for g in guests.values()):
        raise AssertionError(f"the lab is not ready to start the next scenario: "
                             f"{ {n: (g['state'], g['reason']) for n, g in guests.items()} }")
    return guests


# The bring-up's states in order. A guest its agent configured while it
# booted passes login, configuring and verifying within one step of the
# daemon, too fast for a poll to see: a kill "at" a state is at the first
# poll that sees a guest there or further on.
BRING_UP = ("booting", "login", "configuring", "verifying", "ready")


def _bring_up_until(d: Drill, state: str) -> tuple[Guests, dict[str, str]]:
    """A bring-up (of the stopped daemon, or the one a chained restart began),
    cut off by the kill as soon as a guest is in `state` (or past it). The
    API already lists every declared guest with its address."""
    if not d.running():
        d.start()
    if state == "booting":
        guests = d.wait_for("every qemu started", lambda g: all("qemu_started" in x["stages"] and x["state"] ==
                                                                "booting" for x in g.values()))
    else:
        at = BRING_UP.index(state)
        guests = d.wait_for(f"a guest in {state} or past it", lambda g: any(
            x["state"] in BRING_UP and BRING_UP.index(x["state"]) >= at for x in g.values()))
    return guests, ready_ips(guests)


def kill_during_bring_up(state: str) -> Callable[[Drill], tuple[str, dict[str, str]]]:
    def scenario(d: Drill) -> tuple[str, dict[str, str]]:
        guests, expected = _bring_up_until(d, state)
        return ", ".join(f"{n} {g['state']}" for n, g in guests.items()), expected
    return scenario


def kill_when_ready(d: Drill) -> tuple[str, dict[str, str]]:
    return "all ready", ready_ips(_ensure_ready(d))


def kill_mid_put_network(d: Drill) -> tuple[str, dict[str, str]]:
    expected = ready_ips(_ensure_ready(d))
    name = sorted(expected)[-1]
    new_ip = "10.198.101.60" if expected[name] != "10.198.101.60" else "10.198.101.61"
    _in_background(lambda: d.api.put(f"/guests/{name}/network", json={"ip": new_ip}, timeout=600))
    d.wait_for(f"{name} configuring", lambda g: g[name]["state"] == "configuring", 120)
    return f"{name} configuring its new address", {**expected, name: new_ip}


def kill_mid_remove(d: Drill) -> tuple[str, dict[str, str]]:
    expected = ready_ips(_ensure_ready(d))
    name = sorted(expected)[-1]
    _in_background(lambda: d.api.delete(f"/guests/{name}", timeout=600))
    d.wait_for(f"{name} stopping", lambda g: name not in g or g[name]["state"] in ("stopping", "stopped"), 120)
    return f"{name} powering off", {n: ip for n, ip in expected.items() if n != name}


def kill_mid_add(d: Drill) -> tuple[str, dict[str, str]]:
    expected = ready_ips(_ensure_ready(d))
    name = next(f"rv{i}" for i in range(2, 10) if f"rv{i}" not in expected)
    added = d.api.post("/guests", json={"name": name, "image": "debian-riscv64"}).raise_for_status().json()
    d.wait_for(f"{name}'s qemu started", lambda g: "qemu_started" in g[name]["stages"], 120)
    return f"{name} booting", {**expected, name: added["ip"]}


# Each scenario starts from the lab as the previous one declared it (the
# daemon resumes the declared state): the addition takes the lab to one guest
# more, the removal back.
SCENARIOS: dict[str, Callable[[Drill], tuple[str, dict[str, str]]]] = {
    "booting": kill_during_bring_up("booting"),
    "login": kill_during_bring_up("login"),
    "configuring": kill_during_bring_up("configuring"),
    "verifying": kill_during_bring_up("verifying"),
    "ready": kill_when_ready,
    "mid PUT network": kill_mid_put_network,
    "mid add": kill_mid_add,
    "mid remove": kill_mid_remove,
}
# Chained, a bring-up kill is not followed by a wait for ready: the next
# scenario kills the bring-up its restart began, as a crash loop would (the
# kill at "verifying" is the first whose restart must reach ready). One boot
# per scenario instead of two.
BRING_UP_GOES_ON = ("booting", "login", "configuring")


def run(d: Drill, scenario: str, chained: bool = False) -> Outcome:
    """Kill, restart, check the convergence. Alone (not `chained`), every
    restart must reach ready and a SIGTERM then leave nothing, so the next
    scenario starts from a stopped daemon. `chained` leaves the restarted
    daemon running for the next scenario, and only the last one stops it."""
    killed_at, expected = SCENARIOS[scenario](d)
    before = d.qemu_pids()
    left = d.kill()
    settle = not (chained and scenario in BRING_UP_GOES_ON)
    elapsed, problems = d.restart_and_check(expected, before, settle=settle)
    if not chained or scenario == list(SCENARIOS)[-1]:
        problems += d.clean_after_sigterm()
    return Outcome(scenario, killed_at, left, expected, elapsed, problems)


__all__ = ["BRING_UP_GOES_ON", "Drill", "Outcome", "SCENARIOS", "run"]
