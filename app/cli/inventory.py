"""`bridgelab inventory`: the guests with an ssh NIC as an Ansible inventory
or an ssh_config, for the tools people drive guests with."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from .client import checked, client


def cmd_inventory(args: argparse.Namespace) -> int:
    with client(args) as c:
        guests: list[dict[str, Any]] = checked(c.get("/guests"))
    reachable = [g for g in guests if g.get("ssh")]
    left_out = [g["name"] for g in guests if not g.get("ssh")]
    if left_out:
        print(f"bridgelab: without an ssh NIC (user_nic), left out: {', '.join(left_out)}", file=sys.stderr)
    print(inventory(reachable, args.format), end="")
    return 0


def inventory(guests: list[dict[str, Any]], fmt: str) -> str:
    """Guests with an ssh NIC as an Ansible INI inventory or an ssh_config.
    Host keys are not pinned (as `vagrant ssh-config`): every overlay is new,
    and the forward listens on the host's loopback only."""
    def address(g: dict[str, Any]) -> tuple[str, str]:
        host, _, port = str(g["ssh"]).rpartition(":")
        return host, port
    if fmt == "ansible":
        lines = ["[bridgelab]"] + [f"{g['name']} ansible_host={address(g)[0]} ansible_port={address(g)[1]} "
                                   f"ansible_user={g['user']}" for g in guests]
        lines += ["", "[bridgelab:vars]",
                  "ansible_ssh_common_args='-o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null'"]
        return "\n".join(lines) + "\n"
    blocks = [f"Host {g['name']}\n  HostName {address(g)[0]}\n  Port {address(g)[1]}\n  User {g['user']}\n"
              "  StrictHostKeyChecking no\n  UserKnownHostsFile /dev/null\n  LogLevel ERROR\n" for g in guests]
    return "\n".join(blocks)


__all__ = ["cmd_inventory", "inventory"]
