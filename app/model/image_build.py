"""`bridgelab image build`: a recipe into a bootable image in the cache.

mmdebstrap makes the root tree (foreign arches through qemu-user, registered
in binfmt_misc for the build only); the tree becomes an ext4 filesystem
without mounting anything (mke2fs -d). A `kernel` recipe's disk is that
filesystem, and qemu boots the kernel and initrd copied out of it. A `uboot`
recipe's disk is MBR-partitioned with the filesystem as partition 1, and its
/boot/extlinux/extlinux.conf is written by Debian's u-boot-menu; the image
carries OpenSBI and U-Boot from the host's opensbi and u-boot-qemu packages,
the chain openEuler RISC-V packs into fw_payload_oe_uboot.bin.
"""

from __future__ import annotations

import logging
import os
import platform
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import yaml

from .. import proc
from ..errors import BridgelabError, ImageError
from .images import MANIFEST, built_dir, find_recipe, load_manifest
from .recipes import Recipe, RecipeBoot, load_recipe
from .spec import Arch

log = logging.getLogger(__name__)

BINFMT = Path("/proc/sys/fs/binfmt_misc")
OPENSBI = Path("/usr/lib/riscv64-linux-gnu/opensbi/generic/fw_dynamic.bin")  # Debian: opensbi
UBOOT_SMODE = Path("/usr/lib/u-boot/qemu-riscv64_smode/u-boot.bin")  # Debian: u-boot-qemu
PARTITION_START = 1 << 20  # 1 MiB, as fdisk aligns the first partition


# ------------------------------------------------------------------ binfmt


@contextmanager
def foreign_binaries(arch: Arch) -> Iterator[None]:
    """Let mmdebstrap run `arch` maintainer scripts through qemu-user, for the build only.

    Debian's qemu-user-static ships the binfmt rule but does not always load it
    (not in containers, not without systemd), so do what systemd-binfmt would.
    A registration is global to the host kernel: remove whatever was added here."""
    if arch.value == platform.machine():
        yield
        return
    conf = Path(f"/usr/lib/binfmt.d/qemu-{arch.value}.conf")
    if not conf.is_file():
        raise ImageError(f"cannot run {arch.value} binaries: {conf} missing; install qemu-user-static")
    with binfmt_rule(conf.read_text().strip()):
        yield


@contextmanager
def binfmt_rule(rule: str, root: Path = BINFMT) -> Iterator[None]:
    """Hold a binfmt_misc rule (`:name:type:...`) for the duration; leave the
    kernel's table, and the mount, exactly as found."""
    name = rule.split(":")[1]
    mounted = not (root / "register").exists()
    if mounted:
        try:
            proc.run(["mount", "-t", "binfmt_misc", "binfmt_misc", str(root)])
        except BridgelabError as e:
            raise ImageError(
                f"binfmt_misc is not mounted and cannot be ({e}). On the host: 'sudo modprobe binfmt_misc'; "
                "in a container, CAP_SYS_ADMIN is needed (compose.yaml grants it)") from e
    added = not (root / name).exists()
    try:
        if added:
            try:
                (root / "register").write_text(rule)
            except OSError as e:
                raise ImageError(f"cannot register binfmt handler {name}: {e}") from e
            log.info("registered binfmt handler %s (removed after the build)", name)
        yield
    finally:
        if added and (root / name).exists():
            (root / name).write_text("-1")
        if mounted:
            proc.run(["umount", str(root)])


# ------------------------------------------------------------------ the tree


def debian_arch(arch: Arch) -> str:
    return {Arch.x86_64: "amd64", Arch.aarch64: "arm64"}.get(arch, arch.value)


def packages(r: Recipe) -> list[str]:
    return [*r.packages, *(["u-boot-menu"] if r.boot is RecipeBoot.uboot and "u-boot-menu" not in r.packages
                           else [])]


