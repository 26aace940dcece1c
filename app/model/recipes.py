"""Image recipes: what `bridgelab image build` makes, as data.

A recipe is `recipe.yaml` in its own directory. A variant names a `base`
recipe and says only what differs: packages added or removed, customize
steps appended, and any scalar field replaced. Its cache key covers its own
files and its base's, so editing either rebuilds it.
"""

from __future__ import annotations

import hashlib
import re
from enum import StrEnum
from pathlib import Path
from typing import Any, Callable

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from ..errors import ImageError
from .spec import Arch, Login, SafeStr, format_loc

BUILDER_VERSION = "2"  # 2: partitioned disks for the U-Boot chain
UBOOT_LAYOUT = "2"  # what the builder writes for boot: uboot (2: the menu waits 1 s, not forever)
RECIPE = "recipe.yaml"
Finder = Callable[[str], Path]  # a recipe name -> its directory
# What goes into /etc/default/u-boot (a shell file u-boot-update sources) and
# onto the kernel line: words of safe characters only.
_APPEND = re.compile(r"^[A-Za-z0-9=_./,:@+-]+( [A-Za-z0-9=_./,:@+-]+)*$")


class RecipeBoot(StrEnum):
    kernel = "kernel"  # qemu loads the kernel and initrd copied out of the image
    uboot = "uboot"  # riscv64: OpenSBI -> U-Boot (S-mode) -> extlinux.conf on an MBR-partitioned disk


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
    boot: RecipeBoot = RecipeBoot.kernel
    # Shell steps on the tree ($1) after the essential packages and before the
    # others (mmdebstrap --essential-hook): configuration that the others'
    # install scripts read, such as what goes into the initrd.
    pre_install: list[SafeStr] = Field(default_factory=list)
    customize: list[SafeStr] = Field(default_factory=list)

    @field_validator("append")
    @classmethod
    def _plain_words(cls, v: str) -> str:
        if not _APPEND.match(v):
            raise ValueError("append: space-separated words of letters, digits and =_./,:@+- only")
        return v


class Variant(BaseModel):
    """What a variant recipe may say about its base."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    base: SafeStr
    name: SafeStr
    add_packages: list[SafeStr] = Field(default_factory=list)
    remove_packages: list[SafeStr] = Field(default_factory=list)
    add_customize: list[SafeStr] = Field(default_factory=list)
    arch: Arch | None = None
    hostname: SafeStr | None = None
    login: Login | None = None
    size: SafeStr | None = None
    append: SafeStr | None = None
    boot: RecipeBoot | None = None


def _read(recipe_dir: Path) -> dict[str, Any]:
    path = recipe_dir / RECIPE
    try:
        data = yaml.safe_load(path.read_text())
    except OSError as e:
        raise ImageError(f"cannot read recipe {path}: {e.strerror}") from None
    except yaml.YAMLError as e:
        raise ImageError(f"recipe {path} is not valid YAML: {e}") from None
    if not isinstance(data, dict):
        raise ImageError(f"recipe {path} is not a mapping")
    return data


def _invalid(path: Path, e: ValidationError) -> ImageError:
    errs = "; ".join(f"{format_loc(x['loc'])}: {x['msg']}" for x in e.errors())
    return ImageError(f"recipe {path} is invalid: {errs}")


def load_recipe(recipe_dir: Path, find: Finder | None = None, _seen: tuple[str, ...] = ()) -> Recipe:
    """The recipe in `recipe_dir`, a variant merged onto its base. `find`
    maps a base name to its directory (images.find_recipe)."""
    data = _read(recipe_dir)
    try:
        if "base" not in data:
            return Recipe.model_validate(data)
        v = Variant.model_validate(data)
    except ValidationError as e:
        raise _invalid(recipe_dir / RECIPE, e) from None
    if v.base in (*_seen, v.name) or find is None:
        raise ImageError(f"recipe {recipe_dir / RECIPE}: base {v.base!r} " +
                         ("is part of a cycle" if find is not None else "cannot be looked up here"))
    base = load_recipe(find(v.base), find, (*_seen, v.name))
    missing = [p for p in v.remove_packages if p not in base.packages]
    if missing:
        raise ImageError(f"recipe {recipe_dir / RECIPE}: remove_packages: {', '.join(missing)} not in {v.base}")
    merged = base.model_dump()
    merged.update({k: val for k, val in v.model_dump(exclude_none=True).items()
                   if k in Recipe.model_fields and k != "base"})
    merged["packages"] = [p for p in base.packages if p not in v.remove_packages] + v.add_packages
    merged["customize"] = [*base.customize, *v.add_customize]
    try:
        return Recipe.model_validate(merged)
    except ValidationError as e:
        raise _invalid(recipe_dir / RECIPE, e) from None


def recipe_key(recipe_dir: Path, find: Finder | None = None) -> str:
    """Hash of every file of the recipe (and of its base's), plus the builder version."""
    h = hashlib.sha256(BUILDER_VERSION.encode())
    for f in sorted(p for p in recipe_dir.rglob("*") if p.is_file()):
        h.update(str(f.relative_to(recipe_dir)).encode() + b"\0" + f.read_bytes())
    base = _read(recipe_dir).get("base") if (recipe_dir / RECIPE).is_file() else None
    if isinstance(base, str) and find is not None:
        h.update(b"\0base\0" + recipe_key(find(base), find).encode())
    if find is not None and load_recipe(recipe_dir, find).boot is RecipeBoot.uboot:
        h.update(b"\0uboot\0" + UBOOT_LAYOUT.encode())
    return h.hexdigest()[:16]


__all__ = ["BUILDER_VERSION", "RECIPE", "UBOOT_LAYOUT", "Recipe", "RecipeBoot", "Variant", "load_recipe", "recipe_key"]
