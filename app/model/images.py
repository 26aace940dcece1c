"""Guest images: manifests (how to boot an image), lookup, and the mmdebstrap builder.

An image is a directory holding `manifest.yaml` plus the files it names. Built
images live in a cache outside the repository, one directory per recipe hash,
so editing a recipe can never silently reuse a stale build.
"""

from __future__ import annotations

import hashlib
import logging
import os
import platform
import re
import shutil
from contextlib import contextmanager
from enum import Enum
from pathlib import Path
from typing import Any, Iterator

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from .. import proc, settings
from ..errors import BridgelabError, ImageError
from .spec import Arch, Login, SafeStr, format_loc

log = logging.getLogger(__name__)

BUILDER_VERSION = "1"
MANIFEST = "manifest.yaml"
RECIPE = "recipe.yaml"


class BootStyle(str, Enum):
    kernel = "kernel"  # -kernel/-initrd/-append (riscv64 adds -bios default: OpenSBI)
    # riscv64: -bios none -kernel <fw_payload> (openEuler's OpenSBI+U-Boot in one
    # file), or -bios <OpenSBI> -kernel <payload> (Debian's opensbi and
    # u-boot-qemu); others: -bios <firmware>.
    firmware = "firmware"


class Boot(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    style: BootStyle
    kernel: SafeStr | None = None
    initrd: SafeStr | None = None
    firmware: SafeStr | None = None
    payload: SafeStr | None = None  # what the firmware starts (U-Boot in S-mode)
    append: SafeStr = ""

    @model_validator(mode="after")
    def _files_for_style(self) -> "Boot":
        if self.style is BootStyle.kernel and not self.kernel:
            raise ValueError("boot style 'kernel' needs boot.kernel")
        if self.style is BootStyle.firmware and not self.firmware:
            raise ValueError("boot style 'firmware' needs boot.firmware")
        if self.payload and self.style is not BootStyle.firmware:
            raise ValueError("boot.payload goes with boot style 'firmware'")
        return self


class Manifest(BaseModel):
    """What a manifest.yaml says. Paths are relative to the manifest's directory."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    name: SafeStr
    arch: Arch
    boot: Boot
    disk: SafeStr
    disk_format: str = Field(default="qcow2", pattern="^(qcow2|raw)$")
    login: Login


class Image(BaseModel):
    """A manifest resolved against its directory: absolute, existing paths."""

    model_config = ConfigDict(frozen=True)
    name: str
    arch: Arch
    style: BootStyle
    kernel: Path | None
    initrd: Path | None
    firmware: Path | None
    payload: Path | None
    append: str
    disk: Path
    disk_format: str
    login: Login


class Recipe(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    name: SafeStr
    arch: Arch
    suite: SafeStr
    mirror: SafeStr
    variant: str = "minbase"
    packages: list[SafeStr]
    aptopts: list[SafeStr] = Field(default_factory=list)
    hostname: SafeStr = "bridgelab"
    login: Login
    size: SafeStr = "2G"
    append: SafeStr
    customize: list[SafeStr] = Field(default_factory=list)


# ------------------------------------------------------------------ locations


def recipe_dirs() -> list[Path]:
    """Where recipes are looked up: $BRIDGELAB_IMAGES, the source tree, the container."""
    dirs = []
    if extra := settings.current().images:
        dirs.append(extra)
    dirs.append(Path(__file__).resolve().parents[2] / "images")
    dirs.append(Path("/usr/share/bridgelab/images"))
    return dirs


def cache_dir() -> Path:
    return settings.current().cache


_RECIPE_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")


def find_recipe(name: str) -> Path:
    if not _RECIPE_NAME.match(name):
        raise ImageError(f"{name[:80]!r} is not a recipe name (a-z 0-9 . _ -, up to 64) nor a path to a manifest")
    for d in recipe_dirs():
        if (d / name / RECIPE).is_file():
            return d / name
    raise ImageError(f"no image recipe named {name!r} (looked in {', '.join(map(str, recipe_dirs()))})")


def recipe_key(recipe_dir: Path) -> str:
    """Hash of every file of the recipe plus the builder version."""
    h = hashlib.sha256(BUILDER_VERSION.encode())
    for f in sorted(p for p in recipe_dir.rglob("*") if p.is_file()):
        h.update(str(f.relative_to(recipe_dir)).encode() + b"\0" + f.read_bytes())
    return h.hexdigest()[:16]


def built_dir(name: str, cache: Path | None = None) -> Path:
    recipe = find_recipe(name)
    return (cache or cache_dir()) / name / recipe_key(recipe)


# ------------------------------------------------------------------ manifests


def load_manifest(path: Path) -> Image:
    """Read and check a manifest; every file it names must exist."""
    try:
        data = yaml.safe_load(path.read_text())
    except OSError as e:
        raise ImageError(f"cannot read image manifest {path}: {e.strerror}") from None
    except yaml.YAMLError as e:
        raise ImageError(f"image manifest {path} is not valid YAML: {e}") from None
    try:
        m = Manifest.model_validate(data)
    except ValidationError as e:
        errs = "; ".join(f"{format_loc(x['loc'])}: {x['msg']}" for x in e.errors())
        raise ImageError(f"image manifest {path} is invalid: {errs}") from None
    base = path.parent

    def need(rel: str | None) -> Path | None:
        if rel is None:
            return None
        p = (base / rel).resolve()
        if not p.is_file():
            raise ImageError(f"image {m.name}: {rel} does not exist (expected at {p})")
        return p

    disk = need(m.disk)
    assert disk is not None
    return Image(name=m.name, arch=m.arch, style=m.boot.style, kernel=need(m.boot.kernel),
                 initrd=need(m.boot.initrd), firmware=need(m.boot.firmware), payload=need(m.boot.payload),
                 append=m.boot.append,
                 disk=disk, disk_format=m.disk_format, login=m.login)


def resolve_image(ref: str, base_dir: Path, cache: Path | None = None) -> Image:
    """A lab's `image:` is either a path (to a manifest or its directory) or a recipe name."""
    if "/" in ref or ref.endswith((".yaml", ".yml")):
        p = (base_dir / ref).resolve()
        return load_manifest(p / MANIFEST if p.is_dir() else p)
    out = built_dir(ref, cache)
    if not (out / MANIFEST).is_file():
        raise ImageError(f"image {ref!r} is not built for its current recipe; run: bridgelab image build {ref}")
    return load_manifest(out / MANIFEST)


# ------------------------------------------------------------------ builder


def load_recipe(recipe_dir: Path) -> Recipe:
    try:
        return Recipe.model_validate(yaml.safe_load((recipe_dir / RECIPE).read_text()))
    except ValidationError as e:
        errs = "; ".join(f"{format_loc(x['loc'])}: {x['msg']}" for x in e.errors())
        raise ImageError(f"recipe {recipe_dir / RECIPE} is invalid: {errs}") from None


BINFMT = Path("/proc/sys/fs/binfmt_misc")


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


def _mmdebstrap_argv(r: Recipe, rootdir: Path) -> list[str]:
    argv = ["mmdebstrap", f"--arch={r.arch.value.replace('x86_64', 'amd64').replace('aarch64', 'arm64')}",
            f"--variant={r.variant}", "--include=" + ",".join(r.packages)]
    argv += [f"--aptopt={o}" for o in r.aptopts]
    # Hooks receive the root directory as $1; values are passed through the
    # environment, never spliced into the shell text.
    argv += ['--customize-hook=printf "%s:%s\\n" "$BL_USER" "$BL_PASSWORD" | chroot "$1" chpasswd',
             '--customize-hook=printf "%s\\n" "$BL_HOSTNAME" > "$1/etc/hostname"']
    argv += [f"--customize-hook={c}" for c in r.customize]
    argv += [r.suite, str(rootdir), r.mirror]
    return argv


def _find_boot_file(rootdir: Path, prefixes: tuple[str, ...]) -> Path:
    boot = rootdir / "boot"
    for prefix in prefixes:
        found = sorted(boot.glob(prefix + "*"))
        if found:
            return found[-1]
    raise ImageError(f"the built tree has no {'/'.join(prefixes)} in /boot")


def build_image(name: str, cache: Path | None = None, force: bool = False) -> Path:
    """Build the named recipe into the cache; return the image directory."""
    recipe_dir = find_recipe(name)
    r = load_recipe(recipe_dir)
    out = built_dir(name, cache)
    if (out / MANIFEST).is_file() and not force:
        log.info("image %s already built at %s", name, out)
        return out
    for tool in ("mmdebstrap", "mke2fs", "qemu-img"):
        if shutil.which(tool) is None:
            raise ImageError(f"{tool} is not installed (apt-get install mmdebstrap e2fsprogs qemu-utils)")
    work = out.parent / f".build-{out.name}-{os.getpid()}"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    try:
        rootdir = work / "root"
        env = {**os.environ, "BL_USER": r.login.user, "BL_PASSWORD": r.login.password,
               "BL_HOSTNAME": r.hostname}
        with foreign_binaries(r.arch):
            proc.run(_mmdebstrap_argv(r, rootdir), env=env, timeout=3600, stream=True)
        shutil.copy(_find_boot_file(rootdir, ("vmlinuz-", "vmlinux-", "Image-")), work / "vmlinuz")
        shutil.copy(_find_boot_file(rootdir, ("initrd.img-",)), work / "initrd.img")
        raw = work / "disk.raw"
        proc.run(["mke2fs", "-q", "-t", "ext4", "-L", "bl-root", "-d", str(rootdir), str(raw), r.size])
        shutil.rmtree(rootdir)
        proc.run(["qemu-img", "convert", "-O", "qcow2", str(raw), str(work / "disk.qcow2")])
        raw.unlink()
        manifest: dict[str, Any] = {
            "name": r.name, "arch": r.arch.value,
            "boot": {"style": "kernel", "kernel": "vmlinuz", "initrd": "initrd.img", "append": r.append},
            "disk": "disk.qcow2", "disk_format": "qcow2",
            "login": r.login.model_dump(),
        }
        (work / MANIFEST).write_text(yaml.safe_dump(manifest, sort_keys=False))
        load_manifest(work / MANIFEST)  # the builder must produce what the loader accepts
        if out.exists():
            shutil.rmtree(out)
        work.rename(out)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    log.info("built image %s at %s", name, out)
    _prune_older_builds(out)
    return out


def _prune_older_builds(current: Path) -> None:
    """Builds of earlier versions of the recipe can never be used again."""
    for sibling in current.parent.iterdir():
        if sibling != current and not sibling.name.startswith(".") and (sibling / MANIFEST).is_file():
            shutil.rmtree(sibling, ignore_errors=True)
            log.info("removed outdated build %s", sibling)
