"""Install planning: from a manifest and what is on disk, which files to fetch, keep and delete (pure).

The installer is split in two so that its decisions can be tested without a disk or a network:
`install.py` surveys the game directory (hashing files that might be reusable) and executes the plan;
this module decides. The decisions:

- A target (the launcher, each mod) already present with the right digest is kept, not downloaded
  again: re-installing the same manifest is cheap and idempotent.
- Anything else is fetched, in a stable order (launcher first, then mods by name), so two agents with
  the same manifest do the same work and the first failure named is the same.
- Every `.jar` in `mods/` that the manifest does not list is deleted: Fabric loads every jar it finds
  there, so a leftover jar would run code nobody pinned. Leftover partial downloads
  (`PART_SUFFIX`) are deleted too. Other files in `mods/` (configs some mods keep there) are left.

The files the agent writes itself, `server.properties` and `eula.txt`, are rendered here as text.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from typing import Literal

from zlh_actors.agent import manifest

# The name Fabric's own server launcher has always used; fixed, so a new launcher replaces the old one.
LAUNCHER = "fabric-server-launch.jar"
MODS_DIR = "mods"
PROPERTIES = "server.properties"
EULA = "eula.txt"
# Partial downloads carry this suffix until verified, so nothing ever loads or keeps a partial file.
PART_SUFFIX = ".zlh-part"

Algorithm = Literal["sha256", "sha512"]


@dataclasses.dataclass(frozen=True)
class Target:
    """One pinned file: where it goes (relative to the game directory) and what it must hash to."""

    path: str
    url: str
    size: int | None
    algorithm: Algorithm
    digest: str


@dataclasses.dataclass(frozen=True)
class Plan:
    fetch: tuple[Target, ...]
    keep: tuple[Target, ...]
    delete: tuple[str, ...]

    def summary(self) -> str:
        return f"fetch {len(self.fetch)}, keep {len(self.keep)}, delete {len(self.delete)}"


def targets(pinned: manifest.Manifest) -> tuple[Target, ...]:
    """The files `pinned` requires, launcher first then mods by name."""
    launcher = Target(
        path=LAUNCHER,
        url=pinned.launcher.url,
        size=pinned.launcher.size,
        algorithm="sha256",
        digest=pinned.launcher.sha256,
    )
    mods = (
        Target(
            path=f"{MODS_DIR}/{mod.name}", url=mod.url, size=mod.size, algorithm="sha512", digest=mod.sha512
        )
        for mod in sorted(pinned.mods, key=lambda mod: mod.name)
    )
    return (launcher, *mods)


def plan(wanted: Iterable[Target], present: Mapping[str, str], on_disk: Iterable[str]) -> Plan:
    """Decide the work.

    Args:
        wanted: the targets, from `targets`.
        present: relative path -> hex digest (in that target's algorithm) of each target file that
            exists; a path whose size already rules it out may be left out.
        on_disk: relative paths of the files currently in `mods/` and of leftover partial downloads.
    """
    fetch: list[Target] = []
    keep: list[Target] = []
    for target in wanted:
        (keep if present.get(target.path) == target.digest else fetch).append(target)
    listed = {target.path for target in keep} | {target.path for target in fetch}
    delete = sorted(
        path
        for path in set(on_disk)
        if path.endswith(PART_SUFFIX)
        or (path.startswith(f"{MODS_DIR}/") and path.endswith(".jar") and path not in listed)
    )
    return Plan(fetch=tuple(fetch), keep=tuple(keep), delete=tuple(delete))


def render_properties(pinned: manifest.Manifest, ip: str, manifest_sha256: str) -> str:
    """`server.properties`: the manifest's properties plus the address the agent assigns."""
    values = dict(pinned.properties)
    values["server-ip"] = ip
    values["server-port"] = str(pinned.game_port)
    lines = [
        f"# Written by zlh-agent for manifest {manifest_sha256}; the next install overwrites edits.",
        *(f"{key}={_escape(value)}" for key, value in sorted(values.items())),
    ]
    return "\n".join(lines) + "\n"


def render_eula() -> str:
    return (
        "# Accepted by ZeroLagHub on the server owner's behalf (https://aka.ms/MinecraftEULA).\neula=true\n"
    )


def _escape(value: str) -> str:
    """A value in java.util.Properties syntax, ASCII-only so the file reads the same in any charset."""
    out: list[str] = []
    for index, char in enumerate(value):
        code = ord(char)
        if char == "\\":
            out.append("\\\\")
        elif char == " " and index == 0:
            # Properties.load strips leading whitespace of a value unless it is escaped.
            out.append("\\ ")
        elif code > 0x7E:
            encoded = char.encode("utf-16-be")
            out.extend(f"\\u{encoded[i] << 8 | encoded[i + 1]:04x}" for i in range(0, len(encoded), 2))
        else:
            out.append(char)
    return "".join(out)
