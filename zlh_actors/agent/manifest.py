"""The install manifest: what a server's game directory must contain, pinned by hash (pure).

The control plane builds a manifest for each server generation and hands it to the agent at
enrollment; the agent installs exactly that and reports the manifest's hash back. Both sides must
therefore agree, byte for byte, on what "the same manifest" is, so this module owns:

- the wire shape (`ManifestWire`, a TypedDict),
- a strict parser (`parse`) that refuses anything unexpected and names the offending field
  (`mods[2].sha512`), because a manifest that is silently "fixed up" installs something nobody
  asked for,
- the canonical form (`canonical_json`, `manifest_sha256`): sorted keys, no whitespace, mods sorted by
  name, property values as strings. Two manifests that install the same files hash the same no
  matter how their JSON was written, so the hash can be compared across processes and restarts.

Mod names are file names in `mods/`; the parser keeps them to a safe alphabet ending in `.jar`, so a
manifest cannot write outside the game directory. `server-port` and `server-ip` are not allowed in
`properties`: the agent sets them from `game_port` and its own IP, and one source of truth avoids a
manifest that disagrees with the port the control plane allocated.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from collections.abc import Mapping
from typing import Any, TypedDict

from zlh_actors import errors

MAX_MODS = 1000
MAX_FILE_BYTES = 2**31
RESERVED_PROPERTIES = frozenset({"server-port", "server-ip"})

_VERSION = re.compile(r"[0-9A-Za-z][0-9A-Za-z._+-]{0,63}")
_MOD_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,123}\.jar")
_PROPERTY_KEY = re.compile(r"[a-z0-9][a-z0-9._-]{0,127}")
_SHA256 = re.compile(r"[0-9a-f]{64}")
_SHA512 = re.compile(r"[0-9a-f]{128}")
_URL = re.compile(r"https?://[^\s/?#]+(?:[/?#]\S*)?")


class FabricWire(TypedDict):
    loader: str
    installer: str


class _LauncherRequired(TypedDict):
    url: str
    sha256: str


# `total=False` rather than NotRequired[...]: with postponed annotations Python 3.11 would count
# a NotRequired key as required in `__required_keys__`, which the parser relies on.
class LauncherWire(_LauncherRequired, total=False):
    size: int


class ModWire(TypedDict):
    name: str
    url: str
    size: int
    sha512: str


class ManifestWire(TypedDict):
    minecraft_version: str
    fabric: FabricWire
    launcher: LauncherWire
    mods: list[ModWire]
    properties: dict[str, str | int | bool]
    game_port: int
    memory_mb: int


@dataclasses.dataclass(frozen=True)
class Fabric:
    loader: str
    installer: str


@dataclasses.dataclass(frozen=True)
class Launcher:
    url: str
    sha256: str
    size: int | None


@dataclasses.dataclass(frozen=True)
class Mod:
    name: str
    url: str
    size: int
    sha512: str


@dataclasses.dataclass(frozen=True)
class Manifest:
    """A parsed manifest in canonical form: mods sorted by name, properties as sorted string pairs."""

    minecraft_version: str
    fabric: Fabric
    launcher: Launcher
    mods: tuple[Mod, ...]
    properties: tuple[tuple[str, str], ...]
    game_port: int
    memory_mb: int


class ManifestInvalid(errors.Permanent):
    """The manifest breaks a rule; the message and `details` name the field.

    Attributes: field (also in `details`), the dotted path of the offending field (e.g.
    `mods[2].sha512`); problem, what is wrong with it.
    """

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"manifest field {field}: {problem}", field=field)
        self.field = field
        self.problem = problem


def parse(data: object) -> Manifest:
    """The manifest in `data` (decoded JSON), or `ManifestInvalid` naming the first bad field."""
    top = _object(data, "manifest", ManifestWire)
    fabric = _object(top["fabric"], "fabric", FabricWire)
    launcher = _object(top["launcher"], "launcher", LauncherWire)
    mods_data = top["mods"]
    if not isinstance(mods_data, list):
        raise ManifestInvalid("mods", "must be a list")
    if len(mods_data) > MAX_MODS:
        raise ManifestInvalid("mods", f"at most {MAX_MODS} mods")
    mods: list[Mod] = []
    seen: set[str] = set()
    for index, item in enumerate(mods_data):
        where = f"mods[{index}]"
        mod = _object(item, where, ModWire)
        name = _text(mod["name"], f"{where}.name", _MOD_NAME, "a file name ending in .jar")
        if name in seen:
            raise ManifestInvalid(f"{where}.name", f"{name!r} is listed twice")
        seen.add(name)
        mods.append(
            Mod(
                name=name,
                url=_text(mod["url"], f"{where}.url", _URL, "an http(s) URL"),
                size=_integer(mod["size"], f"{where}.size", 1, MAX_FILE_BYTES),
                sha512=_text(mod["sha512"], f"{where}.sha512", _SHA512, "128 lowercase hex digits"),
            )
        )
    launcher_size = launcher.get("size")
    return Manifest(
        minecraft_version=_text(top["minecraft_version"], "minecraft_version", _VERSION, "a version string"),
        fabric=Fabric(
            loader=_text(fabric["loader"], "fabric.loader", _VERSION, "a version string"),
            installer=_text(fabric["installer"], "fabric.installer", _VERSION, "a version string"),
        ),
        launcher=Launcher(
            url=_text(launcher["url"], "launcher.url", _URL, "an http(s) URL"),
            sha256=_text(launcher["sha256"], "launcher.sha256", _SHA256, "64 lowercase hex digits"),
            size=None
            if launcher_size is None
            else _integer(launcher_size, "launcher.size", 1, MAX_FILE_BYTES),
        ),
        mods=tuple(sorted(mods, key=lambda mod: mod.name)),
        properties=_properties(top["properties"]),
        game_port=_integer(top["game_port"], "game_port", 1, 65535),
        memory_mb=_integer(top["memory_mb"], "memory_mb", 256, 1024 * 1024),
    )


def to_wire(manifest: Manifest) -> ManifestWire:
    """The canonical wire form of `manifest` (what `manifest_sha256` hashes)."""
    launcher: LauncherWire = {"url": manifest.launcher.url, "sha256": manifest.launcher.sha256}
    if manifest.launcher.size is not None:
        launcher["size"] = manifest.launcher.size
    return {
        "minecraft_version": manifest.minecraft_version,
        "fabric": {"loader": manifest.fabric.loader, "installer": manifest.fabric.installer},
        "launcher": launcher,
        "mods": [
            {"name": mod.name, "url": mod.url, "size": mod.size, "sha512": mod.sha512}
            for mod in manifest.mods
        ],
        "properties": dict(manifest.properties),
        "game_port": manifest.game_port,
        "memory_mb": manifest.memory_mb,
    }


def canonical_json(manifest: Manifest) -> bytes:
    """Sorted keys, no insignificant whitespace, UTF-8: the bytes both sides hash."""
    return json.dumps(
        to_wire(manifest), sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    ).encode("utf-8")


def manifest_sha256(manifest: Manifest | Mapping[str, Any]) -> str:
    """Hex SHA-256 of the canonical JSON; a mapping is parsed first (`ManifestInvalid` if bad)."""
    parsed = manifest if isinstance(manifest, Manifest) else parse(manifest)
    return hashlib.sha256(canonical_json(parsed)).hexdigest()


def _object(data: object, where: str, shape: type[Any]) -> Any:
    """`data` as a dict carrying exactly the keys of the TypedDict `shape` (optional ones may be absent)."""
    if not isinstance(data, dict):
        raise ManifestInvalid(where, "must be an object")
    required: frozenset[str] = shape.__required_keys__
    allowed: frozenset[str] = required | shape.__optional_keys__
    prefix = "" if where == "manifest" else f"{where}."
    missing = sorted(required - data.keys())
    if missing:
        raise ManifestInvalid(prefix + missing[0], "is required")
    unknown = sorted(data.keys() - allowed, key=str)
    if unknown:
        raise ManifestInvalid(prefix + str(unknown[0]), "is not a known field")
    return data


def _text(value: object, where: str, pattern: re.Pattern[str], meaning: str) -> str:
    if not isinstance(value, str):
        raise ManifestInvalid(where, f"must be a string ({meaning})")
    if not pattern.fullmatch(value):
        raise ManifestInvalid(where, f"must be {meaning}, got {value[:80]!r}")
    return value


def _integer(value: object, where: str, low: int, high: int) -> int:
    # bool is an int subclass; `true` where a size belongs is a bug in the sender, not the number 1.
    if not isinstance(value, int) or isinstance(value, bool):
        raise ManifestInvalid(where, "must be an integer")
    if not low <= value <= high:
        raise ManifestInvalid(where, f"must be between {low} and {high}, got {value}")
    return value


def _properties(value: object) -> tuple[tuple[str, str], ...]:
    if not isinstance(value, dict):
        raise ManifestInvalid("properties", "must be an object")
    pairs: list[tuple[str, str]] = []
    for key, raw in value.items():
        where = f"properties.{key}"
        if not isinstance(key, str) or not _PROPERTY_KEY.fullmatch(key):
            raise ManifestInvalid(where, "property names are lowercase letters, digits, '.', '_' and '-'")
        if key in RESERVED_PROPERTIES:
            raise ManifestInvalid(where, "is set by the agent from game_port and the container IP")
        if isinstance(raw, bool):
            text = "true" if raw else "false"
        elif isinstance(raw, int | str):
            text = str(raw)
        else:
            raise ManifestInvalid(where, "must be a string, an integer or a boolean")
        if len(text) > 1024 or any(ord(char) < 0x20 or ord(char) == 0x7F for char in text):
            raise ManifestInvalid(where, "must be at most 1024 characters with no control characters")
        pairs.append((key, text))
    return tuple(sorted(pairs))
