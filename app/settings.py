"""Every BRIDGELAB_* environment variable, with its default and meaning, in
one typed class. The daemon, the CLI and the appliance (compose.yaml and
entrypoint.sh) use the same names; the table in docs/appliance.md is generated from
here (`python -m bridgelab.settings`) and a test keeps the two equal.
"""

from __future__ import annotations

import sys
from enum import StrEnum
from pathlib import Path

from pydantic import Field, SecretStr, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict

from .errors import SettingsError

PREFIX = "BRIDGELAB_"
APPLIANCE = "appliance"  # read by compose.yaml and entrypoint.sh, not by the Python code


class IptablesBackend(StrEnum):
    nft = "nft"
    legacy = "legacy"


class Settings(BaseSettings):
    # Empty counts as unset: compose passes `BRIDGELAB_TOKEN: ${BRIDGELAB_TOKEN:-}`.
    model_config = SettingsConfigDict(env_prefix=PREFIX, env_ignore_empty=True, frozen=True, extra="ignore")

    state_dir: Path = Field(Path("/run/bridgelab"), description=(
        "Where each lab's state lives (`<dir>/<lab>`: ledger, overlays, declared state) and the API token "
        "file (`<dir>/api-token`)."))
    token: SecretStr | None = Field(None, description=(
        "The API's bearer token. Unset: the daemon reads or creates the token file; clients read it."))
    api: str = Field("127.0.0.1:8700", description=(
        "Where CLI clients find the daemon: HOST:PORT, a URL or `unix:/path`."))
    log: str = Field("INFO", description="The daemon's log level (`--log-level`).")
    iptables: IptablesBackend | None = Field(None, description=(
        "`nft` or `legacy`: the iptables backend for the lab's rules, overriding the lab file's "
        "`firewall.backend` and the detection."))
    images: Path | None = Field(None, description=(
        "A directory of image recipes, searched before the source tree and `/usr/share/bridgelab/images`."))
    cache: Path = Field(Path("/var/cache/bridgelab/images"), description="Where built guest images are kept.")
    web_assets: Path = Field(Path("/usr/share/javascript"), description=(
        "Where the status page finds xterm.js (`xterm/xterm.js`, as Debian's `libjs-xterm` >= 5 installs it; "
        "`tools/web-assets DIR` puts it there). Without it the page shows no console."))
    port: int = Field(8700, description="The appliance's API port on the host's loopback.",
                      json_schema_extra={"scope": APPLIANCE})
    lab_dir: str = Field(".", description="The host directory holding the appliance's lab file (mounted read-only).",
                         json_schema_extra={"scope": APPLIANCE})
    lab_file: str = Field("lab.yaml", description="The lab file's name within `BRIDGELAB_LAB_DIR`.",
                          json_schema_extra={"scope": APPLIANCE})
    images_dir: str = Field("./images", description=(
        "The host directory of recipes and the image cache, mounted into the appliance."),
        json_schema_extra={"scope": APPLIANCE})
    ready_within: str = Field("900s", description=(
        "The healthcheck's start period: how long a start may take to have every guest ready (a first start "
        "builds the image) before a guest that is not ready turns the appliance unhealthy and "
        "`docker compose up --wait` fails."), json_schema_extra={"scope": APPLIANCE})
    configure_concurrency: int = Field(0, ge=0, le=256, description=(
        "How many guests log in on their consoles (and are configured through them) at once (0: one per host "
        "core). A guest waiting its turn idles at its login prompt, so the cores go to those logging in: 16 "
        "guests on 2 cores do not thrash, and login(1) does not time out."))
    boot_concurrency: int = Field(0, ge=0, le=4096, description=(
        "How many guest vCPUs boot at once (0: one per host core). A guest waiting for its slots has its qemu "
        "started but paused, and its boot deadline starts when it runs; it gives them back at its login prompt. "
        "Under TCG, more booting vCPUs than cores slow every guest in its own time (timers, RCU, systemd's job "
        "timeouts), so the lab as a whole boots later. Raise it for KVM guests on a host with cores to spare."))
    shutdown_timeout: float = Field(30.0, description=(
        "Seconds the appliance gives guests to power off at `docker compose down` (keep it well under "
        "compose.yaml's `stop_grace_period`, 90 s)."),
        json_schema_extra={"scope": APPLIANCE})


def current() -> Settings:
    """Read now: tests and `docker compose exec` change the environment per process."""
    try:
        return Settings()
    except ValidationError as e:
        problems = "; ".join(f"${PREFIX}{'.'.join(str(p) for p in err['loc']).upper()}: {err['msg']}"
                             for err in e.errors())
        raise SettingsError(f"bad environment: {problems}") from None


def state_root() -> Path:
    """Every lab's state directory lives under here by default (`<root>/<lab>`),
    and the API token file too."""
    return current().state_dir


def lab_state_dir(lab: str) -> Path:
    return state_root() / lab


def markdown_table() -> str:
    rows = ["| variable | default | used by | meaning |", "|---|---|---|---|"]
    for name, field in Settings.model_fields.items():
        extra = field.json_schema_extra if isinstance(field.json_schema_extra, dict) else {}
        scope = "the appliance" if extra.get("scope") == APPLIANCE else "daemon and CLI"
        default = "unset" if field.default is None else f"`{field.default}`"
        rows.append(f"| `{PREFIX}{name.upper()}` | {default} | {scope} | {field.description} |")
    return "\n".join(rows) + "\n"


if __name__ == "__main__":
    sys.stdout.write(markdown_table())
