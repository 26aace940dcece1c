"""`bridgelab image ...`: build a recipe, add an image of your own, list them."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..errors import ImageError
from ..model import catalog, image_build, images
from ..model.spec import Arch
from .exits import EXIT_INVALID
from .output import add_format, emit


def cmd_image_build(args: argparse.Namespace) -> int:
    out = image_build.build_image(args.name, force=args.force, verbose=args.verbose)
    print(out)
    return 0


def cmd_image_path(args: argparse.Namespace) -> int:
    out = images.built_dir(args.name)
    print(out)
    return 0 if (out / images.MANIFEST).is_file() else 1


def cmd_image_add(args: argparse.Namespace) -> int:
    req = catalog.AddRequest(name=args.name, arch=args.arch, disk=args.disk, login=args.login,
                             firmware=args.firmware, payload=args.payload, kernel=args.kernel, initrd=args.initrd,
                             append=args.append or "")
    try:
        path = catalog.add_image(req, force=args.force)
    except ImageError as e:
        print(f"bridgelab: image {args.name} not added: {e}", file=sys.stderr)
        return EXIT_INVALID
    img = images.load_manifest(path)
    print(f"added {img.name} ({img.arch.value}, {catalog.boot_label(img)}): {path}")
    print(f"use it in a lab file as   image: {img.name}")
    return 0


def cmd_image_remove(args: argparse.Namespace) -> int:
    where = catalog.remove_image(args.name)
    print(f"removed {args.name} ({where}); its files were left where they are")
    return 0


def cmd_image_list(args: argparse.Namespace) -> int:
    listed = [{"name": e.name, "arch": e.arch, "boot": e.boot, "source": e.source, "state": _state(e),
               "where": str(e.where)} for e in catalog.entries()]
    emit(args.format, listed, ("NAME", "ARCH", "BOOT", "SOURCE", "STATE", "WHERE"),
         [[e[k] for k in ("name", "arch", "boot", "source", "state", "where")] for e in listed])
    return 0


def _state(e: catalog.Entry) -> str:
    if e.source == "recipe":
        return "built" if e.ready else "not built"
    return "ok" if e.ready else "broken"


def add_parsers(sub: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    im = sub.add_parser("image", help="guest images").add_subparsers(dest="image_command", required=True)
    b = im.add_parser("build", help="build a recipe from images/ into the cache")
    b.add_argument("name")
    b.add_argument("--force", action="store_true")
    b.add_argument("--verbose", action="store_true", help="show apt's and dpkg's output (every package)")
    b.set_defaults(fn=cmd_image_build)
    ip = im.add_parser("path", help="print where a recipe's image is (or would be) cached")
    ip.add_argument("name")
    ip.set_defaults(fn=cmd_image_path)
    a = im.add_parser("add", help="use your own image files (a disk plus firmware or kernel) under a name")
    a.add_argument("name")
    a.add_argument("--arch", required=True, type=Arch, choices=list(Arch))
    a.add_argument("--disk", required=True, type=Path, help="qcow2 or raw; guests get overlays, never write it")
    how = a.add_mutually_exclusive_group(required=True)
    how.add_argument("--firmware", type=Path, help="riscv64: a fw_payload (OpenSBI+U-Boot), or OpenSBI with "
                                                   "--payload; others: the -bios file")
    how.add_argument("--kernel", type=Path, help="boot this kernel directly")
    a.add_argument("--payload", type=Path, help="with --firmware: what OpenSBI starts (U-Boot in S-mode)")
    a.add_argument("--initrd", type=Path, help="with --kernel")
    a.add_argument("--login", required=True, metavar="USER:PASSWORD", help="the console login")
    a.add_argument("--append", help="the kernel command line (with --kernel)")
    a.add_argument("--force", action="store_true", help="replace an image added under this name")
    a.set_defaults(fn=cmd_image_add)
    ls = im.add_parser("list", help="recipes (built or not) and added images")
    add_format(ls)
    ls.set_defaults(fn=cmd_image_list)
    rm = im.add_parser("remove", help="forget an added image (its files stay)")
    rm.add_argument("name")
    rm.set_defaults(fn=cmd_image_remove)


__all__ = ["add_parsers"]
