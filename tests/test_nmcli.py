"""Guest network commands and their parsers (output captured from the sid
guest), and the NetworkManager keyfile and the script that applies it."""

from __future__ import annotations

import dataclasses
import ipaddress
import shlex
import shutil
import subprocess
from pathlib import Path

from bridgelab.guest import commands, nm_profile
from bridgelab.guest.shell import render

IP_LINK = (
    "1: lo: <LOOPBACK,UP,LOWER_UP> mtu 65536 qdisc noqueue state UNKNOWN mode DEFAULT group default qlen 1000\\"
    "    link/loopback 00:00:00:00:00:00 brd 00:00:00:00:00:00\n"
    "2: enp0s1: <BROADCAST,MULTICAST,UP,LOWER_UP> mtu 1500 qdisc fq_codel state UP mode DEFAULT group default "
    "qlen 1000\\    link/ether 02:11:22:33:44:55 brd ff:ff:ff:ff:ff:ff\\    altname enx021122334455\n"
    "3: eth1@if7: <BROADCAST,MULTICAST> mtu 1500 qdisc noop state DOWN\\    link/ether 52:54:00:12:34:56 brd "
    "ff:ff:ff:ff:ff:ff\n"
    "[   42.000000] random kernel line link/ether 02:11:22:33:44:55\n"
)

CFG = commands.NetConfig(mac="02:11:22:33:44:55", address=ipaddress.IPv4Interface("10.198.101.1/24"),
                      gateway=ipaddress.IPv4Address("10.198.101.114"))


def test_interface_is_found_by_mac_not_by_name():
    assert commands.iface_for_mac(IP_LINK, "02:11:22:33:44:55") == "enp0s1"
    assert commands.iface_for_mac(IP_LINK, "52:54:00:12:34:56") == "eth1"
    assert commands.iface_for_mac(IP_LINK, "02:00:00:00:00:99") is None


def test_profile_name_is_deterministic_per_mac():
    assert commands.profile_name("02:11:22:33:44:55") == "bridgelab-021122334455"


def test_the_keyfile_binds_the_profile_to_the_mac_with_a_stable_uuid():
    lines = nm_profile.keyfile(CFG)
    assert "mac-address=02:11:22:33:44:55" in lines and "address1=10.198.101.1/24" in lines
    assert "gateway=10.198.101.114" in lines and "autoconnect-priority=100" in lines
    assert not any(line.startswith("dns=") for line in lines)
    assert f"uuid={nm_profile.profile_uuid('02:11:22:33:44:55')}" in lines
    assert nm_profile.profile_uuid("02:11:22:33:44:55") == nm_profile.profile_uuid("02:11:22:33:44:55".upper())
    assert nm_profile.profile_uuid("02:11:22:33:44:55") != nm_profile.profile_uuid("02:11:22:33:44:56")
    dns = commands.NetConfig(mac=CFG.mac, address=CFG.address, gateway=None,
                             dns=(ipaddress.IPv4Address("10.198.101.114"), ipaddress.IPv4Address("9.9.9.9")))
    assert "dns=10.198.101.114;9.9.9.9;" in nm_profile.keyfile(dns)
    assert not any(line.startswith("gateway=") for line in nm_profile.keyfile(dns))
    assert nm_profile.keyfile_path(CFG.mac) == \
        "/etc/NetworkManager/system-connections/bridgelab-021122334455.nmconnection"


def test_the_apply_command_takes_every_value_as_one_argument():
    argv = nm_profile.apply_cmd(CFG, "eth0; reboot")
    assert argv[:2] == ["sh", "-c"] and "eth0" not in argv[2] and "10.198" not in argv[2]
    assert argv[3:10] == ["nm-apply", nm_profile.keyfile_path(CFG.mac), "bridgelab-021122334455",
                          nm_profile.profile_uuid(CFG.mac), "eth0; reboot", " inet 10.198.101.1/24 ",
                          str(nm_profile.WAIT_SECONDS)]
    assert argv[10:] == nm_profile.keyfile(CFG)
    # What the console backend types for it: one word per element, nothing interpreted.
    assert shlex.split(render(argv))[7] == "eth0; reboot"


def test_the_apply_output_says_whether_anything_changed():
    out = ("changed=1\n---\n2: eth0    inet 10.198.101.1/24 brd 10.198.101.255 scope global noprefixroute eth0\\"
           "       valid_lft forever preferred_lft forever\n")
    assert nm_profile.parse_apply(out) == (True, [ipaddress.IPv4Interface("10.198.101.1/24")])
    assert nm_profile.parse_apply("changed=0\n---\n") == (False, [])
    assert nm_profile.parse_apply("Error: something else\n") is None


