"""Plan derivation (MACs, taps, IPs, accel) and qemu argv for each arch and boot style."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest
from bridgelab.errors import SpecError
from bridgelab.guest import qemu_argv
from bridgelab.model.images import BootStyle, Image
from bridgelab.model.plan import HostFacts, UnderlayFacts, choose_mtu, derive_mac, derive_tap, make_plan
from bridgelab.model.spec import Arch, Login, MtuPolicy, parse_lab_data

X86_TCG = HostFacts(arch="x86_64", kvm=False)
X86_KVM = HostFacts(arch="x86_64", kvm=True)


def image(arch=Arch.riscv64, style=BootStyle.kernel, append="root=/dev/vda rw console=ttyS0",
          payload=None) -> Image:
    return Image(name=f"img-{arch.value}", arch=arch, style=style,
                 kernel=Path("/img/vmlinuz") if style is BootStyle.kernel else None,
                 initrd=Path("/img/initrd.img") if style is BootStyle.kernel else None,
                 firmware=Path("/img/fw_payload.bin") if style is BootStyle.firmware else None,
                 payload=payload, append=append, disk=Path("/img/disk.qcow2"), disk_format="qcow2",
                 login=Login(user="root", password="pw"))


def plan_of(guests, host=X86_TCG, images=None, state=Path("/run/bl/t"), **bridge):
    data = {"name": "t", "bridge": {"name": "br0", "address": "10.198.101.114/24", **bridge}, "guests": guests}
    spec = parse_lab_data(data)
    imgs = images or {g.image: image(g.arch) for g in spec.guests}
    return make_plan(spec, imgs, host, state)


@pytest.mark.parametrize("lab, guest", [("a", "b"), ("lab", "rv1"), ("x" * 32, "y" * 32)])
def test_derived_mac_is_local_unicast_and_stable(lab, guest):
    mac = derive_mac(lab, guest)
    first = int(mac[:2], 16)
    assert first & 0x02 and not first & 0x01
    assert mac == derive_mac(lab, guest)
    assert mac != derive_mac(lab + "x", guest) != derive_mac(lab, guest + "x")


def test_derived_tap_fits_ifnamsiz_and_is_stable():
    assert derive_tap("lab", "rv1") == derive_tap("lab", "rv1")
    assert derive_tap("lab", "rv1").endswith("-rv1")
    long1, long2 = derive_tap("lab", "riscv64-node-1"), derive_tap("lab", "riscv64-node-2")
    assert len(long1) <= 15 and len(long2) <= 15 and long1 != long2
    assert derive_tap("lab1", "rv1") != derive_tap("lab2", "rv1")


def test_ips_fill_the_lowest_free_addresses():
    p = plan_of([{"name": "a", "image": "i"}, {"name": "b", "image": "i", "ip": "10.198.101.1"},
                 {"name": "c", "image": "i"}])
    assert [str(g.ip) for g in p.guests] == ["10.198.101.2/24", "10.198.101.1/24", "10.198.101.3/24"]
    assert all(g.gateway == ipaddress.IPv4Address("10.198.101.114") for g in p.guests)


def test_subnet_exhaustion_is_reported():
    guests = [{"name": f"g{i}", "image": "i"} for i in range(3)]
    with pytest.raises(SpecError, match=r"guests\[2\]\.ip: no free address"):
        plan_of(guests, address="10.0.0.1/30")


def test_derived_tap_colliding_with_explicit_one_is_reported():
    taken = derive_tap("t", "b")
    with pytest.raises(SpecError, match="collides"):
        plan_of([{"name": "a", "image": "i", "tap": taken}, {"name": "b", "image": "i"}])


def test_accel_auto_kvm_only_for_native_arch():
    p = plan_of([{"name": "rv", "image": "i"}, {"name": "pc", "image": "j", "arch": "x86_64"}], host=X86_KVM)
    assert [g.accel for g in p.guests] == ["tcg", "kvm"]
    assert p.guests[0].boot_timeout > p.guests[1].boot_timeout  # TCG gets the long timeout


def test_kvm_for_foreign_arch_or_without_dev_kvm_is_an_error():
    with pytest.raises(SpecError, match="accel"):
        plan_of([{"name": "rv", "image": "i", "accel": "kvm"}], host=X86_KVM)
    with pytest.raises(SpecError, match="/dev/kvm"):
        plan_of([{"name": "pc", "image": "i", "arch": "x86_64", "accel": "kvm"}], host=X86_TCG)


def test_image_arch_must_match():
    with pytest.raises(SpecError, match="is x86_64"):
        plan_of([{"name": "rv", "image": "i"}], images={"i": image(Arch.x86_64)})


def test_socket_paths_must_fit_sun_path():
    with pytest.raises(SpecError, match="shorter --state-dir"):
        plan_of([{"name": "rv", "image": "i"}], state=Path("/" + "d" * 100))


def test_riscv64_argv_expresses_the_seed_command_line():
    p = plan_of([{"name": "rv1", "image": "i", "cpus": 2, "memory": "2G", "mac": "52:54:00:12:34:55",
                  "tap": "tap0", "append": "loglevel=3"}])
    argv = qemu_argv.argv(p.guests[0])
    joined = " ".join(argv)
    assert argv[0] == "qemu-system-riscv64"
    assert "-machine virt" in joined and "-accel tcg" in joined and "-smp 2 -m 2048M" in joined
    assert "-netdev tap,id=net0,ifname=tap0,script=no,downscript=no " in joined + " "
    assert "-device virtio-net-device,netdev=net0,mac=52:54:00:12:34:55" in joined
    assert "-device virtio-blk-device,drive=hd0" in joined
    assert "file=/run/bl/t/guests/rv1/overlay.qcow2,format=qcow2" in joined
    assert "-bios default -kernel /img/vmlinuz -initrd /img/initrd.img" in joined
    assert argv[argv.index("-append") + 1] == ("root=/dev/vda rw console=ttyS0 loglevel=3 "
                                               "systemd.default_device_timeout_sec=infinity "
                                               "systemd.default_timeout_start_sec=infinity")
    assert "socket,id=console,path=/run/bl/t/guests/rv1/console.sock,server=on,wait=off" in joined
    assert "-mon chardev=qmp,mode=control" in joined
    assert "-S" in argv  # paused until the console reader is attached


def test_emulation_timeouts_join_a_kernel_line_unless_it_sets_them_or_a_firmware_reads_its_own():
    own = plan_of([{"name": "rv1", "image": "i", "append": "systemd.default_timeout_start_sec=90"}])
    assert own.guests[0].append == ("root=/dev/vda rw console=ttyS0 systemd.default_timeout_start_sec=90 "
                                    "systemd.default_device_timeout_sec=infinity")
    fw = plan_of([{"name": "oe", "image": "i"}], images={"i": image(style=BootStyle.firmware, append="")})
    assert fw.guests[0].append == ""


def test_riscv64_firmware_style_boots_fw_payload_as_kernel():
    p = plan_of([{"name": "oe", "image": "i"}], images={"i": image(style=BootStyle.firmware)})
    joined = " ".join(qemu_argv.argv(p.guests[0]))
    assert "-bios none -kernel /img/fw_payload.bin" in joined
    assert "-initrd" not in joined


def test_aarch64_and_x86_64_argv():
    p = plan_of([{"name": "arm", "image": "a", "arch": "aarch64"}, {"name": "pc", "image": "x", "arch": "x86_64"}],
                host=X86_KVM)
    arm, pc = (qemu_argv.argv(g) for g in p.guests)
    assert arm[0] == "qemu-system-aarch64" and "virtio-net-pci,netdev=net0,mac=" in " ".join(arm)
    assert arm[arm.index("-cpu") + 1] == "max,pauth-impdef=on" and "-bios" not in arm
    assert pc[0] == "qemu-system-x86_64" and pc[pc.index("-machine") + 1] == "q35"
    assert pc[pc.index("-accel") + 1] == "kvm" and pc[pc.index("-cpu") + 1] == "host"
    assert any(a.endswith(",vhost=on") for a in pc)
    assert qemu_argv.ARCHES[Arch.aarch64].console == "ttyAMA0"


def test_extra_args_come_last_and_commas_in_paths_are_escaped():
    p = plan_of([{"name": "rv", "image": "i", "qemu_args": ["-device", "virtio-gpu-device"]}],
                state=Path("/run/a,b"))
    argv = qemu_argv.argv(p.guests[0])
    assert argv[-2:] == ["-device", "virtio-gpu-device"]
    assert any("path=/run/a,,b/guests/rv/console.sock" in a for a in argv)
    assert qemu_argv.overlay_argv(p.guests[0])[-3:] == ["-b", "/img/disk.qcow2", "/run/a,b/guests/rv/overlay.qcow2"]


UNDERLAY = UnderlayFacts(interface="eth0", local=ipaddress.IPv4Address("172.31.0.1"), mtu=1500,
                         peers=(ipaddress.IPv4Address("172.31.0.2"),))


def peer_plan(guests, underlay=UNDERLAY, peers=None, **bridge):
    data = {"name": "t", "bridge": {"name": "br0", "address": "10.198.101.114/24", **bridge},
            "peers": peers or ["172.31.0.2"], "guests": guests}
    spec = parse_lab_data(data)
    return make_plan(spec, {g.image: image(g.arch) for g in spec.guests},
                     HostFacts(arch="x86_64", kvm=False, underlay=underlay), Path("/run/bl/t"))


@pytest.mark.parametrize("policy, underlay_mtu, device, guests", [
    (MtuPolicy.auto, 1550, 1500, None), (MtuPolicy.auto, 9000, 1500, None), (MtuPolicy.auto, 1500, 1450, 1450),
    (MtuPolicy.lower_guests, 9000, 8950, 8950), (MtuPolicy.lower_guests, 1500, 1450, 1450),
    (MtuPolicy.check, 1550, 1500, None)])
def test_the_mtu_follows_the_policy_and_says_why(policy, underlay_mtu, device, guests):
    mtu, guest_mtu, reason = choose_mtu(policy, underlay_mtu, "eth0")
    assert (mtu, guest_mtu) == (device, guests)
    assert reason and f"{underlay_mtu}" in reason and (f"MTU {guests}" if guests else "keep MTU 1500") in reason


def test_check_refuses_a_small_underlay():
    assert choose_mtu(MtuPolicy.check, 1500, "eth0")[2] is None
    with pytest.raises(SpecError, match=r"peers\.mtu: check: eth0 carries 1500 bytes, VXLAN needs 1550"):
        peer_plan([{"name": "a", "image": "i", "ip": "10.198.101.1"}], peers={"hosts": ["172.31.0.2"], "mtu": "check"})


def test_with_peers_guests_take_the_pool_and_the_mtu_and_the_bridge_mac_is_this_hosts():
    plan = peer_plan([{"name": "a", "image": "i"}, {"name": "b", "image": "i", "ip": "10.198.101.3"}],
                     pool="10.198.101.64/27")
    assert [str(g.ip.ip) for g in plan.guests] == ["10.198.101.64", "10.198.101.3"]
    assert [g.mtu for g in plan.guests] == [1450, 1450]
    ov = plan.overlay
    assert ov is not None and ov.device == "bl" + derive_tap("t", "x")[2:6] + "_vx" and 1 <= ov.vni < 1 << 24
    assert (ov.port, ov.interface, str(ov.local), ov.api_port) == (4789, "eth0", "172.31.0.1", 8700)
    other = peer_plan([{"name": "c", "image": "i", "ip": "10.198.101.5"}], address="10.198.101.115/24")
    assert other.bridge_mac != plan.bridge_mac, "two hosts' bridges on one L2 need two MACs"
    assert other.overlay and other.overlay.vni == ov.vni, "the VNI follows from the lab name alone"
    alone = plan_of([{"name": "a", "image": "i"}])
    assert alone.overlay is None and alone.guests[0].mtu is None


def test_peers_need_addresses_no_two_hosts_hand_out():
    with pytest.raises(SpecError) as e:
        peer_plan([{"name": "a", "image": "i"}, {"name": "b", "image": "i", "ip": "10.198.101.3"}])
    assert [i.path for i in e.value.issues] == ["guests[0].ip"]
    with pytest.raises(SpecError, match=r"bridge\.pool: 10\.0\.0\.0/27 is not inside the bridge subnet"):
        plan_of([{"name": "a", "image": "i"}], pool="10.0.0.0/27")
    with pytest.raises(SpecError, match=r"bridge\.pool: .*has host bits set"):
        plan_of([{"name": "a", "image": "i"}], pool="10.198.101.65/27")


def test_the_bridge_subnet_must_not_hold_the_underlay():
    inside = UnderlayFacts(interface="eth0", local=ipaddress.IPv4Address("10.198.101.200"), mtu=1500,
                           peers=(ipaddress.IPv4Address("10.198.101.201"),))
    with pytest.raises(SpecError) as e:
        peer_plan([{"name": "a", "image": "i", "ip": "10.198.101.1"}], underlay=inside)
    paths = {i.path: i.message for i in e.value.issues}
    assert "holds this host's underlay address 10.198.101.200" in paths["bridge.address"]
    assert "peer 10.198.101.201 is inside the bridge subnet" in paths["peers.hosts"]


@pytest.mark.parametrize("hosts, problem", [
    (["127.0.0.1"], "cannot be another host's unicast address"), (["1.2.3.999"], "neither an IPv4 address nor"),
    ([7], "expected an IPv4 address or a DNS name"), (["a..b"], "neither"), ([], "at least 1 item")])
def test_bad_peers_are_named(hosts, problem):
    with pytest.raises(SpecError, match=problem):
        parse_lab_data({"bridge": {"address": "10.0.0.1/24"}, "peers": hosts,
                        "guests": [{"name": "a", "image": "i", "ip": "10.0.0.2"}]})
