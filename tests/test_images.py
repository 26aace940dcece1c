"""Image manifests, recipe keys and lab-level image errors (no build here: the
VM tier builds and boots the real image)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from bridgelab.errors import ImageError
from bridgelab.model import images

REPO = Path(__file__).resolve().parent.parent


def write_manifest(d: Path, **over) -> Path:
    m = {"name": "oe", "arch": "riscv64", "boot": {"style": "firmware", "firmware": "fw.bin", "append": "x"},
         "disk": "disk.qcow2", "login": {"user": "root", "password": "pw"}, **over}
    d.mkdir(parents=True, exist_ok=True)
    for f in ("fw.bin", "disk.qcow2"):
        (d / f).write_bytes(b"")
    (d / "manifest.yaml").write_text(yaml.safe_dump(m))
    return d / "manifest.yaml"


def test_manifest_by_path_or_directory(tmp_path):
    path = write_manifest(tmp_path / "oe")
    by_file = images.resolve_image(str(path), tmp_path)
    by_dir = images.resolve_image("oe/", tmp_path)
    assert by_file == by_dir
    assert by_file.style is images.BootStyle.firmware and by_file.firmware == (tmp_path / "oe" / "fw.bin")


def test_manifest_naming_a_missing_file_is_an_error(tmp_path):
    path = write_manifest(tmp_path / "oe")
    (tmp_path / "oe" / "fw.bin").unlink()
    with pytest.raises(ImageError, match="fw.bin does not exist"):
        images.load_manifest(path)


def test_manifest_schema_errors_name_the_field(tmp_path):
    path = write_manifest(tmp_path / "oe", boot={"style": "kernel"})
    with pytest.raises(ImageError, match="boot.*needs boot.kernel"):
        images.load_manifest(path)


def test_recipe_key_follows_the_recipe(tmp_path):
    d = tmp_path / "r"
    d.mkdir()
    (d / "recipe.yaml").write_text("a: 1\n")
    k1 = images.recipe_key(d)
    (d / "recipe.yaml").write_text("a: 2\n")
    assert images.recipe_key(d) != k1 and len(k1) == 16


def test_shipped_recipe_is_valid_and_keeps_the_password_out_of_argv(tmp_path):
    r = images.load_recipe(images.find_recipe("debian-riscv64"))
    assert r.arch.value == "riscv64" and "network-manager" in r.packages
    argv = images._mmdebstrap_argv(r, tmp_path / "root")
    assert argv[0] == "mmdebstrap" and "--arch=riscv64" in argv
    assert not any(r.login.password in a for a in argv)


def test_unbuilt_image_is_reported_by_serve_with_status_2(tmp_path):
    lab = tmp_path / "lab.yaml"
    lab.write_text("bridge: {address: 10.0.0.1/24}\nguests:\n  - {name: a, image: nothing-here/}\n"
                   "  - {name: b, image: debian-riscv64}\n")
    p = subprocess.run([sys.executable, "-m", "bridgelab.cli", "validate", "--lab", str(lab)],
                       capture_output=True, text=True, env={"BRIDGELAB_CACHE": str(tmp_path / "empty"),
                                                              "PATH": "/usr/bin:/bin"})
    assert p.returncode == 2
    assert "guests[0].image" in p.stderr and "manifest" in p.stderr
    assert "guests[1].image" in p.stderr and "bridgelab image build debian-riscv64" in p.stderr


def test_binfmt_rule_is_held_for_the_build_only():
    """Against the real kernel table, with a rule whose magic no file has: it
    exists inside the block and is gone after, even when the block fails."""
    name = "bridgelab-test"
    rule = f":{name}:M::BLTEST\\x00\\x01::/bin/false:"
    entry = images.BINFMT / name
    assert not entry.exists()
    with pytest.raises(RuntimeError):
        with images.binfmt_rule(rule):
            assert entry.read_text().startswith("enabled")
            raise RuntimeError("build failed")
    assert not entry.exists()


def test_binfmt_rule_already_present_is_left_alone():
    """A rule that was there before (the host's own) survives the build."""
    name = "bridgelab-test"
    with images.binfmt_rule(f":{name}:M::BLTEST\\x00\\x02::/bin/false:"):
        before = (images.BINFMT / name).read_text()
        with images.binfmt_rule(f":{name}:M::OTHER::/bin/true:"):
            pass
        assert (images.BINFMT / name).read_text() == before
    assert not (images.BINFMT / name).exists()