FAKE_BUSCTL = r"""#!/bin/sh
echo "busctl $*" >> {log}
case "$*" in
  *GetDeviceByIpIface*) echo 'o "/org/freedesktop/NetworkManager/Devices/2"' ;;
  *LoadConnections*) echo "bas true 0" ;;
  *GetConnectionByUuid*) echo 'o "/org/freedesktop/NetworkManager/Settings/4"' ;;
  *" ActiveConnection") echo 'o "/org/freedesktop/NetworkManager/ActiveConnection/7"' ;;
  *" Uuid") echo 's "{uuid}"' ;;
  *ActivateConnection*) echo 'o "/org/freedesktop/NetworkManager/ActiveConnection/8"' ;;
  *) exit 1 ;;
esac
"""


def test_the_apply_script_writes_the_keyfile_private_and_only_when_it_differs(tmp_path):
    """The script's own shell logic, run by the host's sh with stand-ins for
    busctl and ip that log what they are asked."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    log = tmp_path / "calls"
    (bin_dir / "busctl").write_text(FAKE_BUSCTL.format(log=log, uuid=nm_profile.profile_uuid(CFG.mac)))
    (bin_dir / "ip").write_text("#!/bin/sh\necho '2: eth0    inet 10.198.101.1/24 brd 10.198.101.255 scope global'\n")
    for tool in ("busctl", "ip"):
        (bin_dir / tool).chmod(0o755)
    keyfile = tmp_path / "k.nmconnection"
    argv = nm_profile.apply_cmd(CFG, "eth0", wait=1)
    argv[4] = str(keyfile)
    env = {"PATH": f"{bin_dir}:/usr/bin:/bin"}

    def run() -> tuple[bool, list[ipaddress.IPv4Interface]] | None:
        r = subprocess.run(argv, capture_output=True, text=True, env=env, check=True)
        return nm_profile.parse_apply(r.stdout)
    assert run() == (True, [ipaddress.IPv4Interface("10.198.101.1/24")])
    assert keyfile.read_text().splitlines() == nm_profile.keyfile(CFG)
    assert keyfile.stat().st_mode & 0o777 == 0o600
    first = log.read_text()
    assert "ActivateConnection ooo /org/freedesktop/NetworkManager/Settings/4 " \
           "/org/freedesktop/NetworkManager/Devices/2 /" in first
    log.unlink()
    assert run() == (False, [ipaddress.IPv4Interface("10.198.101.1/24")])  # written and active: nothing to do
    assert "ActivateConnection" not in log.read_text() and "LoadConnections" in log.read_text()


def test_the_ping_script_takes_its_targets_as_arguments(tmp_path):
    """The fixed script runs in a real sh; a target is only ever an argument."""
    fake_ping = tmp_path / "ping"
    fake_ping.write_text('#!/bin/sh\nfor a; do t=$a; done; [ "$t" = 10.0.0.1 ]\n')
    fake_ping.chmod(0o755)
    argv = commands.ping_cmd(["10.0.0.1", "10.0.0.2; touch pwned", "$(touch pwned)"])
    out = subprocess.run(argv, capture_output=True, text=True, cwd=tmp_path,
                         env={"PATH": f"{tmp_path}:/usr/bin:/bin"}).stdout
    assert sorted(out.splitlines()) == sorted(["ok 10.0.0.1", "fail 10.0.0.2; touch pwned", "fail $(touch pwned)"])
    assert not (tmp_path / "pwned").exists()


def test_addresses_and_ping_parsing():
    out = ("2: eth0    inet 10.198.101.1/24 brd 10.198.101.255 scope global noprefixroute eth0\\"
           "       valid_lft forever preferred_lft forever\n")
    assert commands.parse_addresses(out) == [ipaddress.IPv4Interface("10.198.101.1/24")]
    assert commands.parse_ping("ok 10.0.0.1\n[ 3.2] noise\nfail 10.0.0.2\n") == {"10.0.0.1": True, "10.0.0.2": False}
    assert commands.ping_cmd(["10.0.0.1"])[-2:] == ["5", "10.0.0.1"]


def test_neighbour_states():
    from bridgelab.guest.commands import neighbour_cmd, parse_neighbour
    assert parse_neighbour("10.0.0.2 dev eth0 lladdr 52:54:00:12:34:56 REACHABLE\n") == "resolved"
    assert parse_neighbour("10.0.0.2 dev eth0 lladdr 52:54:00:12:34:56 STALE\n") == "resolved"
    assert parse_neighbour("10.0.0.2 dev eth0 FAILED\n") == "failed"
    assert parse_neighbour("10.0.0.2 dev eth0 INCOMPLETE\n") == "failed"
    assert parse_neighbour("") == "none"
    assert neighbour_cmd("10.0.0.2; reboot") == ["ip", "-4", "neigh", "show", "to", "10.0.0.2; reboot"]


def test_the_network_manager_is_read_from_the_detect_script_output():
    assert commands.parse_manager("[ 3.1] noise\nmanager=NetworkManager\n") == "NetworkManager"
    assert commands.parse_manager("manager=systemd-networkd\n") == "systemd-networkd"
    assert commands.parse_manager("manager=none\n") == "none"
    assert commands.parse_manager("manager=connman\n") == "none"
    assert commands.probe_cmd("02:11:22:33:44:55")[:2] == ["sh", "-c"]


def test_networkd_units_match_the_mac_and_keep_the_side_nic_off_the_default_route():
    unit = commands.networkd_unit(CFG)
    assert unit[:5] == ["# written by bridgelab", "[Match]", "MACAddress=02:11:22:33:44:55", "", "[Network]"]
    assert "Address=10.198.101.1/24" in unit
    side = commands.networkd_unit(commands.side_nic("52:54:00:12:34:56"))
    assert {"DHCP=ipv4", "UseRoutes=false", "UseDNS=false"} <= set(side)
    assert not any(x.startswith("Address=") for x in side)
    assert commands.networkd_path(CFG.mac) == "/etc/systemd/network/10-bridgelab-021122334455.network"


def test_the_file_commands_write_whole_files_from_arguments(tmp_path):
    target = tmp_path / "x.network"
    lines = ["[Match]", "MACAddress=02:11:22:33:44:55", "Name=$(touch pwned) 'q'"]
    assert subprocess.run(commands.read_file_cmd(str(target)), capture_output=True, text=True).stdout == ""
    subprocess.run(commands.write_file_cmd(str(target), lines), check=True, cwd=tmp_path)
    assert target.read_text() == "\n".join(lines) + "\n"
    assert subprocess.run(commands.read_file_cmd(str(target)), capture_output=True,
                          text=True).stdout == target.read_text()
    assert not (tmp_path / "pwned").exists() and not (tmp_path / "x.network.tmp").exists()


FAKE_NMCLI = r"""#!/bin/sh
echo "nmcli $*" >> {log}
case "$*" in
  "-g GENERAL.CONNECTION device show eth0") echo "Wired connection 1" ;;
