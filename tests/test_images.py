"""Image manifests, recipe keys and lab-level image errors (no build here: the
VM tier builds and boots the real image)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from bridgelab.errors import ImageError
from bridgelab.model import image_build, images, recipes

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
    k1 = recipes.recipe_key(d)
    (d / "recipe.yaml").write_text("a: 2\n")
    assert recipes.recipe_key(d) != k1 and len(k1) == 16


def test_shipped_recipe_is_valid_and_keeps_the_password_out_of_argv(tmp_path):
    r = recipes.load_recipe(images.find_recipe("debian-riscv64"), images.find_recipe)
    assert r.arch.value == "riscv64" and "network-manager" in r.packages
    argv = image_build.mmdebstrap_argv(r, tmp_path / "root")
    assert argv[0] == "mmdebstrap" and "--arch=riscv64" in argv
    assert not any(r.login.password in a for a in argv)


def test_pre_install_steps_are_essential_hooks_and_variants_inherit_them(tmp_path):
    base = recipes.load_recipe(images.find_recipe("debian-riscv64"), images.find_recipe)
    arm = recipes.load_recipe(images.find_recipe("debian-aarch64"), images.find_recipe)
    assert base.pre_install and arm.pre_install == base.pre_install
    argv = image_build.mmdebstrap_argv(arm, tmp_path / "root")
    hooks = [a for a in argv if a.startswith("--essential-hook=")]
    assert hooks == [f"--essential-hook={c}" for c in base.pre_install]


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
    entry = image_build.BINFMT / name
    assert not entry.exists()
    with pytest.raises(RuntimeError):
        with image_build.binfmt_rule(rule):
            assert entry.read_text().startswith("enabled")
            raise RuntimeError("build failed")
    assert not entry.exists()


def test_binfmt_rule_already_present_is_left_alone():
    """A rule that was there before (the host's own) survives the build."""
    name = "bridgelab-test"
    with image_build.binfmt_rule(f":{name}:M::BLTEST\\x00\\x02::/bin/false:"):
        before = (image_build.BINFMT / name).read_text()
        with image_build.binfmt_rule(f":{name}:M::OTHER::/bin/true:"):
            pass
        assert (image_build.BINFMT / name).read_text() == before
    assert not (image_build.BINFMT / name).exists()


# ---------------------------------------------------------------- images a user brings


def _user_files(root: Path) -> dict[str, Path]:
    """Stand-ins for openEuler's published files: a real qcow2 and a firmware blob."""
    root.mkdir(parents=True, exist_ok=True)
    disk = root / "openEuler-24.03-riscv64.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(disk), "64M"], check=True)
    fw = root / "fw_payload_oe_uboot_2304.bin"
    fw.write_bytes(b"\x6f\x00\x00\x00" * 16)
    kernel = root / "vmlinuz"
    kernel.write_bytes(b"MZ" + b"\0" * 62)
    return {"disk": disk, "firmware": fw, "kernel": kernel}


def _cli(*args: str, cache: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "bridgelab.cli", "image", *args], capture_output=True, text=True,
                          env={"BRIDGELAB_CACHE": str(cache), "PATH": "/usr/bin:/bin"})


def test_an_added_firmware_image_is_listed_resolved_by_name_and_removed(tmp_path):
    cache = tmp_path / "images" / "cache"  # as in the appliance: the cache inside the images volume
    files = _user_files(tmp_path / "images" / "oe")
    added = _cli("add", "oe2403", "--arch", "riscv64", "--disk", str(files["disk"]), "--firmware",
                 str(files["firmware"]), "--login", "root:openEuler12#$", cache=cache)
    assert added.returncode == 0, added.stderr
    assert "added oe2403 (riscv64, firmware)" in added.stdout
    manifest = yaml.safe_load((cache / "added" / "oe2403" / "manifest.yaml").read_text())
    # Relative to the manifest: the same images directory works mounted into the appliance.
    assert manifest["disk"] == "../../../oe/openEuler-24.03-riscv64.qcow2" and manifest["disk_format"] == "qcow2"
    img = images.resolve_image("oe2403", tmp_path, cache)
    assert (img.style, img.firmware, img.login.password) == (images.BootStyle.firmware, files["firmware"],
                                                              "openEuler12#$")
    listed = _cli("list", cache=cache)
    row = next(line.split() for line in listed.stdout.splitlines() if line.startswith("oe2403 "))
    assert row[:5] == ["oe2403", "riscv64", "firmware", "added", "ok"]
    assert any(line.startswith("debian-riscv64 ") and " recipe " in line for line in listed.stdout.splitlines())
    assert _cli("remove", "oe2403", cache=cache).returncode == 0
    assert not (cache / "added" / "oe2403").exists() and files["disk"].exists()  # the user's files stay