def mmdebstrap_argv(r: Recipe, rootdir: Path, verbose: bool = False) -> list[str]:
    argv = ["mmdebstrap", f"--arch={debian_arch(r.arch)}", f"--variant={r.variant}",
            "--include=" + ",".join(packages(r))]
    if verbose:  # apt's and dpkg's lines: how many packages, and each one set up (a build's progress)
        argv.append("--verbose")
    argv += [f"--aptopt={o}" for o in r.aptopts]
    # Hooks receive the root directory as $1; values are passed through the
    # environment, never spliced into the shell text.
    argv += ['--customize-hook=printf "%s:%s\\n" "$BL_USER" "$BL_PASSWORD" | chroot "$1" chpasswd',
             '--customize-hook=printf "%s\\n" "$BL_HOSTNAME" > "$1/etc/hostname"']
    argv += [f"--essential-hook={c}" for c in r.pre_install]
    argv += [f"--customize-hook={c}" for c in r.customize]
    if r.boot is RecipeBoot.uboot:
        # u-boot-menu writes extlinux.conf for every installed kernel: root on
        # the first partition, no fdtdir (U-Boot passes on the device tree
        # qemu generated) and the shortest menu wait that boots by itself.
        # Debian's U-Boot 2023.01 waits forever at "Enter choice:" with
        # `timeout 0`; `timeout 1` (a tenth of a second, rounded up) costs 1 s.
        argv += ['--customize-hook=printf \'%s\\n\' \'U_BOOT_ROOT="root=/dev/vda1"\' '
                 '"U_BOOT_PARAMETERS=\\"$BL_APPEND\\"" \'U_BOOT_PROMPT="0"\' \'U_BOOT_TIMEOUT="1"\' '
                 '\'U_BOOT_FDT_DIR="/no-fdt-"\' > "$1/etc/default/u-boot"',
                 '--customize-hook=chroot "$1" u-boot-update']
    argv += [r.suite, str(rootdir), r.mirror]
    return argv


def _find_boot_file(rootdir: Path, prefixes: tuple[str, ...]) -> Path:
    boot = rootdir / "boot"
    for prefix in prefixes:
        found = sorted(boot.glob(prefix + "*"))
        if found:
            return found[-1]
    raise ImageError(f"the built tree has no {'/'.join(prefixes)} in /boot")


# ------------------------------------------------------------------ the disk


def _filesystem(rootdir: Path, out: Path, size: str) -> None:
    proc.run(["mke2fs", "-q", "-t", "ext4", "-L", "bl-root", "-d", str(rootdir), str(out), size])


def partitioned(fs: Path, out: Path) -> None:
    """An MBR disk with `fs` as its first (bootable) partition, built in a
    file: sfdisk writes the table, the filesystem is copied in at 1 MiB."""
    size = fs.stat().st_size
    with open(out, "wb") as f:
        f.truncate(PARTITION_START + size)
    sectors = size // 512
    proc.run(["sfdisk", "--quiet", "--no-reread", "--no-tell-kernel", str(out)],
             input=f"label: dos\nstart=2048, size={sectors}, type=83, bootable\n")
    with open(fs, "rb") as src, open(out, "r+b") as dst:
        dst.seek(PARTITION_START)
        while chunk := src.read(1 << 20):
            if chunk.count(0) == len(chunk):
                dst.seek(len(chunk), os.SEEK_CUR)  # keep the file sparse
            else:
                dst.write(chunk)


def _boot_files(r: Recipe, rootdir: Path, work: Path) -> dict[str, Any]:
    if r.boot is RecipeBoot.uboot:
        for f in (OPENSBI, UBOOT_SMODE):
            shutil.copy(f, work / f.name)
        return {"style": "firmware", "firmware": OPENSBI.name, "payload": UBOOT_SMODE.name}
    shutil.copy(_find_boot_file(rootdir, ("vmlinuz-", "vmlinux-", "Image-")), work / "vmlinuz")
    shutil.copy(_find_boot_file(rootdir, ("initrd.img-",)), work / "initrd.img")
    return {"style": "kernel", "kernel": "vmlinuz", "initrd": "initrd.img", "append": r.append}


def _check_tools(r: Recipe) -> None:
    needed = {"mmdebstrap": "mmdebstrap", "mke2fs": "e2fsprogs", "qemu-img": "qemu-utils"}
    if r.boot is RecipeBoot.uboot:
        if r.arch is not Arch.riscv64:
            raise ImageError(f"recipe {r.name}: boot: uboot is for riscv64 (OpenSBI + U-Boot in S-mode)")
        needed["sfdisk"] = "fdisk"
    missing = sorted(pkg for tool, pkg in needed.items() if shutil.which(tool) is None)
    missing += [pkg for f, pkg in ((OPENSBI, "opensbi"), (UBOOT_SMODE, "u-boot-qemu"))
                if r.boot is RecipeBoot.uboot and not f.is_file()]
    if missing:
        raise ImageError(f"building {r.name} needs: apt-get install {' '.join(missing)}")


