"""Guest images: manifests (how to boot an image) and where images and recipes are found.

An image is a directory holding `manifest.yaml` plus the files it names. Built
images live in a cache outside the repository, one directory per recipe hash,
so editing a recipe can never silently reuse a stale build.
"""

from __future__ import annotations

import logging
import re
from enum import Enum
from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from .. import settings
from ..errors import ImageError
from . import recipes
from .spec import Arch, Login, SafeStr, format_loc

log = logging.getLogger(__name__)

MANIFEST = "manifest.yaml"
RECIPE = recipes.RECIPE


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
ADDED = "added"  # <cache>/added/<name>/manifest.yaml: images a user brought (catalog.py)


def valid_name(name: str) -> bool:
    return bool(_RECIPE_NAME.match(name))


def added_manifest(name: str, cache: Path | None = None) -> Path:
    return (cache or cache_dir()) / ADDED / name / MANIFEST


def find_recipe(name: str) -> Path:
    if not _RECIPE_NAME.match(name):
        raise ImageError(f"{name[:80]!r} is not a recipe name (a-z 0-9 . _ -, up to 64) nor a path to a manifest")
    for d in recipe_dirs():
        if (d / name / RECIPE).is_file():
            return d / name
    raise ImageError(f"no image recipe named {name!r} (looked in {', '.join(map(str, recipe_dirs()))}); "
                     f"an image of your own needs `bridgelab image add {name} ...` first")


def built_dir(name: str, cache: Path | None = None) -> Path:
    recipe = find_recipe(name)
    return (cache or cache_dir()) / name / recipes.recipe_key(recipe, find_recipe)


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
    """A lab's `image:` is a path (to a manifest or its directory), the name
    of an added image, or a recipe's name."""
    if "/" in ref or ref.endswith((".yaml", ".yml")):
        p = (base_dir / ref).resolve()
        return load_manifest(p / MANIFEST if p.is_dir() else p)
    if valid_name(ref) and (added := added_manifest(ref, cache)).is_file():
        return load_manifest(added)
    out = built_dir(ref, cache)
    if not (out / MANIFEST).is_file():
        raise ImageError(f"image {ref!r} is not built for its current recipe; run: bridgelab image build {ref}")
    return load_manifest(out / MANIFEST)




__all__ = ["ADDED", "Boot", "BootStyle", "Image", "MANIFEST", "Manifest", "RECIPE", "added_manifest", "built_dir",
           "cache_dir", "find_recipe", "load_manifest", "recipe_dirs", "resolve_image", "valid_name"]
