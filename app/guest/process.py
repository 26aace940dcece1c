"""One qemu process: overlay, start, QMP, shutdown, exit detection."""

from __future__ import annotations

import asyncio
import logging
import subprocess
import time
from pathlib import Path

from qemu.qmp import QMPClient
from qemu.qmp.error import QMPError

from .. import proc
from ..errors import QemuStartError
from ..host.ledger import Ledger, ProcessEntry
from ..host.links import proc_start_time
from ..model.plan import GuestPlan
from . import qemu_argv, vmstate

log = logging.getLogger(__name__)
# qemu.qmp logs every failed connect at ERROR; bridgelab reports QMP trouble itself.
logging.getLogger("qemu.qmp").setLevel(logging.CRITICAL)


def tail(path: Path, limit: int = 2000) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(0, 2)
            f.seek(max(0, f.tell() - limit))
            return f.read().decode(errors="replace")
    except OSError:
        return ""


class GuestProcess:
    def __init__(self, plan: GuestPlan, ledger: Ledger):
        self.plan = plan
        self.ledger = ledger
        self.popen: subprocess.Popen[bytes] | None = None
        self.qmp: QMPClient | None = None

    @property
    def pid(self) -> int | None:
        return self.popen.pid if self.popen else None

    def prepare(self, fresh: bool = True) -> None:
        """A qcow2 overlay over the image, so the base is never written. A
        fresh start reverts the disk to the pristine image (the overlay and
        its snapshots stay); a stopped guest that starts again, or a restore,
        keeps the disk it had. An overlay that cannot be reverted is replaced."""
        p = self.plan.paths
        p.dir.mkdir(parents=True, exist_ok=True)
        for f in p.sockets:
            f.unlink(missing_ok=True)
        if not fresh and p.overlay.exists():
            why_not = vmstate.repair_leaks(self.plan)
            if why_not is None:
                return
            log.warning("guest %s: its overlay cannot be used (%s); a new one, from the image", self.plan.name,
                        why_not)
            vmstate.create_overlay(self.plan)
            return
        why_not = vmstate.reusable_overlay(self.plan)
        if why_not is None:
            vmstate.revert_to_base(self.plan)
        else:
            if p.overlay.exists():
                log.debug("guest %s: new overlay (%s)", self.plan.name, why_not)
            vmstate.create_overlay(self.plan)

    def spawn(self, extra: tuple[str, ...] = ()) -> None:
        """`extra`: arguments after the lab's, e.g. -loadvm for a warm start."""
        argv = [*qemu_argv.argv(self.plan), *extra]
        p = self.plan.paths
        p.stderr.write_text("")
        self.popen = proc.spawn(argv, stdout=p.stderr, stderr=p.stderr)
        start_time = proc_start_time(self.popen.pid)
        if start_time is not None:  # None: it already exited, and there is nothing to sweep
            self.ledger.add(ProcessEntry(pid=self.popen.pid, start_time=start_time, what=f"qemu {self.plan.name}"))

    def exited(self) -> int | None:
        return self.popen.poll() if self.popen else None

    def exit_reason(self) -> str | None:
        """Why the guest is gone, in qemu's own words; None while qemu runs."""
        rc = self.exited()
        if rc is None:
            return None
        return f"qemu exited with status {rc}: {self.stderr_tail() or '(no output)'}"

    def stderr_tail(self) -> str:
        return tail(self.plan.paths.stderr).strip()

    async def wait_sockets(self, timeout: float = 20.0) -> None:
        """Until qemu listens on its QMP socket; a qemu that exits first is a start failure."""
        deadline = time.monotonic() + timeout
        sock = str(self.plan.paths.qmp_sock)
        while True:
            if (reason := self.exit_reason()) is not None:
                raise QemuStartError(reason)
            if time.monotonic() > deadline:
                raise QemuStartError(f"qemu did not open {sock} within {timeout:.0f}s: {self.stderr_tail()}")
            if self.plan.paths.qmp_sock.exists():
                client = QMPClient(self.plan.name)
                try:
                    await client.connect(sock)
                    self.qmp = client
                    return
                except (QMPError, OSError):
                    pass  # created but not listening yet
            await asyncio.sleep(0.05)

    async def resume(self) -> None:
        """Start the CPUs of a qemu started with -S, once its console is read."""
        await self.execute("cont")

    async def execute(self, cmd: str, args: dict[str, object] | None = None) -> object:
        if self.qmp is None:
            raise QemuStartError("QMP is not connected")
        return await self.qmp.execute(cmd, args)

    async def wait_exit(self, timeout: float) -> int | None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            rc = self.exited()
            if rc is not None:
                return rc
            await asyncio.sleep(0.1)
        return self.exited()

    async def shutdown(self, timeout: float) -> str:
        """ACPI powerdown, repeated because a booting guest may miss it; then
        QMP quit; then SIGKILL. Returns how the guest ended."""
        if self.popen is None:
            return "never started"
        how = "exited"
        deadline = time.monotonic() + timeout
        while self.exited() is None and time.monotonic() < deadline:
            how = "powered down"
            await self._best_effort("system_powerdown")
            await self.wait_exit(min(3.0, max(0.0, deadline - time.monotonic())))
        if self.exited() is None:
            how = "quit"
            await self._best_effort("quit")
            await self.wait_exit(3)
        if self.exited() is None:
            how = "killed"
            await asyncio.to_thread(proc.stop, self.popen, 2.0)
        await self.close_qmp()
        for e in [e for e in self.ledger.of(ProcessEntry) if e.pid == self.popen.pid]:
            self.ledger.drop(e)
        log.info("guest %s %s", self.plan.name, how)
        return how

    async def _best_effort(self, cmd: str) -> None:
        # During shutdown qemu may be gone at any moment; qemu.qmp then raises
        # anything from EOFError to its own StateError. None of it matters here.
        try:
            await asyncio.wait_for(self.execute(cmd), 2)
        except Exception as e:  # noqa: BLE001
            log.debug("%s: QMP %s: %r", self.plan.name, cmd, e)

    async def close_qmp(self) -> None:
        if self.qmp is not None:
            try:
                await self.qmp.disconnect()
            except Exception as e:  # noqa: BLE001 - see _best_effort
                log.debug("%s: QMP disconnect: %r", self.plan.name, e)
            self.qmp = None
