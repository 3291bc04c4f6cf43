"""What a control plane needs to use a lab, as files in the lab directory.

    lab.env          KEY=value lines: Proxmox connection, template, enrollment key, IP subnet, agent port
    launchers.json   the Fabric launcher pins the lab's file server serves
    mods.json        the mod catalog the lab's file server serves
    enrollment.key   the HMAC key the lab's agents trust (mode 0600)
    pve.crt          the CA the fake Proxmox's certificate verifies against

Files rather than environment variables, because the lab and the control plane are separate
processes (several replicas may share one lab) and the lab's ports are only known once it has
bound them. `lab.env` is one `KEY=value` per line, with no quoting: the value is the rest of the line.
Lines starting with `#` are comments. The same format loads into a shell with `set -a; . lab.env`
as long as no value contains spaces (the lab directory's path is the only value that could).

Each file is written to a temporary name and renamed, so a replica reading it while the lab rewrites
it (after `Lab.add_mod`) sees the old or the new content, never half.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypedDict

from zlh_actors import config
from zlh_actors.lab import files
from zlh_actors.proxmox import settings as proxmox_settings

ENV_FILE = "lab.env"
LAUNCHERS_FILE = "launchers.json"
MODS_FILE = "mods.json"
KEY_FILE = "enrollment.key"

# (minecraft, fabric loader, fabric installer): the first is the default a control plane should use.
# The lab has one stand-in launcher, so every pin names the same file (real pins differ per triple).
VERSIONS = (
    ("1.21.1", "0.16.14", "1.0.1"),
    ("1.21.4", "0.16.10", "1.0.1"),
    ("1.20.1", "0.15.11", "1.0.1"),
)
# What the stand-in game reports over Server List Ping: the default pin's version (1.21.1 is 767).
GAME_VERSION, GAME_PROTOCOL = VERSIONS[0][0], 767
# Stand-in mods with realistic names; fake_mod_jar makes each a valid, deterministic jar.
MODS = (
    "fabric-api-0.102.0+1.21.1.jar",
    "lithium-fabric-mc1.21.1-0.13.0.jar",
    "ferritecore-7.0.0-fabric.jar",
    "krypton-0.2.8.jar",
)


class LauncherPin(TypedDict):
    minecraft: str
    loader: str
    installer: str
    url: str
    sha256: str
    size: int


@dataclasses.dataclass(frozen=True)
class LabSettings:
    """The connection settings of a running lab (the content of `lab.env`).

    Attributes:
        pve_host, pve_port: where the fake Proxmox API listens (HTTPS).
        pve_user, pve_token_name, pve_token_value: the control plane's API token.
        pve_ca_file: the PEM certificate to verify the API against.
        template_vmid: the Fabric LXC template to clone.
        enrollment_key_file: the file holding the HMAC key the agents trust (its bytes, stripped).
        ip_subnet: the loopback subnet container IPs come from; the lab runs agents only for these.
        agent_port: the port every agent listens on, at its container's IP.
    """

    pve_host: str
    pve_port: int
    pve_user: str
    pve_token_name: str
    pve_token_value: str = dataclasses.field(repr=False)
    pve_ca_file: Path
    template_vmid: int
    enrollment_key_file: Path
    ip_subnet: ipaddress.IPv4Network
    agent_port: int

    def __post_init__(self) -> None:
        if not self.ip_subnet.subnet_of(ipaddress.IPv4Network("127.0.0.0/8")):
            raise ValueError(f"the lab's subnet must be on loopback (127.0.0.0/8), not {self.ip_subnet}")

    def proxmox(self, **overrides: Any) -> proxmox_settings.ProxmoxSettings:
        """Settings for `zlh_actors.proxmox.driver.ProxmoxerDriver` against this lab."""
        values: dict[str, Any] = {
            "host": self.pve_host,
            "port": self.pve_port,
            "user": self.pve_user,
            "token_name": self.pve_token_name,
            "token_value": self.pve_token_value,
            "ca_file": str(self.pve_ca_file),
        }
        values.update(overrides)
        return proxmox_settings.ProxmoxSettings(**values)


def applied(found: LabSettings, settings: config.Settings, **overrides: Any) -> config.Settings:
    """`settings` pointed at this lab: its Proxmox, its agents' key, subnet and port, http mod URLs."""
    return dataclasses.replace(
        settings,
        pve_host=found.pve_host,
        pve_port=found.pve_port,
        pve_user=found.pve_user,
        pve_token_name=found.pve_token_name,
        pve_token_value=found.pve_token_value,
        pve_ca_file=found.pve_ca_file,
        pve_template_vmid=found.template_vmid,
        enrollment_key_file=found.enrollment_key_file,
        ip_subnet=found.ip_subnet,
        agent_port=found.agent_port,
        allow_http_urls=True,
        **overrides,
    )


