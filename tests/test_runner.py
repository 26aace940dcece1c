"""The lab runner in-process: real LabRunner, real GuestProcess (QMP,
shutdown, exit reasons) and real Console, against tests/fakeqemu.py running
tests/fakeguest.py (a pty with real bash) with tests/fakenm.py's `nmcli`,
`ip`, `ping` and `systemctl`. The host side is a recording stand-in, so no
root and no TCG: the orchestration is tested in the pure tier, in seconds."""

from __future__ import annotations

import asyncio
import ipaddress
import itertools
import json
import os
import subprocess
import sys
from pathlib import Path
from types import TracebackType
from typing import Any, Awaitable, Callable

import pytest
from bridgelab.api.schemas import AddGuest, ExecRequest, NetworkRequest
from bridgelab.errors import GuestBusy, LoginIncorrect
from bridgelab.guest.process import GuestProcess
from bridgelab.host import firewall
from bridgelab.host.ledger import Ledger, ProcessEntry
from bridgelab.host.links import proc_start_time
from bridgelab.lab.loader import LabSource
from bridgelab.lab.runner import LabRunner
from bridgelab.lab.states import GuestState
from bridgelab.model.plan import GuestPlan, HostFacts, UnderlayFacts, make_plan
from bridgelab.model.spec import Arch, parse_lab_data

from . import fakenm
from .test_plan import image

FAKEQEMU = Path(__file__).with_name("fakeqemu.py")
IMAGE = image(Arch.riscv64)  # login root / pw
HOST = HostFacts(arch="x86_64", kvm=False)
T = 30.0  # generous bound for every wait: these take well under a second each


