"""The few guest commands bridgelab runs, for the fake guest of the
in-process runner tests: `busctl`, `ip`, `nmcli`, `ping`, `systemctl` and `udevadm`, put on the
fake guest's PATH as wrappers that run `fakenm.py TOOL ARGS...`. They keep one NIC's
NetworkManager state in $FAKE_NM_STATE/state.json and answer in the formats
of the real tools (the parsers in guest/commands.py are tested against
real output elsewhere). $FAKE_NM_STATE/unreachable lists addresses that
ping must not reach; $FAKE_NM_STATE/delay slows the activation;
$FAKE_NM_STATE/manager names the enabled network manager (default
NetworkManager); with $FAKE_NM_STATE/nic_late the NIC's driver loads late,
as after a reboot under TCG: `ip link` shows no NIC for its first
LATE_NIC_CALLS calls after a boot. `udevadm info` says the NIC is initialized.
"""

from __future__ import annotations

import configparser
import json
import os
import shlex
import signal
import sys
import time
from pathlib import Path

STATE = Path(os.environ.get("FAKE_NM_STATE", "."))
IFACE = "enp0s1"
DHCP_ADDRESS = "10.0.2.15/24"
LATE_NIC_CALLS = 3


def load() -> dict:
    f = STATE / "state.json"
    return json.loads(f.read_text()) if f.exists() else {"profiles": {}, "live": None, "active": None}


def save(state: dict) -> None:
    (STATE / "state.json").write_text(json.dumps(state))


def ip(args: list[str]) -> int:
    state = load()
    joined = " ".join(args)
    if joined == "-o link show":
        calls = STATE / "link_calls"  # since this boot
        seen = int(calls.read_text()) + 1 if calls.exists() else 1
        calls.write_text(str(seen))
        nic_loaded = not (STATE / "nic_late").exists() or seen > LATE_NIC_CALLS
        print("1: lo: <LOOPBACK,UP,LOWER_UP> mtu 65536 qdisc noqueue state UNKNOWN mode DEFAULT group default "
              "qlen 1000\\    link/loopback 00:00:00:00:00:00 brd 00:00:00:00:00:00")
        if nic_loaded:
            print(f"2: {IFACE}: <BROADCAST,MULTICAST,UP,LOWER_UP> mtu 1500 qdisc fq_codel state UP mode DEFAULT "
                  f"group default qlen 1000\\    link/ether {os.environ['FAKE_MAC'].lower()} brd ff:ff:ff:ff:ff:ff")
    elif joined.startswith("-o -4 addr show dev"):
        if state["live"]:
            print(f"2: {IFACE}    inet {state['live']} brd + scope global noprefixroute {IFACE}\\       "
                  "valid_lft forever preferred_lft forever")
    elif joined == "-4 route show default":
        gw = state["profiles"].get(state["active"] or "", {}).get("ipv4.gateway")
        if gw:
            print(f"default via {gw} dev {IFACE} proto static metric 100")
    elif joined.startswith("-4 route get"):
        print(f"{args[-1]} dev {IFACE} src {(state['live'] or '0.0.0.0/0').split('/')[0]} uid 0\n    cache")
    elif joined.startswith("-4 neigh show to"):
        pass
    else:
        print(f"fake ip: unsupported: {joined}", file=sys.stderr)
        return 1
    return 0


def escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace(":", "\\:")


# What bridgelab's keyfile says, in the nmcli names the state file keeps.
KEYFILE_KEYS = {("ethernet", "mac-address"): "802-3-ethernet.mac-address", ("ipv4", "method"): "ipv4.method",
                ("ipv4", "address1"): "ipv4.addresses", ("ipv4", "gateway"): "ipv4.gateway",
                ("ipv4", "dns"): "ipv4.dns", ("ipv4", "never-default"): "ipv4.never-default",
                ("connection", "autoconnect-priority"): "connection.autoconnect-priority",
                ("connection", "uuid"): "connection.uuid"}


def load_keyfile(path: str) -> tuple[str, dict[str, str]]:
    """(profile id, settings) of a keyfile; NetworkManager refuses one that is
    not private to root, and so does this."""
    if os.stat(path).st_mode & 0o077:
        raise SystemExit(f"Error: {path}: keyfile readable by others")
    kf = configparser.ConfigParser(interpolation=None)
    kf.read(path)
    settings = {name: kf[section][key] for (section, key), name in KEYFILE_KEYS.items()
                if kf.has_option(section, key)}
    return kf["connection"]["id"], settings


def activate(state: dict, name: str) -> None:
    """The profile's address goes live ($FAKE_NM_STATE/delay slows it)."""
    if (STATE / "delay").exists():
        time.sleep(float((STATE / "delay").read_text()))
    profile = state["profiles"][name]
    state["live"] = profile.get("ipv4.addresses") if profile.get("ipv4.method") == "manual" else DHCP_ADDRESS
    state["active"] = name


def autoconnect(state: dict, name: str) -> None:
    """As NetworkManager does with a profile loaded for a NIC that has none active."""
    if not state["active"]:
        activate(state, name)


