"""Validation of a create request: every bad field is named, nothing unknown is accepted.

A server is reproducible only if everything it runs is pinned: exact Minecraft, loader and installer
versions (`latest` and `stable` are refused: they name a different build tomorrow), and every mod by
URL, size and SHA-512. Unknown fields are errors, not ignored, so a misspelled field never silently
yields a server with a default nobody asked for.

The patterns are the API's published contract too: `api/openapi.py` puts them in the OpenAPI
document as they are, so each is written to mean the same in Python (always `fullmatch`ed) and in
JSON Schema's ECMA-262 dialect. Every string is refused where PostgreSQL or the agent would refuse
it later (a NUL byte, a control character in a property, a URL with spaces): a bad request is a
400 now, never a 500 or a server that fails to provision.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any

from zlh_actors import config, errors

NAME = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
VERSION = re.compile(r"^[0-9]+(\.[0-9]+)*([-+][0-9A-Za-z.+-]{1,24})?$")
MOD_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
SHA512 = re.compile(r"^[0-9a-f]{128}$")
# A host name or IPv4 address, an optional port, then visible ASCII only (what the agent accepts).
_URL_REST = r"://[A-Za-z0-9.-]+(:[0-9]{1,5})?([/?#][!-~]*)?$"
PROPERTY_VALUE = re.compile("^[^\x00-\x1f\x7f]*$")  # one line, no control characters
MAX_MOD_BYTES = 512 * 2**20
MAX_MODS = 200
MAX_URL = 2048
MAX_PROPERTY = 256
# orjson decodes a JSON integer outside these bounds as a float, which is not a whole number.
MIN_JSON_INT, MAX_JSON_INT = -(2**63), 2**64 - 1
DEFAULT_MEMORY_MB, DEFAULT_CORES, DEFAULT_DISK_GB = 2048, 2, 10
UNPINNABLE = frozenset({"latest", "stable", "snapshot", "release", "recommended"})

# server.properties keys a tenant may set. The control plane owns the network keys (server-ip,
# server-port, query, rcon) and the rest are not worth the risk.
PROPERTIES = frozenset(
    {
        "motd",
        "difficulty",
        "gamemode",
        "hardcore",
        "max-players",
        "pvp",
        "view-distance",
        "simulation-distance",
        "spawn-protection",
        "white-list",
        "enforce-whitelist",
        "allow-flight",
        "level-seed",
        "level-type",
        "online-mode",
        "spawn-monsters",
        "spawn-animals",
        "allow-nether",
        "enable-command-block",
        "force-gamemode",
        "generate-structures",
        "max-world-size",
    }
)
_TOP = frozenset({"name", "minecraft_version", "fabric", "mods", "properties", "resources"})
_MOD = frozenset({"name", "url", "sha512", "size"})


@dataclasses.dataclass(frozen=True)
class Mod:
    name: str
    url: str
    sha512: str
    size: int


@dataclasses.dataclass(frozen=True)
class CreateRequest:
    name: str
    minecraft_version: str
    loader_version: str
    installer_version: str
    mods: tuple[Mod, ...]
    properties: tuple[tuple[str, str], ...]
    memory_mb: int
    cores: int
    disk_gb: int

    def spec(self) -> dict[str, Any]:
        """The server's `spec` column: everything needed to build the container and its manifest."""
        return {
            "minecraft_version": self.minecraft_version,
            "fabric": {"loader": self.loader_version, "installer": self.installer_version},
            "mods": [dataclasses.asdict(mod) for mod in self.mods],
            "properties": dict(self.properties),
            "resources": {"memory_mb": self.memory_mb, "cores": self.cores, "disk_gb": self.disk_gb},
        }


def url_pattern(allow_http: bool) -> re.Pattern[str]:
    """Mod URLs: https only, or http too where the settings allow it (the lab)."""
    return re.compile(("^https?" if allow_http else "^https") + _URL_REST)


def default_memory(settings: config.Settings) -> int:
    return max(DEFAULT_MEMORY_MB, settings.memory_mb[0])


class _Problems:
    def __init__(self) -> None:
        self.fields: dict[str, str] = {}

    def add(self, field: str, reason: str) -> None:
        self.fields.setdefault(field, reason)


def _unknown(problems: _Problems, data: dict[str, Any], allowed: frozenset[str], prefix: str) -> None:
    for key in sorted(set(data) - allowed):
        problems.add(f"{prefix}{key}", "unknown field")


def _version(problems: _Problems, field: str, value: object) -> str:
    if not isinstance(value, str):
        problems.add(field, "must be a string")
        return ""
    if value.lower() in UNPINNABLE:
        problems.add(field, f"'{value}' is not an exact version; name the version to pin it")
    elif not VERSION.fullmatch(value):
        problems.add(field, "must be an exact version such as 1.21.1")
    return value


