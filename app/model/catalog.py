"""The images a user brings: `bridgelab image add` writes a manifest for
their files (openEuler's fw_payload and qcow2, a distribution's kernel and
cloud image), `image list` shows them next to the recipes, and a lab names
either kind by its name.

Added manifests live in `<cache>/added/<name>/manifest.yaml` and point at the
user's files where they are (nothing is copied: disks are large). A path
under the same root as the manifest is stored relative to it, so the images
directory works the same on the host and mounted into the appliance.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from .. import proc
from ..errors import BridgelabError, ImageError
from .images import (ADDED, MANIFEST, RECIPE, BootStyle, Image, added_manifest, built_dir, cache_dir, find_recipe,
                     load_manifest, recipe_dirs, valid_name)
from .recipes import RecipeBoot, load_recipe
from .spec import Arch, Login, format_loc


@dataclass(frozen=True)
class AddRequest:
    name: str
    arch: Arch
    disk: Path
    login: str  # USER:PASSWORD
    firmware: Path | None = None
    payload: Path | None = None
    kernel: Path | None = None
    initrd: Path | None = None
    append: str = ""


@dataclass(frozen=True)
class Entry:
    name: str
    arch: str
    boot: str  # "kernel", "firmware", "opensbi+u-boot"
    source: str  # "recipe", "added"
    ready: bool  # built (a recipe) or its files present (added)
    where: Path


def added_dir(cache: Path | None = None) -> Path:
    return (cache or cache_dir()) / ADDED


def _file(what: str, path: Path | None) -> Path | None:
    if path is None:
        return None
    p = path.expanduser().resolve()
    if not p.is_file():
        raise ImageError(f"--{what} {path}: no such file")
    if not os.access(p, os.R_OK):
        raise ImageError(f"--{what} {path}: not readable")
    return p


def _login(text: str) -> Login:
    user, sep, password = text.partition(":")
    if not sep:
        raise ImageError("--login must be USER:PASSWORD")
    try:
        return Login(user=user, password=password)
    except ValidationError as e:
        raise ImageError("--login: " + "; ".join(f"{format_loc(x['loc'])}: {x['msg']}" for x in e.errors())) from None


def disk_format(disk: Path) -> str:
    """What qemu-img says the disk is; only qcow2 and raw boot here."""
    try:
        info = json.loads(proc.run(["qemu-img", "info", "--output=json", str(disk)]).stdout)
    except (BridgelabError, ValueError) as e:
        raise ImageError(f"--disk {disk}: qemu-img cannot read it ({e})") from None
    fmt = str(info.get("format"))
    if fmt not in ("qcow2", "raw"):
        raise ImageError(f"--disk {disk} is {fmt}; convert it first: qemu-img convert -O qcow2 {disk} out.qcow2")
    return fmt


def _rel(path: Path | None, base: Path, root: Path) -> str | None:
    """Relative to the manifest when the file is under `root` (the directory
    holding the cache: the images volume in the appliance), else absolute."""
    if path is None:
        return None
    return os.path.relpath(path, base) if path.is_relative_to(root) else str(path)


def add_image(req: AddRequest, cache: Path | None = None, force: bool = False) -> Path:
    """Validate the files, write the manifest, load it back; its path."""
    if not valid_name(req.name):
        raise ImageError(f"{req.name[:80]!r} is not an image name (a-z 0-9 . _ -, up to 64)")
    if any((d / req.name / RECIPE).is_file() for d in recipe_dirs()):
        raise ImageError(f"{req.name!r} is a recipe's name; choose another")
    if (req.firmware is None) == (req.kernel is None):
        raise ImageError("give either --firmware (with --payload for OpenSBI + U-Boot) or --kernel")
    if req.payload is not None and req.firmware is None:
        raise ImageError("--payload goes with --firmware")
    if req.initrd is not None and req.kernel is None:
        raise ImageError("--initrd goes with --kernel")
    login = _login(req.login)
    disk = _file("disk", req.disk)
    assert disk is not None
    fmt = disk_format(disk)
    files = {k: _file(k, getattr(req, k)) for k in ("firmware", "payload", "kernel", "initrd")}
    target = added_manifest(req.name, cache)
    if target.exists() and not force:
        raise ImageError(f"image {req.name!r} is already added ({target}); --force replaces it")
    base, root = target.parent, (cache or cache_dir()).resolve().parent
    boot: dict[str, Any] = {"style": (BootStyle.kernel if req.kernel else BootStyle.firmware).value}
    boot.update({k: _rel(v, base, root) for k, v in files.items() if v is not None})
    if req.append:
        boot["append"] = req.append
    manifest = {"name": req.name, "arch": req.arch.value, "boot": boot, "disk": _rel(disk, base, root),
                "disk_format": fmt, "login": login.model_dump()}
    base.mkdir(parents=True, exist_ok=True)
    tmp = target.with_suffix(".tmp")
    tmp.write_text(yaml.safe_dump(manifest, sort_keys=False))
    try:
        load_manifest(tmp)
    except ImageError:
        tmp.unlink()
        raise
    os.replace(tmp, target)
    return target


def remove_image(name: str, cache: Path | None = None) -> Path:
    target = added_manifest(name, cache)
    if not valid_name(name) or not target.is_file():
        raise ImageError(f"no added image named {name!r}")
    shutil.rmtree(target.parent)  # the manifest only: the user's files stay where they are
    return target.parent


def boot_label(img: Image) -> str:
    if img.style is BootStyle.kernel:
        return "kernel"
    return "opensbi+u-boot" if img.payload else "firmware"


def entries(cache: Path | None = None) -> list[Entry]:
    """Every recipe (built or not) and every added image, by name."""
    out: list[Entry] = []
    seen: set[str] = set()
    for d in recipe_dirs():
        for recipe in sorted(d.glob(f"*/{RECIPE}")) if d.is_dir() else []:
            name = recipe.parent.name
            if name in seen or not valid_name(name):
                continue
            seen.add(name)
            try:
                r = load_recipe(recipe.parent, find_recipe)
                built = built_dir(name, cache)
            except ImageError:
                continue
            out.append(Entry(name, r.arch.value, "opensbi+u-boot" if r.boot is RecipeBoot.uboot else "kernel",
                             "recipe", (built / MANIFEST).is_file(), built))
    for manifest in sorted(added_dir(cache).glob(f"*/{MANIFEST}")):
        try:
            img = load_manifest(manifest)
            out.append(Entry(img.name, img.arch.value, boot_label(img), "added", True, manifest.parent))
        except ImageError:
            out.append(Entry(manifest.parent.name, "?", "?", "added", False, manifest.parent))
    return out


__all__ = ["AddRequest", "Entry", "add_image", "boot_label", "disk_format", "entries", "remove_image"]