def nmcli(args: list[str]) -> int:
    state = load()
    fields = None
    values_only = False
    while args and args[0] in ("-t", "-c", "-f", "-g", "--wait"):
        if args[0] in ("-c", "--wait"):
            args = args[2:]
        elif args[0] in ("-f", "-g"):
            values_only = args[0] == "-g"
            fields, args = args[1].split(","), args[2:]
        else:
            args = args[1:]
    if args[:2] == ["connection", "show"]:
        profile = state["profiles"].get(args[2])
        if profile is None:
            print(f"Error: {args[2]} - no such connection profile.", file=sys.stderr)
            return 10
        for f in fields or sorted(profile):
            print(f"{f}:{escape(profile.get(f, ''))}")
    elif args[:2] == ["connection", "load"]:
        name, settings = load_keyfile(args[2])
        state["profiles"][name] = settings
        autoconnect(state, name)
    elif args[:2] == ["connection", "up"]:
        activate(state, args[2])
        print("Connection successfully activated (D-Bus active path: /org/freedesktop/NetworkManager/1)")
    elif args[:2] == ["device", "show"]:
        print(state["active"] or "" if values_only else f"GENERAL.CONNECTION:{state['active'] or ''}")
    else:
        print(f"fake nmcli: unsupported: {args}", file=sys.stderr)
        return 2
    save(state)
    return 0


NM_PATH = "/org/freedesktop/NetworkManager"


def busctl(args: list[str]) -> int:
    """The NetworkManager D-Bus calls bridgelab's profile script makes, in
    busctl's output format."""
    state = load()
    uuids: dict[str, str] = state.setdefault("uuids", {})  # profile id -> uuid
    if args[0] == "call" and args[4] == "GetDeviceByIpIface":
        if args[6] != IFACE:
            print(f"Call failed: No device found for the requested iface '{args[6]}'.", file=sys.stderr)
            return 1
        print(f'o "{NM_PATH}/Devices/2"')
    elif args[0] == "call" and args[4] == "LoadConnections":
        name, settings = load_keyfile(args[7])
        state["profiles"][name] = settings
        uuids[name] = settings["connection.uuid"]
        autoconnect(state, name)
        print("bas true 0")
    elif args[0] == "call" and args[4] == "GetConnectionByUuid":
        if args[6] not in uuids.values():
            print("Call failed: No connection with the UUID was found.", file=sys.stderr)
            return 1
        print(f'o "{NM_PATH}/Settings/{args[6].replace("-", "_")}"')
    elif args[0] == "get-property" and args[-1] == "ActiveConnection":
        print(f'o "{NM_PATH}/ActiveConnection/1"' if state["active"] else 'o "/"')
    elif args[0] == "get-property" and args[-1] == "Uuid":
        print(f's "{uuids.get(state["active"] or "", "")}"')
    elif args[0] == "call" and args[4] == "ActivateConnection":
        uuid = args[6].rsplit("/", 1)[1].replace("_", "-")
        name = next(n for n, u in uuids.items() if u == uuid)
        with open(STATE / "events", "a") as f:  # a test can count the explicit activations
            f.write(f"busctl ActivateConnection {name}\n")
        activate(state, name)
        print(f'o "{NM_PATH}/ActiveConnection/1"')
    else:
        print(f"fake busctl: unsupported: {args}", file=sys.stderr)
        return 2
    save(state)
    return 0


def ping(args: list[str]) -> int:
    unreachable = STATE / "unreachable"
    blocked = unreachable.read_text().split() if unreachable.exists() else []
    return 1 if args[-1] in blocked else 0


def systemctl(args: list[str]) -> int:
    if args[:1] in (["is-active"], ["is-enabled"]):  # which network manager: $FAKE_NM_STATE/manager, if any
        chosen = STATE / "manager"
        manager = chosen.read_text().strip() if chosen.exists() else "NetworkManager"
        unit = args[-1]
        if args[0] == "is-enabled":
            print("enabled" if unit == manager else "disabled")
        return 0 if unit == manager else 1
    if args[:1] == ["show"]:  # no queued job: the fake guest's manager runs from the start
        print("")
        return 0
    with open(STATE / "events", "a") as f:
        f.write(f"systemctl {' '.join(args)}\n")
    if args[:1] == ["start"]:  # a unit (the hvc0 getty): recorded only
        return 0
    (STATE / "link_calls").unlink(missing_ok=True)  # the next boot loads its drivers anew
    os.kill(int(os.environ["FAKE_QEMU_PID"]), signal.SIGTERM if args == ["poweroff"] else signal.SIGHUP)
    return 0


def udevadm(args: list[str]) -> int:
    """Recorded, so a test can see what was waited for; `info` on the NIC
    says udev has initialized it."""
    with open(STATE / "events", "a") as f:
        f.write(f"udevadm {' '.join(args)}\n")
    if args[:1] == ["info"] and args[-1] == f"/sys/class/net/{IFACE}":
        print(f"INTERFACE={IFACE}\nUSEC_INITIALIZED=1234567")
    return 0


def install(bin_dir: Path) -> None:
    """The wrappers, for the test that starts a fake guest."""
    bin_dir.mkdir(parents=True, exist_ok=True)
    for tool in ("busctl", "ip", "nmcli", "ping", "systemctl", "udevadm"):
        w = bin_dir / tool
        here = shlex.quote(str(Path(__file__).resolve()))
        w.write_text(f"#!/bin/sh\nexec {shlex.quote(sys.executable)} {here} {tool} \"$@\"\n")
        w.chmod(0o755)


if __name__ == "__main__":
    tool = {"busctl": busctl, "ip": ip, "nmcli": nmcli, "ping": ping, "systemctl": systemctl,
            "udevadm": udevadm}[sys.argv[1]]
    sys.exit(tool(sys.argv[2:]))