@pytest.mark.parametrize("args, why", [
    (["--firmware", "{firmware}", "--kernel", "{kernel}"], "not allowed with argument"),
    (["--kernel", "{kernel}", "--payload", "{firmware}"], "--payload goes with --firmware"),
    (["--firmware", "{missing}"], "no such file"),
    (["--firmware", "{firmware}", "--login", "root"], "USER:PASSWORD"),
    (["--firmware", "{firmware}", "--login", "Root User:x"], "login"),
    (["--firmware", "{firmware}", "--disk", "{firmware}"], "is raw"),
    (["--firmware", "{firmware}", "--disk", "{vmdk}"], "is vmdk; convert it first"),
])
def test_bad_image_add_says_why_and_writes_nothing(tmp_path, args, why):
    cache = tmp_path / "cache"
    files = _user_files(tmp_path / "files")
    vmdk = tmp_path / "files" / "x.vmdk"
    subprocess.run(["qemu-img", "create", "-q", "-f", "vmdk", str(vmdk), "16M"], check=True)
    values = {**{k: str(v) for k, v in files.items()}, "missing": str(tmp_path / "nope.bin"), "vmdk": str(vmdk)}
    argv = ["add", "oe", "--arch", "riscv64", "--disk", str(files["disk"]), "--login", "root:pw"]
    argv += [a.format(**values) for a in args]
    r = _cli(*argv, cache=cache)
    if why == "is raw":  # a raw disk is fine: the firmware blob passes as one
        assert r.returncode == 0, r.stderr
        return
    assert r.returncode == 2 and why in r.stderr, r.stderr
    assert not (cache / "added").exists() or not any((cache / "added").iterdir())


def test_image_add_refuses_a_recipe_name_and_an_existing_name_without_force(tmp_path):
    cache = tmp_path / "cache"
    files = _user_files(tmp_path / "files")
    base = ["--arch", "riscv64", "--disk", str(files["disk"]), "--kernel", str(files["kernel"]), "--login", "root:pw"]
    r = _cli("add", "debian-riscv64", *base, cache=cache)
    assert r.returncode == 2 and "is a recipe's name" in r.stderr
    assert _cli("add", "mine", *base, cache=cache).returncode == 0
    again = _cli("add", "mine", *base, cache=cache)
    assert again.returncode == 2 and "--force" in again.stderr
    assert _cli("add", "mine", *base, "--append", "console=ttyS0", "--force", cache=cache).returncode == 0
    assert images.resolve_image("mine", tmp_path, cache).append == "console=ttyS0"


def test_a_variant_recipe_is_its_base_plus_its_changes():
    find = images.find_recipe
    base = recipes.load_recipe(find("debian-riscv64"), find)
    oe = recipes.load_recipe(find("openeuler-like-riscv64"), find)
    assert oe.boot is recipes.RecipeBoot.uboot and oe.hostname == "openeuler-riscv64"
    assert oe.login.password == "openEuler12#$" and "qemu-guest-agent" not in oe.packages
    assert oe.customize[:len(base.customize)] == base.customize and len(oe.customize) > len(base.customize)
    argv = image_build.mmdebstrap_argv(oe, Path("/x"))
    assert "u-boot-menu" in argv[3] and argv[-4] == '--customize-hook=chroot "$1" u-boot-update'
    # The variant's key follows its base: editing the base rebuilds both.
    assert recipes.recipe_key(find("openeuler-like-riscv64"), find) != recipes.recipe_key(
        find("openeuler-like-riscv64"))


def test_a_partitioned_disk_has_the_filesystem_at_one_mebibyte(tmp_path):
    fs = tmp_path / "fs.raw"
    subprocess.run(["mke2fs", "-q", "-t", "ext4", "-L", "bl-root", str(fs), "8M"], check=True)
    disk = tmp_path / "disk.raw"
    image_build.partitioned(fs, disk)
    table = json.loads(subprocess.run(["sfdisk", "--json", str(disk)], capture_output=True, text=True,
                                      check=True).stdout)["partitiontable"]
    assert table["label"] == "dos"
    [part] = table["partitions"]
    assert (part["start"], part["size"], part["type"], part.get("bootable")) == (2048, 8 * 2048, "83", True)
    with open(disk, "rb") as f:
        f.seek(1 << 20)
        assert f.read(8 << 20) == fs.read_bytes()