def _whole(value: object) -> int | None:
    """The integer a JSON number means: `10` and `10.0` are the same number in JSON (and in JSON
    Schema, which the OpenAPI document speaks), so both are accepted; `true` is not a number."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _int(problems: _Problems, field: str, value: object, low: int, high: int) -> int:
    whole = _whole(value)
    if whole is None:
        problems.add(field, "must be a whole number")
        return low
    if not low <= whole <= high:
        problems.add(field, f"must be between {low} and {high}")
    return whole


def _mods(problems: _Problems, value: object, settings: config.Settings) -> tuple[Mod, ...]:
    if not isinstance(value, list):
        problems.add("mods", "must be a list")
        return ()
    if len(value) > MAX_MODS:
        problems.add("mods", f"at most {MAX_MODS} mods")
    url_ok = url_pattern(settings.allow_http_urls)
    mods, seen = [], set()
    for n, item in enumerate(value):
        where = f"mods[{n}]."
        if not isinstance(item, dict):
            problems.add(f"mods[{n}]", "must be an object")
            continue
        _unknown(problems, item, _MOD, where)
        name, url, sha512 = item.get("name"), item.get("url"), item.get("sha512")
        if not isinstance(name, str) or not MOD_NAME.fullmatch(name):
            problems.add(where + "name", "must be 1-64 letters, digits, '.', '_' or '-'")
        elif name in seen:
            problems.add(where + "name", "is listed twice")
        if not isinstance(url, str) or len(url) > MAX_URL or not url_ok.fullmatch(url):
            schemes = "http(s)" if settings.allow_http_urls else "https"
            problems.add(where + "url", f"must be an {schemes} URL of a host name or IPv4 address")
        if not isinstance(sha512, str) or not SHA512.fullmatch(sha512):
            problems.add(where + "sha512", "must be 128 lowercase hex digits")
        size = _int(problems, where + "size", item.get("size"), 1, MAX_MOD_BYTES)
        if isinstance(name, str) and isinstance(url, str) and isinstance(sha512, str):
            seen.add(name)
            mods.append(Mod(name=name, url=url, sha512=sha512, size=size))
    return tuple(mods)


def _properties(problems: _Problems, value: object) -> tuple[tuple[str, str], ...]:
    if not isinstance(value, dict):
        problems.add("properties", "must be an object")
        return ()
    out = []
    for key, item in sorted(value.items()):
        if key not in PROPERTIES:
            problems.add(f"properties.{key}", "is not a property tenants may set")
        elif isinstance(item, bool):
            out.append((key, "true" if item else "false"))
        elif (whole := _whole(item)) is not None and MIN_JSON_INT <= whole <= MAX_JSON_INT:
            out.append((key, str(whole)))
        elif isinstance(item, str) and len(item) <= MAX_PROPERTY and PROPERTY_VALUE.fullmatch(item):
            out.append((key, item))
        else:
            problems.add(
                f"properties.{key}",
                f"must be a boolean, a whole number or a string of at most {MAX_PROPERTY} characters "
                "without control characters",
            )
    return tuple(out)


def parse_create(data: object, settings: config.Settings) -> CreateRequest:
    """The request, or `BadRequest` naming every bad field."""
    problems = _Problems()
    if not isinstance(data, dict):
        raise errors.BadRequest("the body must be a JSON object", fields={"": "must be an object"})
    _unknown(problems, data, _TOP, "")
    name = data.get("name")
    if not isinstance(name, str) or not NAME.fullmatch(name):
        problems.add("name", "must be a DNS label: 1-63 lowercase letters, digits and '-', not at either end")
    minecraft = _version(problems, "minecraft_version", data.get("minecraft_version"))
    fabric = data.get("fabric")
    loader = installer = ""
    if not isinstance(fabric, dict):
        problems.add("fabric", "must be an object with loader and installer")
    else:
        _unknown(problems, fabric, frozenset({"loader", "installer"}), "fabric.")
        loader = _version(problems, "fabric.loader", fabric.get("loader"))
        installer = _version(problems, "fabric.installer", fabric.get("installer"))
    mods = _mods(problems, data.get("mods", []), settings)
    properties = _properties(problems, data.get("properties", {}))
    resources = data.get("resources", {})
    memory, cores, disk = default_memory(settings), DEFAULT_CORES, DEFAULT_DISK_GB
    if not isinstance(resources, dict):
        problems.add("resources", "must be an object")
    else:
        _unknown(problems, resources, frozenset({"memory_mb", "cores", "disk_gb"}), "resources.")
        low, high = settings.memory_mb
        memory = _int(problems, "resources.memory_mb", resources.get("memory_mb", memory), low, high)
        cores = _int(problems, "resources.cores", resources.get("cores", cores), 1, settings.max_cores)
        disk = _int(problems, "resources.disk_gb", resources.get("disk_gb", disk), 1, settings.max_disk_gb)
    if problems.fields:
        raise errors.BadRequest("the request has invalid fields", fields=problems.fields)
    assert isinstance(name, str)
    return CreateRequest(
        name=name,
        minecraft_version=minecraft,
        loader_version=loader,
        installer_version=installer,
        mods=mods,
        properties=properties,
        memory_mb=memory,
        cores=cores,
        disk_gb=disk,
    )