# ------------------------------------------------------------------ build


def build_image(name: str, cache: Path | None = None, force: bool = False, verbose: bool = False) -> Path:
    """Build the named recipe into the cache; return the image directory."""
    recipe_dir = find_recipe(name)
    r = load_recipe(recipe_dir, find_recipe)
    out = built_dir(name, cache)
    if (out / MANIFEST).is_file() and not force:
        log.info("image %s already built at %s", name, out)
        return out
    _check_tools(r)
    _remove_abandoned_builds(out)
    work = out.parent / f".build-{out.name}-{os.getpid()}"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    try:
        _build_into(r, recipe_dir, work, verbose)
        if out.exists():
            shutil.rmtree(out)
        work.rename(out)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    log.info("built image %s at %s", name, out)
    _prune_older_builds(out)
    return out


# qemu-user's default aarch64 CPU is `max`, whose pointer authentication uses
# the architected QARMA5 cipher: slow to emulate, and Debian arm64 binaries
# sign and check return addresses in most functions. The implementation-defined
# algorithm runs the same instructions far faster (QEMU's docs say so for
# `-cpu max`); the built tree does not depend on it.
USER_MODE_CPU: dict[Arch, str] = {Arch.aarch64: "max,pauth-impdef=on"}


def build_env(r: Recipe, recipe_dir: Path) -> dict[str, str]:
    # Customize steps copy files from their recipe's directory ($BL_RECIPE_DIR).
    env = {**os.environ, "BL_USER": r.login.user, "BL_PASSWORD": r.login.password, "BL_HOSTNAME": r.hostname,
           "BL_APPEND": r.append, "BL_RECIPE_DIR": str(recipe_dir)}
    if r.arch in USER_MODE_CPU:
        env["QEMU_CPU"] = USER_MODE_CPU[r.arch]
    return env


def _build_into(r: Recipe, recipe_dir: Path, work: Path, verbose: bool = False) -> None:
    rootdir = work / "root"
    env = build_env(r, recipe_dir)
    with foreign_binaries(r.arch):
        proc.run(mmdebstrap_argv(r, rootdir, verbose), env=env, timeout=3600, stream=True)
    boot = _boot_files(r, rootdir, work)
    fs = work / "fs.raw"
    _filesystem(rootdir, fs, r.size)
    shutil.rmtree(rootdir)
    raw = fs
    if r.boot is RecipeBoot.uboot:
        raw = work / "disk.raw"
        partitioned(fs, raw)
        fs.unlink()
    proc.run(["qemu-img", "convert", "-O", "qcow2", str(raw), str(work / "disk.qcow2")])
    raw.unlink()
    manifest: dict[str, Any] = {"name": r.name, "arch": r.arch.value, "boot": boot, "disk": "disk.qcow2",
                                "disk_format": "qcow2", "login": r.login.model_dump()}
    (work / MANIFEST).write_text(yaml.safe_dump(manifest, sort_keys=False))
    load_manifest(work / MANIFEST)  # the builder must produce what the loader accepts


def _remove_abandoned_builds(out: Path) -> None:
    """Work directories of builds whose process is gone: an interrupted build
    removes its own, but what its children still wrote as they died (an
    appliance stopped during its first start) can outlive that."""
    for work in out.parent.glob(".build-*-*"):  # of this recipe, any version
        pid = work.name.rsplit("-", 1)[-1]
        if pid.isdigit() and not Path(f"/proc/{pid}").exists():
            shutil.rmtree(work, ignore_errors=True)
            log.info("removed the work directory of an interrupted build, %s", work)


def _prune_older_builds(current: Path) -> None:
    """Builds of earlier versions of the recipe can never be used again."""
    for sibling in current.parent.iterdir():
        if sibling != current and not sibling.name.startswith(".") and (sibling / MANIFEST).is_file():
            shutil.rmtree(sibling, ignore_errors=True)
            log.info("removed outdated build %s", sibling)


__all__ = ["BINFMT", "binfmt_rule", "build_image", "foreign_binaries", "mmdebstrap_argv"]