class FakeHost:
    """HostSide's interface, recording what the runner asks of it."""

    def __init__(self, state_dir: Path, name: str):
        self.ledger_path = state_dir / "ledger.json"
        self.ledger: Ledger | None = None
        self.ruleset = firewall.Ruleset(firewall.lab_tag(name))
        self.firewall_hints: list[str] = []
        self.events: list[tuple[Any, ...]] = []

    def __enter__(self) -> FakeHost:
        self.ledger_path.parent.mkdir(parents=True, exist_ok=True)  # the real one's lock creates it
        self.ledger = Ledger(self.ledger_path)
        self.events.append(("up",))
        return self

    def __exit__(self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        assert self.ledger is not None
        self.events.append(("down", [x.what for x in self.ledger.of(ProcessEntry)]))

    def add_tap(self, tap: str) -> None:
        self.events.append(("add_tap", tap))

    def remove_tap(self, tap: str) -> None:
        self.events.append(("remove_tap", tap))

    def move_route(self, old: ipaddress.IPv4Address | None, new: ipaddress.IPv4Address | None) -> None:
        self.events.append(("move_route", old, new))


class FakeQemu(GuestProcess):
    """The real GuestProcess with tests/fakeqemu.py for qemu and no overlay."""

    def __init__(self, plan: GuestPlan, ledger: Ledger, bin_dir: Path, qemu_args: list[str],
                 guest_args: list[str]):
        super().__init__(plan, ledger)
        self.bin_dir, self.qemu_args, self.guest_args = bin_dir, qemu_args, guest_args

    def prepare(self, fresh: bool = True) -> None:
        p = self.plan.paths
        p.dir.mkdir(parents=True, exist_ok=True)
        for f in p.sockets:
            f.unlink(missing_ok=True)

    def spawn(self, extra: tuple[str, ...] = ()) -> None:
        p = self.plan.paths
        env = {**os.environ, "PATH": f"{self.bin_dir}:{os.environ['PATH']}", "FAKE_MAC": self.plan.mac,
               "FAKE_NM_STATE": str(p.dir)}
        argv = [sys.executable, str(FAKEQEMU), "--qmp", str(p.qmp_sock), "--console", str(p.console_sock),
                "--agent", str(p.agent_sock), *self.qemu_args, "--", "--password", "pw", *self.guest_args]
        with open(p.stderr, "wb") as err:
            self.popen = subprocess.Popen(argv, stdout=err, stderr=err, env=env)
        start_time = proc_start_time(self.popen.pid)
        assert start_time is not None
        self.ledger.add(ProcessEntry(pid=self.popen.pid, start_time=start_time, what=f"qemu {self.plan.name}"))


class Lab:
    def __init__(self, tmp: Path, guests: list[dict[str, Any]], qemu_args: dict[str, list[str]] | None = None,
                 guest_args: dict[str, list[str]] | None = None, peer: tuple[str, int] | None = None,
                 peer_token: str | None = None):
        """`peer`: (address, API port) of one peer host, reached on this machine."""
        data: dict[str, Any] = {"name": "t", "bridge": {"name": "br0", "address": "10.198.101.114/24"},
                                "guests": [{"image": "img", "arch": "riscv64", **g} for g in guests]}
        host = HOST
        if peer is not None:
            data["peers"] = {"hosts": ["192.0.2.1"], "api_port": peer[1]}  # resolved below, as detect would
            host = HostFacts(arch="x86_64", kvm=False, underlay=UnderlayFacts(
                interface="lo", local=ipaddress.IPv4Address("127.0.0.1"), mtu=65536,
                peers=(ipaddress.IPv4Address(peer[0]),)))
        spec = parse_lab_data(data)
        plan = make_plan(spec, {"img": IMAGE}, host, tmp / "state")
        source = LabSource(spec=spec, images={"img": IMAGE}, host=host, base_dir=tmp, source_hash="h")
        self.host = FakeHost(plan.state_dir, plan.name)
        bin_dir = tmp / "bin"
        fakenm.install(bin_dir)
        qa, ga = qemu_args or {}, guest_args or {}

        def factory(p: GuestPlan, ledger: Ledger) -> GuestProcess:
            return FakeQemu(p, ledger, bin_dir, qa.get(p.name, []), ga.get(p.name, []))
        self.runner = LabRunner(plan, source, shutdown_timeout=2.0, host=self.host,
                                process_factory=factory, peer_token=peer_token)

    def run(self, scenario: Callable[[LabRunner], Awaitable[None]]) -> None:
        """The daemon's life: host side, start, the scenario, stop, host side undone."""
        async def life() -> None:
            self.runner.start_guests()
            try:
                await asyncio.wait_for(scenario(self.runner), 60)
            finally:
                await self.runner.stop()
        with self.runner.hosted():
            asyncio.run(life())

    def nm_state(self, name: str) -> dict[str, Any]:
        return json.loads((self.runner.plan.state_dir / "guests" / name / "state.json").read_text())

    def events(self, name: str, tool: str = "systemctl") -> list[str]:
        """What the guest was asked to do with `tool` (systemctl: power)."""
        f = self.runner.plan.state_dir / "guests" / name / "events"
        return [e for e in f.read_text().splitlines() if e.split()[0] == tool] if f.exists() else []


async def settle(runner: LabRunner) -> None:
    settled, _ = await runner.wait(None, T)
    assert settled, {n: (g.state, g.reason) for n, g in runner.guests.items()}


def two(**extra: Any) -> list[dict[str, Any]]:
    return [{"name": "rv1", "ip": "10.198.101.10", **extra}, {"name": "rv2", "ip": "10.198.101.11"}]


def test_bring_up_goes_through_every_state_in_order_and_the_mesh_waits_for_both(tmp_path):
    lab = Lab(tmp_path, two())

    async def scenario(r: LabRunner) -> None:
        await settle(r)
        order = ["booting", "login", "configuring", "verifying", "ready"]
        for g in r.guests.values():
            assert g.state is GuestState.ready, g.reason
            assert [g.timestamps[s] for s in order] == sorted(g.timestamps[s] for s in order)
            assert {"qemu_started", "login_prompt", "logged_in", "configured", "mesh_verified"} <= set(g.stages)
            assert g.mesh == {"10.198.101.114": True, **{str(o.plan.ip.ip): True for o in r.guests.values()
                                                          if o is not g}}
        # The mesh check starts only once no guest is still on its way.
        last_configured = max(g.timestamps["verifying"] for g in r.guests.values())
        assert all(g.stages["mesh_verified"] >= last_configured for g in r.guests.values())
    lab.run(scenario)
    assert lab.nm_state("rv1")["live"] == "10.198.101.10/24" and lab.nm_state("rv2")["live"] == "10.198.101.11/24"
    # The NIC was looked up once udev had initialized it (it may still be
    # being renamed), and udev's whole queue was not waited for.
    assert lab.events("rv1", "udevadm") == ["udevadm info -q property -p /sys/class/net/enp0s1"]
    # The NIC had no profile active: NetworkManager's autoconnect started the
    # new one, and it was not started a second time on top (which would take
    # the address away again while the mesh check pings it).
    assert lab.events("rv1", "busctl") == []
    profile = lab.nm_state("rv1")["profiles"]["bridgelab-" + lab.runner.plan.guests[0].mac.replace(":", "")]
    assert profile["ipv4.method"] == "manual" and profile["ipv4.addresses"] == "10.198.101.10/24"


def test_with_one_slot_guests_log_in_and_configure_one_after_another(tmp_path, monkeypatch):
    """BRIDGELAB_CONFIGURE_CONCURRENCY=1: every guest boots to its login
    prompt at once, but the next user name is typed only once the guest
    before is configured (login(1)'s timer starts with it)."""
    monkeypatch.setenv("BRIDGELAB_CONFIGURE_CONCURRENCY", "1")
    lab = Lab(tmp_path, [*two(), {"name": "rv3", "ip": "10.198.101.12"}])

    async def scenario(r: LabRunner) -> None:
        await settle(r)
        guests = sorted(r.guests.values(), key=lambda g: g.stages["turn"])
        assert all(g.state is GuestState.ready for g in guests), [(g.state, g.reason) for g in guests]
        for before, after in itertools.pairwise(guests):
            assert after.stages["turn"] >= before.stages["configured"], (before.stages, after.stages)
        # ...while all of them had booted to their prompt before the first was done
        assert max(g.stages["login_prompt"] for g in guests) < guests[0].stages["configured"]
    lab.run(scenario)


def test_with_one_boot_slot_each_qemu_runs_only_once_the_one_before_shows_its_prompt(tmp_path, monkeypatch):
    """BRIDGELAB_BOOT_CONCURRENCY=1: every qemu is started at once, paused;
    the next one runs (its boot_slot stage) only after the guest before it
    reached its login prompt, and every guest still gets ready."""
    monkeypatch.setenv("BRIDGELAB_BOOT_CONCURRENCY", "1")
    lab = Lab(tmp_path, [*two(), {"name": "rv3", "ip": "10.198.101.12"}],
              guest_args={n: ["--firmware", "0.3"] for n in ("rv1", "rv2", "rv3")})

    async def scenario(r: LabRunner) -> None:
        await settle(r)
        guests = sorted(r.guests.values(), key=lambda g: g.stages["boot_slot"])
        assert all(g.state is GuestState.ready for g in guests), [(g.state, g.reason) for g in guests]
        for before, after in itertools.pairwise(guests):
            assert after.stages["boot_slot"] >= before.stages["login_prompt"], (before.stages, after.stages)
            assert after.stages["firmware"] >= after.stages["boot_slot"]  # paused until then
        assert max(g.stages["qemu_started"] for g in guests) < guests[0].stages["login_prompt"]
        assert r.ctx.boot_slots.free == 1
    lab.run(scenario)


async def stage_seen(g: Any, stage: str) -> float:
    for _ in range(int(T / 0.1)):
        if stage in g.stages:
            return float(g.stages[stage])
        await asyncio.sleep(0.1)
    raise AssertionError(f"{g.plan.name} never reached {stage}: {g.stages}")


def test_a_guest_its_agent_configured_is_ready_before_its_console_login(tmp_path):
    """The agent answers before getty's prompt: the guest is configured and
    meshed through it, ready, and only then logged into on its console (a
    login is seconds of PAM under TCG that nothing before ready needs).
    The console works afterwards; a guest without an agent logs in first."""
    attempts = tmp_path / "attempts"
    lab = Lab(tmp_path, two(), qemu_args={"rv1": ["--agent-after", "0"]},
              guest_args={"rv1": ["--attempts", str(attempts)]})

    async def scenario(r: LabRunner) -> None:
        await settle(r)
        rv1, rv2 = r.guests["rv1"], r.guests["rv2"]
        assert rv1.state is GuestState.ready and rv2.state is GuestState.ready, (rv1.reason, rv2.reason)
        assert rv1.console is not None
        # A console command at once: it logs in at the prompt itself, or
        # waits for the login under way; either way nobody logs in twice.
        assert await asyncio.to_thread(rv1.console.check, "echo first") == "first\n"
        logged_in = await stage_seen(rv1, "logged_in")
        assert rv1.stages["configured"] <= rv1.stages["mesh_verified"] <= rv1.timestamps["ready"] <= logged_in
        assert rv2.stages["logged_in"] <= rv2.stages["configured"]  # no agent: the console did it all
        await asyncio.wait_for(rv1.console_settled.wait(), T)
        assert rv1.console is not None and not rv1.console.at_login_prompt
        assert await asyncio.to_thread(rv1.console.check, "echo on the console") == "on the console\n"
        result = await r.exec("rv1", ExecRequest(argv=["echo", "by agent"]))
        assert (result.via, result.output) == ("agent", "by agent\n"), result
        assert attempts.read_text().splitlines() == ["user root", "password"]  # one login, not two
    lab.run(scenario)
    assert lab.nm_state("rv1")["live"] == "10.198.101.10/24"


def test_a_wrong_password_fails_a_guest_its_agent_made_ready_with_that_reason(tmp_path):
    lab = Lab(tmp_path, two(), qemu_args={"rv1": ["--agent-after", "0"]},
              guest_args={"rv1": ["--password", "something-else"]})

    async def scenario(r: LabRunner) -> None:
        await settle(r)
        rv1 = r.guests["rv1"]
        for _ in range(int(T / 0.1)):
            if rv1.state is GuestState.failed:
                break
            await asyncio.sleep(0.1)
        assert rv1.state is GuestState.failed and "Login incorrect" in (rv1.reason or ""), (rv1.state, rv1.reason)
        assert "ready" in rv1.timestamps and rv1.console_settled.is_set()
        assert r.guests["rv2"].state is GuestState.ready
    lab.run(scenario)


def test_after_a_reboot_the_nic_is_looked_up_once_udev_has_initialized_it(tmp_path):
    """A NIC whose driver loads from the root filesystem after the login (as
    under TCG with a root-disk-only initrd): the reboot's address check waits
    for udev instead of failing with "no interface with MAC"."""
    lab = Lab(tmp_path, two())

    async def scenario(r: LabRunner) -> None:
        await settle(r)
        rv1 = r.guests["rv1"]
        (rv1.plan.paths.dir / "nic_late").touch()
        await r.reboot("rv1")
        assert rv1.state is GuestState.ready, rv1.reason
        # after the reboot the NIC was asked for until it showed (fakenm.LATE_NIC_CALLS misses)
        assert int((rv1.plan.paths.dir / "link_calls").read_text()) > fakenm.LATE_NIC_CALLS
    lab.run(scenario)
    assert lab.events("rv1", "udevadm") == ["udevadm info -q property -p /sys/class/net/enp0s1"] * 2


def test_a_refused_login_fails_that_guest_only_and_says_why(tmp_path):
    lab = Lab(tmp_path, two(), guest_args={"rv2": ["--password", "something-else"]})

    async def scenario(r: LabRunner) -> None:
        await settle(r)
        assert r.guests["rv1"].state is GuestState.ready
        rv2 = r.guests["rv2"]
        assert rv2.state is GuestState.failed and "Login incorrect" in (rv2.reason or ""), rv2.reason
        assert r.guests["rv1"].mesh == {"10.198.101.114": True}  # a failed guest is not a peer
    lab.run(scenario)


def test_a_qemu_that_dies_fails_its_guest_with_qemus_own_words(tmp_path):
    lab = Lab(tmp_path, two(), qemu_args={"rv2": ["--crash-after", "0.3", "--status", "3"]},
              guest_args={"rv2": ["--never-prompt"]})

    async def scenario(r: LabRunner) -> None:
        await settle(r)
        rv2 = r.guests["rv2"]
        assert rv2.state is GuestState.failed
        assert rv2.reason is not None and rv2.reason.startswith("qemu exited with status 3: fakeqemu: guest "
                                                                "crashed on purpose"), rv2.reason
        assert r.guests["rv1"].state is GuestState.ready
    lab.run(scenario)


def test_a_guest_added_and_removed_at_runtime_gets_and_loses_its_tap_and_declared_state(tmp_path):
    lab = Lab(tmp_path, two())
    declared = tmp_path / "state" / "declared.json"

    async def scenario(r: LabRunner) -> None:
        await settle(r)
        g = await r.add_guest(AddGuest(name="rv3", image="img", arch=Arch.riscv64,
                                       ip=ipaddress.IPv4Address("10.198.101.12")))
        assert g.state is GuestState.booting
        assert ("add_tap", g.plan.tap) in lab.host.events
        assert "rv3" in [x["name"] for x in json.loads(declared.read_text())["lab"]["guests"]]
        settled, _ = await r.wait(["rv3"], T)
        assert settled and g.state is GuestState.ready, g.reason
        assert lab.nm_state("rv3")["live"] == "10.198.101.12/24"
        with pytest.raises(GuestBusy, match="already exists"):
            await r.add_guest(AddGuest(name="rv3", image="img", arch=Arch.riscv64,
                                       ip=ipaddress.IPv4Address("10.198.101.13")))
        assert lab.events("rv3") == []
        await r.remove_guest("rv3")
        assert "rv3" not in r.guests and g.state is GuestState.stopped
        assert ("remove_tap", g.plan.tap) in lab.host.events
        assert g.process.exited() == 0  # powered off through its shell, not killed
        assert "rv3" not in [x["name"] for x in json.loads(declared.read_text())["lab"]["guests"]]
        assert not g.plan.paths.dir.exists()
    lab.run(scenario)


def test_a_second_change_while_a_network_change_runs_is_refused_not_queued(tmp_path):
    lab = Lab(tmp_path, two())

    async def scenario(r: LabRunner) -> None:
        await settle(r)
        rv1 = r.guests["rv1"]
        (rv1.plan.paths.dir / "delay").write_text("1.5")  # the activation takes 1.5 s
        first = asyncio.create_task(r.set_network("rv1", NetworkRequest(ip=ipaddress.IPv4Address("10.198.101.20"))))
        while rv1.state is not GuestState.configuring:
            await asyncio.sleep(0.02)
        with pytest.raises(GuestBusy):
            await r.set_network("rv1", NetworkRequest(ip=ipaddress.IPv4Address("10.198.101.21")))
        with pytest.raises(GuestBusy):
            await r.reboot("rv1")
        with pytest.raises(GuestBusy):
            await r.exec("rv1", ExecRequest(argv=["true"]))
        await first
        assert rv1.state is GuestState.ready and str(rv1.plan.ip.ip) == "10.198.101.20"
        assert lab.nm_state("rv1")["live"] == "10.198.101.20/24"
        # The profile was active with the old address: activated again, once.
        assert lab.events("rv1", "busctl") == [f"busctl ActivateConnection bridgelab-{rv1.plan.mac.replace(':', '')}"]
        result = await r.exec("rv1", ExecRequest(argv=["echo", "it's $HOME"]))
        assert (result.exit_code, result.output.strip(), result.via) == (0, "it's $HOME", "console")
    lab.run(scenario)


def test_shutdown_powers_guests_off_through_their_shells_before_the_host_side_goes(tmp_path):
    lab = Lab(tmp_path, two())
    guests: dict[str, Any] = {}

    async def scenario(r: LabRunner) -> None:
        await settle(r)
        guests.update(r.guests)
    lab.run(scenario)
    for name, g in guests.items():
        assert g.state is GuestState.stopped
        assert g.process.exited() == 0
        assert lab.events(name) == ["systemctl poweroff"]
    assert lab.host.events[0] == ("up",)
    assert lab.host.events[-1] == ("down", [])  # no qemu left in the ledger when the host side goes


def test_a_guest_that_logs_its_console_out_stays_drivable(tmp_path):
    """openEuler's console (banner twice, a slow coloured welcome, its prompt)
    with a 1 s TMOUT: exec, reboot and poweroff each find the shell gone,
    log in again, and never type anything into the login prompt."""
    attempts = tmp_path / "attempts"
    lab = Lab(tmp_path, two(), guest_args={"rv1": ["--openeuler", "--tmout", "1", "--welcome-delay", "0.1",
                                                   "--attempts", str(attempts)]})

    async def scenario(r: LabRunner) -> None:
        await settle(r)
        rv1 = r.guests["rv1"]
        assert rv1.state is GuestState.ready, rv1.reason
        await asyncio.sleep(1.5)
        result = await r.exec("rv1", ExecRequest(argv=["sh", "-c", "echo out; exit 7"]))
        assert (result.exit_code, result.output, result.via) == (7, "out\n", "console")
        await asyncio.sleep(1.5)
        await r.reboot("rv1")
        assert rv1.state is GuestState.ready, rv1.reason
        await asyncio.sleep(1.5)
    lab.run(scenario)
    assert lab.events("rv1") == ["systemctl reboot", "systemctl poweroff"]
    assert lab.runner.guests["rv1"].process.exited() == 0  # powered off through its shell, not killed
    seen = attempts.read_text().splitlines()
    assert set(seen) == {"user root", "password", "logout"}, seen  # never a command typed as a user name
    assert seen.count("logout") >= 3 and seen.count("user root") == seen.count("password")


def test_a_refused_password_is_sent_once_and_never_again(tmp_path):
    attempts = tmp_path / "attempts"
    lab = Lab(tmp_path, two(), guest_args={"rv2": ["--password", "other", "--openeuler", "--lockout", "60",
                                                   "--attempts", str(attempts)]})

    async def scenario(r: LabRunner) -> None:
        await settle(r)
        rv2 = r.guests["rv2"]
        assert rv2.state is GuestState.failed and "not tried again" in (rv2.reason or ""), rv2.reason
        with pytest.raises(GuestBusy):
            await r.exec("rv2", ExecRequest(argv=["true"]))
    lab.run(scenario)
    assert attempts.read_text().splitlines() == ["user root", "password"]


def test_a_guest_whose_getty_systemd_gave_up_on_fails_at_once_with_that_line(tmp_path):
    lab = Lab(tmp_path, two(), guest_args={"rv2": ["--getty-fails"]})

    async def scenario(r: LabRunner) -> None:
        await settle(r)  # long before the 600 s boot deadline
        rv2 = r.guests["rv2"]
        assert rv2.state is GuestState.failed, rv2.reason
        assert (rv2.reason or "").startswith("rv2: boot failed: [ TIME ] Timed out waiting for device "
                                             "dev-ttyS0.device"), rv2.reason
        assert r.guests["rv1"].state is GuestState.ready
    lab.run(scenario)


def test_a_guest_without_a_network_manager_bridgelab_knows_fails_with_that_reason(tmp_path):
    lab = Lab(tmp_path, two())
    for g in lab.runner.plan.guests:  # the fake guests' state directories, before they boot
        g.paths.dir.mkdir(parents=True, exist_ok=True)
    (lab.runner.plan.guests[1].paths.dir / "manager").write_text("connman\n")

    async def scenario(r: LabRunner) -> None:
        await settle(r)
        rv2 = r.guests["rv2"]
        assert rv2.state is GuestState.failed and "unsupported network manager" in (rv2.reason or ""), rv2.reason
        assert r.guests["rv1"].state is GuestState.ready
    lab.run(scenario)


def test_a_password_refused_at_a_re_login_fails_the_guest_after_one_attempt(tmp_path):
    """The password changed in the guest, then the shell logged out: the next
    exec logs in once, is refused, and the guest fails saying why."""
    attempts = tmp_path / "attempts"
    lab = Lab(tmp_path, [{"name": "rv1", "ip": "10.198.101.10"}],
              guest_args={"rv1": ["--tmout", "2", "--password-after-logout", "changed", "--attempts", str(attempts)]})

    async def scenario(r: LabRunner) -> None:
        await settle(r)
        rv1 = r.guests["rv1"]
        assert rv1.state is GuestState.ready, rv1.reason
        await asyncio.sleep(2.5)
        with pytest.raises(LoginIncorrect):
            await r.exec("rv1", ExecRequest(argv=["true"]))
        assert rv1.state is GuestState.failed and "not tried again" in (rv1.reason or ""), rv1.reason
        with pytest.raises(GuestBusy):
            await r.exec("rv1", ExecRequest(argv=["true"]))
    lab.run(scenario)
    seen = attempts.read_text().splitlines()
    assert seen[seen.index("logout"):].count("password") == 1, seen


def test_no_key_reaches_the_firmware_so_autoboot_runs_on_boot_and_on_reboot(tmp_path):
    """A U-Boot that is quiet for 9 s before its countdown: the login's 8 s
    probe newline would stop the autoboot, and did on a real reboot."""
    attempts = tmp_path / "attempts"
    lab = Lab(tmp_path, [{"name": "rv1", "ip": "10.198.101.10"}],
              guest_args={"rv1": ["--firmware", "9", "--attempts", str(attempts)]})

    async def scenario(r: LabRunner) -> None:
        await settle(r)
        rv1 = r.guests["rv1"]
        assert rv1.state is GuestState.ready, rv1.reason
        await r.reboot("rv1")
        assert rv1.state is GuestState.ready, rv1.reason
        assert rv1.stages["firmware"] < rv1.stages["kernel"] < rv1.stages["login_prompt"]
    lab.run(scenario)
    seen = attempts.read_text().splitlines()
    assert "autoboot stopped" not in seen and seen.count("password") == 2, seen


def test_a_stopped_autoboot_is_resumed_once_and_noted(tmp_path):
    attempts = tmp_path / "attempts"
    lab = Lab(tmp_path, [{"name": "rv1", "ip": "10.198.101.10"}],
              guest_args={"rv1": ["--firmware", "0", "--autoboot-stops", "--attempts", str(attempts)]})

    async def scenario(r: LabRunner) -> None:
        await settle(r)
        assert r.guests["rv1"].state is GuestState.ready, r.guests["rv1"].reason
    lab.run(scenario)
    assert attempts.read_text().splitlines()[:3] == ["autoboot stopped", "boot", "user root"]
    transcript = (lab.runner.plan.guests[0].paths.dir / "transcript.log").read_text()
    assert transcript.count("[bridgelab] the firmware's autoboot was stopped; typing 'boot'") == 1