esac
"""


def test_without_busctl_the_apply_script_loads_and_activates_through_nmcli(tmp_path):
    """A guest without systemd's busctl: `nmcli connection load`, then an
    activation that does not wait (the script waits for the address)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("cat", "mkdir", "mv", "grep", "sleep"):
        (bin_dir / tool).symlink_to(shutil.which(tool) or tool)
    log = tmp_path / "calls"
    (bin_dir / "nmcli").write_text(FAKE_NMCLI.format(log=log))
    (bin_dir / "ip").write_text("#!/bin/sh\necho '2: eth0    inet 10.198.101.1/24 brd 10.198.101.255 scope global'\n")
    for tool in ("nmcli", "ip"):
        (bin_dir / tool).chmod(0o755)
    argv = nm_profile.apply_cmd(CFG, "eth0", wait=1)
    argv[4] = str(tmp_path / "k.nmconnection")
    r = subprocess.run([shutil.which("sh") or "/bin/sh", *argv[1:]], capture_output=True, text=True,
                       env={"PATH": str(bin_dir)}, check=True)
    assert nm_profile.parse_apply(r.stdout) == (True, [ipaddress.IPv4Interface("10.198.101.1/24")])
    assert log.read_text().splitlines() == [
        "nmcli -g GENERAL.CONNECTION device show eth0", "nmcli -g GENERAL.CONNECTION device show eth0",
        f"nmcli connection load {argv[4]}",
        "nmcli --wait 0 connection up bridgelab-021122334455 ifname eth0"]