# lab.env name -> LabSettings field
ENV_NAMES = {
    "ZLH_PVE_HOST": "pve_host",
    "ZLH_PVE_PORT": "pve_port",
    "ZLH_PVE_USER": "pve_user",
    "ZLH_PVE_TOKEN_NAME": "pve_token_name",
    "ZLH_PVE_TOKEN_VALUE": "pve_token_value",
    "ZLH_PVE_CA_FILE": "pve_ca_file",
    "ZLH_PVE_TEMPLATE_VMID": "template_vmid",
    "ZLH_ENROLLMENT_KEY_FILE": "enrollment_key_file",
    "ZLH_IP_SUBNET": "ip_subnet",
    "ZLH_AGENT_PORT": "agent_port",
}


def to_env(settings: LabSettings) -> dict[str, str]:
    return {name: str(getattr(settings, field)) for name, field in ENV_NAMES.items()}


def from_env(values: Mapping[str, str]) -> LabSettings:
    """`LabSettings` from `lab.env`'s variables; `ValueError` naming a missing or bad one."""
    missing = [name for name in ENV_NAMES if not values.get(name)]
    if missing:
        raise ValueError(f"missing {', '.join(missing)}")
    try:
        return LabSettings(
            pve_host=values["ZLH_PVE_HOST"],
            pve_port=int(values["ZLH_PVE_PORT"]),
            pve_user=values["ZLH_PVE_USER"],
            pve_token_name=values["ZLH_PVE_TOKEN_NAME"],
            pve_token_value=values["ZLH_PVE_TOKEN_VALUE"],
            pve_ca_file=Path(values["ZLH_PVE_CA_FILE"]),
            template_vmid=int(values["ZLH_PVE_TEMPLATE_VMID"]),
            enrollment_key_file=Path(values["ZLH_ENROLLMENT_KEY_FILE"]),
            ip_subnet=ipaddress.IPv4Network(values["ZLH_IP_SUBNET"]),
            agent_port=int(values["ZLH_AGENT_PORT"]),
        )
    except ValueError as exc:
        raise ValueError(f"bad lab settings: {exc}") from None


def read_env_file(path: Path) -> dict[str, str]:
    """The `KEY=value` lines of an env file (comments and blank lines skipped)."""
    values = {}
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        key, eq, value = line.partition("=")
        if not eq:
            raise ValueError(f"{path}:{number}: expected KEY=value")
        values[key.strip()] = value
    return values


def load(path: Path) -> LabSettings:
    """The settings in a lab's `lab.env` (or in the lab directory `path`)."""
    return from_env(read_env_file(path / ENV_FILE if path.is_dir() else path))


def launcher_pins(launcher: files.LauncherFile) -> list[LauncherPin]:
    return [
        {
            "minecraft": minecraft,
            "loader": loader,
            "installer": installer,
            "url": launcher.url,
            "sha256": launcher.sha256,
            "size": launcher.size,
        }
        for minecraft, loader, installer in VERSIONS
    ]


def write_key(directory: Path) -> Path:
    """A new random enrollment key in `directory` (64 hex characters, readable by the owner only)."""
    path = directory / KEY_FILE
    path.unlink(missing_ok=True)
    with os.fdopen(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "w") as out:
        out.write(os.urandom(32).hex() + "\n")
    return path


def write(directory: Path, settings: LabSettings, server: files.FileServer) -> Path:
    """Write lab.env, launchers.json and mods.json into `directory`; the path of lab.env."""
    env = to_env(settings)
    bad = [name for name, value in env.items() if "\n" in value or value != value.strip()]
    if bad:
        raise ValueError(f"cannot write {', '.join(bad)} on one line")
    lines = [
        "# zlh-actors lab: connection settings (KEY=value; the value is the rest of the line).",
        f"# Launcher pins in {LAUNCHERS_FILE}, the mod catalog in {MODS_FILE}, both next to this file.",
        *(f"{name}={value}" for name, value in env.items()),
    ]
    write_mods(directory, server)
    _write_atomic(directory / LAUNCHERS_FILE, json.dumps(launcher_pins(server.launcher), indent=2) + "\n")
    _write_atomic(directory / ENV_FILE, "\n".join(lines) + "\n", mode=0o600)  # it holds the token secret
    return directory / ENV_FILE


def write_mods(directory: Path, server: files.FileServer) -> None:
    catalog = [mod.wire() for _, mod in sorted(server.mods.items())]
    _write_atomic(directory / MODS_FILE, json.dumps(catalog, indent=2) + "\n")


def _write_atomic(path: Path, text: str, mode: int = 0o644) -> None:
    temporary = path.with_name(f".{path.name}.tmp")
    with os.fdopen(
        os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode), "w", encoding="utf-8"
    ) as out:
        os.fchmod(out.fileno(), mode)  # an older temporary file keeps its mode through O_CREAT
        out.write(text)
    os.replace(temporary, path)
