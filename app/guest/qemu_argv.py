"""Per-architecture qemu facts and the argv builder. Pure."""

from __future__ import annotations

from dataclasses import dataclass

from ..model.images import BootStyle
from ..model.plan import GuestPlan
from ..model.spec import Arch


@dataclass(frozen=True)
class ArchFacts:
    binary: str
    machine: str
    console: str  # the guest's name for the first serial port
    bus: str  # "device" = virtio-mmio (riscv64 virt, as the seed uses), "pci" elsewhere
    tcg_cpu: str | None
    kernel_bios: tuple[str, ...]  # what direct kernel boot needs in front of -kernel


ARCHES: dict[Arch, ArchFacts] = {
    Arch.riscv64: ArchFacts("qemu-system-riscv64", "virt", "ttyS0", "device", None, ("-bios", "default")),
    # pauth-impdef: "max" emulates pointer authentication with QARMA, which
    # costs TCG dearly; the implementation-defined algorithm is much cheaper.
    Arch.aarch64: ArchFacts("qemu-system-aarch64", "virt", "ttyAMA0", "pci", "max,pauth-impdef=on", ()),
    Arch.x86_64: ArchFacts("qemu-system-x86_64", "q35", "ttyS0", "pci", None, ()),
}


def _boot_args(g: GuestPlan, facts: ArchFacts) -> list[str]:
    img = g.image
    if img.style is BootStyle.kernel:
        args = [*facts.kernel_bios, "-kernel", str(img.kernel)]
        if img.initrd:
            args += ["-initrd", str(img.initrd)]
    elif g.arch is Arch.riscv64 and img.payload:
        # OpenSBI in M-mode starts U-Boot in S-mode, which boots extlinux.conf from the disk.
        args = ["-bios", str(img.firmware), "-kernel", str(img.payload)]
    elif g.arch is Arch.riscv64:
        # openEuler RISC-V style: OpenSBI+U-Boot (or a kernel) linked into one fw_payload.
        args = ["-bios", "none", "-kernel", str(img.firmware)]
    else:
        args = ["-bios", str(img.firmware)]
    if g.append:
        args += ["-append", g.append]
    return args


def _q(value: object) -> str:
    """Escape a value for qemu's key=value,... option syntax (',' doubles)."""
    return str(value).replace(",", ",,")


def argv(g: GuestPlan) -> list[str]:
    """The full qemu command line for one planned guest."""
    facts = ARCHES[g.arch]
    p = g.paths
    bus = facts.bus
    cpu = ["-cpu", "host"] if g.accel == "kvm" else (["-cpu", facts.tcg_cpu] if facts.tcg_cpu else [])
    return [
        facts.binary,
        "-name", f"{g.name},debug-threads=on",
        "-machine", facts.machine,
        "-accel", g.accel,
        *cpu,
        "-smp", str(g.cpus),
        "-m", f"{g.memory_mib}M",
        "-nodefaults", "-no-user-config", "-display", "none",
        # Start paused: the firmware banner must not be printed before the
        # console reader connects (qemu drops chardev output with no client),
        # or the boot stages miss "firmware". QMP `cont` starts the CPUs.
        "-S",
        # The console is a unix socket that bridgelab drives; logfile keeps
        # everything the guest printed even while nobody is connected.
        "-chardev", f"socket,id=console,path={_q(p.console_sock)},server=on,wait=off,"
                    f"logfile={_q(p.console_log)},logappend=on",
        "-serial", "chardev:console",
        "-chardev", f"socket,id=qmp,path={_q(p.qmp_sock)},server=on,wait=off",
        "-mon", "chardev=qmp,mode=control",
        # qemu-guest-agent, if the image has it: exec without the console.
        "-chardev", f"socket,id=qga,path={_q(p.agent_sock)},server=on,wait=off",
        "-device", f"virtio-serial-{bus}",
        "-device", "virtserialport,chardev=qga,name=org.qemu.guest_agent.0",
        # The people's console, apart from the automation's serial one: a
        # virtio console (hvc0 in the guest, port 0 of the same bus), where
        # the guest runs its own getty with echo. Typing there can never
        # reach a command bridgelab runs on ttyS0, and the reverse.
        "-chardev", f"socket,id=term,path={_q(p.term_sock)},server=on,wait=off",
        "-device", "virtconsole,chardev=term,name=org.bridgelab.term",
        "-drive", f"file={_q(p.overlay)},format=qcow2,if=none,id=hd0,discard=unmap",
        "-device", f"virtio-blk-{bus},drive=hd0",
        "-netdev", f"tap,id=net0,ifname={g.tap},script=no,downscript=no"
                   + (",vhost=on" if g.accel == "kvm" else ""),
        "-device", f"virtio-net-{bus},netdev=net0,mac={g.mac}",
        *_user_nic_args(g, bus),
        "-object", "rng-random,filename=/dev/urandom,id=rng0",
        "-device", f"virtio-rng-{bus},rng=rng0",
        *_boot_args(g, facts),
        *g.qemu_args,
    ]


def _user_nic_args(g: GuestPlan, bus: str) -> list[str]:
    """A second NIC on qemu's user network, only for ssh from the host: the
    forward binds 127.0.0.1, never every interface as the seed's `hostfwd=tcp::PORT-:22` did."""
    if g.user_nic is None:
        return []
    n = g.user_nic
    return ["-netdev", f"user,id=net1,restrict={'on' if n.restrict else 'off'},"
                       f"hostfwd=tcp:127.0.0.1:{n.ssh_port}-:22",
            "-device", f"virtio-net-{bus},netdev=net1,mac={n.mac}"]


def overlay_argv(g: GuestPlan) -> list[str]:
    """qemu-img command for the guest's copy-on-write overlay over the base disk."""
    return ["qemu-img", "create", "-q", "-f", "qcow2", "-F", g.image.disk_format,
            "-b", str(g.image.disk), str(g.paths.overlay)]
