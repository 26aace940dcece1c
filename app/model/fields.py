"""The lab file's field types: names, MACs, memory sizes, closed sets, and
the control-character ban every string gets. Pure."""

from __future__ import annotations

import re
from enum import StrEnum
from typing import Annotated, Any

from pydantic import AfterValidator, BeforeValidator, Field

IFNAMSIZ = 16  # including the trailing NUL, so 15 usable characters
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
_IFNAME = re.compile(r"^[A-Za-z0-9_.-]{1,15}$")
GUEST_NAME = re.compile(r"^[a-z0-9]([a-z0-9-]{0,30}[a-z0-9])?$")
_MAC = re.compile(r"^[0-9a-f]{2}(:[0-9a-f]{2}){5}$")
_MEMORY = re.compile(r"^(\d+)\s*([MG]i?B?)?$", re.IGNORECASE)

# Options bridgelab itself owns on the qemu command line; a user passing them
# through `qemu_args` would silently break the console, QMP or the tap.
RESERVED_QEMU_OPTIONS = frozenset(
    {"-qmp", "-qmp-pretty", "-serial", "-monitor", "-mon", "-daemonize", "-pidfile",
     "-nographic", "-name", "-kernel", "-initrd", "-append", "-bios", "-accel", "-enable-kvm"}
)


class Arch(StrEnum):
    riscv64 = "riscv64"
    x86_64 = "x86_64"
    aarch64 = "aarch64"


class Accel(StrEnum):
    auto = "auto"
    tcg = "tcg"
    kvm = "kvm"


def has_control_chars(text: str) -> bool:
    return bool(_CONTROL.search(text))


def _no_control(value: str) -> str:
    if has_control_chars(value):
        raise ValueError("control characters are not allowed")
    return value


def _ifname(value: str) -> str:
    if value in (".", "..") or not _IFNAME.match(value):
        raise ValueError(
            f"invalid interface name {value!r}: 1-{IFNAMSIZ - 1} characters from A-Z a-z 0-9 _ . -"
        )
    return value


def normalize_mac(value: str) -> str:
    mac = value.lower().replace("-", ":")
    if not _MAC.match(mac):
        raise ValueError(f"invalid MAC address {value!r}: expected six hex octets like 02:00:5e:10:00:01")
    first = int(mac[:2], 16)
    if first & 0x01:
        raise ValueError(f"MAC {value!r} is multicast (lowest bit of the first octet is set)")
    if mac == "00:00:00:00:00:00":
        raise ValueError("MAC 00:00:00:00:00:00 is not a usable address")
    return mac


def parse_memory_mib(value: Any) -> int:
    """Accept 2048, '2048', '2048M', '2G', '2GiB'; return MiB."""
    if isinstance(value, bool):
        raise ValueError("memory must be a size like 2048 (MiB), '2G' or '512M'")
    if isinstance(value, int):
        mib = value
    else:
        m = _MEMORY.match(str(value).strip())
        if not m:
            raise ValueError(f"invalid memory size {value!r}: use MiB (2048) or a suffix ('2G', '512M')")
        mib = int(m.group(1)) * (1024 if (m.group(2) or "M").upper().startswith("G") else 1)
    if not 64 <= mib <= 1024 * 1024:
        raise ValueError(f"memory {mib} MiB is out of range (64 MiB .. 1 TiB)")
    return mib


def _guest_name(value: str) -> str:
    if not GUEST_NAME.match(value):
        raise ValueError(f"invalid guest name {value[:40]!r}: 1-32 of a-z 0-9 '-', starting and ending with a "
                         "letter or digit")
    return value


# What the validators enforce, also written into the JSON schema (the API's
# OpenAPI document), so that a generated client never sends what is refused
# for a static reason. The validators stay the ones that run: their messages
# say what is wrong in words, a pattern mismatch would not.
NO_CONTROL_PATTERN = r"^[^\x00-\x1f\x7f-\x9f]*$"
# 1-15 of A-Za-z0-9_.- except "." and ".." (written without a lookahead,
# which not every JSON-schema engine has).
IFNAME_PATTERN = r"^(?:[A-Za-z0-9_-][A-Za-z0-9_.-]{0,14}|\.[A-Za-z0-9_-][A-Za-z0-9_.-]{0,13}|\.\.[A-Za-z0-9_.-]{1,13})$"
# Six octets, ':' or '-' between, unicast (the first octet even); not all zero.
MAC_PATTERN = r"^[0-9A-Fa-f][02468aceACE](?:[:-][0-9A-Fa-f]{2}){5}$"
MAC_ZERO_PATTERN = r"^00(?:[:-]00){5}$"


def _schema(**extra: Any) -> Any:
    return Field(json_schema_extra=extra)


SafeStr = Annotated[str, AfterValidator(_no_control), _schema(pattern=NO_CONTROL_PATTERN)]
GuestName = Annotated[str, AfterValidator(_guest_name),
                      _schema(pattern=GUEST_NAME.pattern, minLength=1, maxLength=32, examples=["rv1"])]
IfName = Annotated[str, AfterValidator(_ifname), _schema(pattern=IFNAME_PATTERN, minLength=1, maxLength=15)]
def _mac_input(v: Any) -> Any:
    # YAML 1.1 reads an unquoted all-digit MAC (52:54:00:12:34:55) as a
    # base-60 number: say so instead of "should be a valid string".
    if isinstance(v, int) and not isinstance(v, bool):
        raise ValueError("write the MAC in quotes: unquoted, YAML reads digits and colons as a number "
                         "(mac: \"52:54:00:12:34:55\")")
    return normalize_mac(v) if isinstance(v, str) else v


Mac = Annotated[str, BeforeValidator(_mac_input),
                _schema(pattern=MAC_PATTERN, **{"not": {"pattern": MAC_ZERO_PATTERN}},
                        examples=["02:00:5e:10:00:01"])]
MemoryMiB = Annotated[int, BeforeValidator(parse_memory_mib)]