def _probe_with(tmp_path, ip_misses: int, udev_misses: int, wait: int = 30) -> tuple[str, list[str]]:
    """probe_cmd run by the host's sh against an `ip` whose NIC shows after
    `ip_misses` calls and a `udevadm` that calls it initialized after
    `udev_misses` queries: (the script's output, the udevadm calls)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    count = tmp_path / "count"
    lines = IP_LINK.splitlines()
    (bin_dir / "ip").write_text(
        "#!/bin/sh\nn=$(cat " + shlex.quote(str(count)) + " 2>/dev/null || echo 0); n=$((n + 1)); echo $n > "
        + shlex.quote(str(count)) + f"\nprintf '%s\\n' {shlex.quote(lines[0])}\n"
        + f"[ $n -le {ip_misses} ] || printf '%s\\n' {shlex.quote(lines[1])} {shlex.quote(lines[2])}\n")
    calls = shlex.quote(str(tmp_path / "udev"))
    (bin_dir / "udevadm").write_text(
        f"#!/bin/sh\necho \"$*\" >> {calls}\n"
        f"[ $(wc -l < {calls}) -gt {udev_misses} ] && [ \"$5\" = /sys/class/net/enp0s1 ] && echo USEC_INITIALIZED=1\n"
        "exit 0\n")
    if not (bin_dir / "systemctl").exists():  # never the host's own: the script may start a unit
        (bin_dir / "systemctl").write_text("#!/bin/sh\n[ \"$1\" = is-enabled ] && echo disabled\nexit 1\n")
    for tool in ("ip", "udevadm", "systemctl"):
        (bin_dir / tool).chmod(0o755)
    argv = commands.probe_cmd("02:11:22:33:44:55")
    argv[-1] = str(wait)
    env = {"PATH": f"{bin_dir}:/usr/bin:/bin"}
    out = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=60).stdout
    return out, (tmp_path / "udev").read_text().splitlines() if (tmp_path / "udev").exists() else []


def test_the_probe_waits_for_udev_to_initialize_that_nic_only(tmp_path):
    """The NIC's driver loads late and udev then takes a while with it: the
    probe lists the links only once udev has initialized the NIC with the
    MAC (found by MAC, whatever its name), not once udev's whole queue is empty."""
    out, udev = _probe_with(tmp_path, ip_misses=2, udev_misses=2)
    assert commands.parse_probe(out, "02:11:22:33:44:55")[0] == "enp0s1"
    assert udev == ["info -q property -p /sys/class/net/enp0s1"] * 3
    assert int((tmp_path / "count").read_text()) == 2 + 3 + 1  # misses, the three waits, the listing


def test_a_nic_that_never_shows_ends_the_wait_at_its_limit(tmp_path):
    out, udev = _probe_with(tmp_path, ip_misses=10**6, udev_misses=0, wait=1)
    assert commands.parse_probe(out, "02:11:22:33:44:55")[0] is None and udev == []
    assert int((tmp_path / "count").read_text()) == 2 + 1  # one second of 0.5 s polls, then the listing


def _fake_systemctl(tmp_path: Path, job: str) -> Path:
    """NetworkManager enabled, not running; `job`: its queued start job's id, or empty."""
    log, started = tmp_path / "systemctl", tmp_path / "started"
    (tmp_path / "bin").mkdir()
    fake = tmp_path / "bin" / "systemctl"
    fake.write_text(
        f"#!/bin/sh\necho \"$*\" >> {shlex.quote(str(log))}\n"
        f"case \"$1\" in\n"
        f"  is-active) [ \"$3\" = NetworkManager ] && [ -e {shlex.quote(str(started))} ];;\n"
        f"  is-enabled) [ \"$2\" = NetworkManager ] && echo enabled || echo disabled;;\n"
        f"  show) echo {shlex.quote(job)};;\n"
        f"  start) sleep 0.3; touch {shlex.quote(str(started))};;\n"
        f"esac\n")
    fake.chmod(0o755)
    return log


def test_an_enabled_manager_not_running_yet_is_waited_for_by_its_start_job(tmp_path):
    """Early in a boot NetworkManager is enabled but not started: the probe
    joins its queued start job (`systemctl start` blocks on it) instead of
    polling `systemctl is-active`, which takes CPU from the boot it waits for."""
    log = _fake_systemctl(tmp_path, job="17")
    out, _ = _probe_with(tmp_path, ip_misses=0, udev_misses=0)
    assert commands.parse_probe(out, "02:11:22:33:44:55") == ("enp0s1", "NetworkManager")
    assert log.read_text().splitlines() == ["is-active -q NetworkManager", "is-enabled NetworkManager",
                                            "is-active -q NetworkManager", "show -p Job --value NetworkManager",
                                            "start NetworkManager"]


def test_a_manager_somebody_stopped_is_not_started_by_the_probe(tmp_path):
    log = _fake_systemctl(tmp_path, job="")
    out, _ = _probe_with(tmp_path, ip_misses=0, udev_misses=0)
    assert commands.parse_probe(out, "02:11:22:33:44:55") == ("enp0s1", "NetworkManager")
    assert "start NetworkManager" not in log.read_text().splitlines()


def test_a_lowered_mtu_goes_into_the_profile_and_the_network_file_but_not_onto_the_side_nic():
    cfg = dataclasses.replace(CFG, mtu=1450)
    keyfile = nm_profile.keyfile(cfg)
    assert keyfile[keyfile.index("[ethernet]"):][:3] == ["[ethernet]", "mac-address=02:11:22:33:44:55", "mtu=1450"]
    assert "mtu=1450" not in nm_profile.keyfile(CFG)
    assert commands.networkd_unit(cfg)[-3:] == ["", "[Link]", "MTUBytes=1450"]
    assert "[Link]" not in commands.networkd_unit(CFG)
    side = dataclasses.replace(commands.side_nic("52:54:00:12:34:56"), mtu=1450)
    assert not any(line.startswith("mtu=") for line in nm_profile.keyfile(side))
