"""The manifest: strict parsing that names the bad field, and a canonical, stable hash."""

from __future__ import annotations

import copy
import hashlib
from collections.abc import Callable
from typing import Any

import pytest

from zlh_actors.agent import manifest

SHA512_A = "a" * 128
SHA512_B = "b" * 128


def valid() -> dict[str, Any]:
    return {
        "minecraft_version": "1.20.1",
        "fabric": {"loader": "0.15.11", "installer": "1.0.1"},
        "launcher": {"url": "http://10.0.0.2/launcher.jar", "sha256": "c" * 64, "size": 1234},
        "mods": [
            {
                "name": "lithium.jar",
                "url": "http://10.0.0.2/mods/lithium.jar",
                "size": 10,
                "sha512": SHA512_A,
            },
            {
                "name": "fabric-api.jar",
                "url": "https://cdn.example/fabric-api.jar",
                "size": 20,
                "sha512": SHA512_B,
            },
        ],
        "properties": {"motd": "hello", "max-players": 20, "pvp": False},
        "game_port": 25565,
        "memory_mb": 2048,
    }


def test_parse_gives_canonical_values() -> None:
    parsed = manifest.parse(valid())
    assert parsed.minecraft_version == "1.20.1"
    assert parsed.fabric == manifest.Fabric(loader="0.15.11", installer="1.0.1")
    assert parsed.launcher.size == 1234
    assert [mod.name for mod in parsed.mods] == ["fabric-api.jar", "lithium.jar"]
    assert parsed.properties == (("max-players", "20"), ("motd", "hello"), ("pvp", "false"))
    assert (parsed.game_port, parsed.memory_mb) == (25565, 2048)


def test_launcher_size_is_optional() -> None:
    data = valid()
    del data["launcher"]["size"]
    assert manifest.parse(data).launcher.size is None
    assert "size" not in manifest.to_wire(manifest.parse(data))["launcher"]


def test_canonical_json_is_sorted_and_compact() -> None:
    data = valid()
    data["mods"] = data["mods"][:1]
    data["properties"] = {"motd": "hé"}
    expected = (
        '{"fabric":{"installer":"1.0.1","loader":"0.15.11"},"game_port":25565,'
        '"launcher":{"sha256":"' + "c" * 64 + '","size":1234,"url":"http://10.0.0.2/launcher.jar"},'
        '"memory_mb":2048,"minecraft_version":"1.20.1",'
        '"mods":[{"name":"lithium.jar","sha512":"' + SHA512_A + '","size":10,'
        '"url":"http://10.0.0.2/mods/lithium.jar"}],"properties":{"motd":"hé"}}'
    ).encode("utf-8")
    assert manifest.canonical_json(manifest.parse(data)) == expected
    assert manifest.manifest_sha256(data) == hashlib.sha256(expected).hexdigest()


def test_hash_ignores_key_order_mod_order_and_property_spelling() -> None:
    data = valid()
    reordered = {key: data[key] for key in reversed(list(data))}
    reordered["mods"] = list(reversed(data["mods"]))
    reordered["properties"] = {"pvp": "false", "max-players": "20", "motd": "hello"}
    assert manifest.manifest_sha256(reordered) == manifest.manifest_sha256(data)
    assert manifest.manifest_sha256(manifest.parse(data)) == manifest.manifest_sha256(data)


@pytest.mark.parametrize(
    "change",
    [
        lambda m: m["mods"][0].update(sha512="d" * 128),
        lambda m: m["mods"].pop(),
        lambda m: m.update(game_port=25566),
        lambda m: m["properties"].update(motd="other"),
        lambda m: m["launcher"].pop("size"),
    ],
)
def test_hash_changes_with_content(change: Callable[[dict[str, Any]], object]) -> None:
    data = valid()
    changed = copy.deepcopy(data)
    change(changed)
    assert manifest.manifest_sha256(changed) != manifest.manifest_sha256(data)


def test_parse_of_the_wire_form_round_trips() -> None:
    parsed = manifest.parse(valid())
    assert manifest.parse(manifest.to_wire(parsed)) == parsed


def _set(path: str, value: object) -> Callable[[dict[str, Any]], None]:
    def change(data: dict[str, Any]) -> None:
        *parents, last = path.split("/")
        target: Any = data
        for part in parents:
            target = target[int(part)] if part.isdigit() else target[part]
        if value is _DELETE:
            del target[int(last) if last.isdigit() else last]
        else:
            target[int(last) if last.isdigit() else last] = value

    return change


_DELETE = object()

BAD = [
    ("minecraft_version", _set("minecraft_version", _DELETE)),
    ("minecraft_version", _set("minecraft_version", "")),
    ("minecraft_version", _set("minecraft_version", 1.20)),
    ("colour", _set("colour", "blue")),
    ("fabric", _set("fabric", "0.15.11")),
    ("fabric.loader", _set("fabric/loader", "")),
    ("fabric.installer", _set("fabric/installer", _DELETE)),
    ("fabric.extra", _set("fabric/extra", "x")),
    ("launcher.url", _set("launcher/url", "ftp://10.0.0.2/launcher.jar")),
    ("launcher.url", _set("launcher/url", "launcher.jar")),
    ("launcher.sha256", _set("launcher/sha256", "C" * 64)),
    ("launcher.sha256", _set("launcher/sha256", "c" * 63)),
    ("launcher.size", _set("launcher/size", 0)),
    ("mods", _set("mods", {"lithium.jar": {}})),
    ("mods[0]", _set("mods/0", "lithium.jar")),
    ("mods[1].name", _set("mods/1/name", "../../evil.jar")),
    ("mods[1].name", _set("mods/1/name", "fabric-api.zip")),
    ("mods[1].name", _set("mods/1/name", "lithium.jar")),
    ("mods[0].url", _set("mods/0/url", _DELETE)),
    ("mods[0].size", _set("mods/0/size", True)),
    ("mods[0].size", _set("mods/0/size", -1)),
    ("mods[0].size", _set("mods/0/size", "10")),
    ("mods[1].sha512", _set("mods/1/sha512", "b" * 64)),
    ("mods[0].sha1", _set("mods/0/sha1", "x")),
    ("properties", _set("properties", ["motd=hello"])),
    ("properties.server-port", _set("properties/server-port", 25565)),
    ("properties.server-ip", _set("properties/server-ip", "10.0.0.5")),
    ("properties.motd", _set("properties/motd", "two\nlines")),
    ("properties.Bad Key", _set("properties/Bad Key", "x")),
    ("properties.view-distance", _set("properties/view-distance", 10.5)),
    ("game_port", _set("game_port", 0)),
    ("game_port", _set("game_port", 65536)),
    ("game_port", _set("game_port", "25565")),
    ("memory_mb", _set("memory_mb", 128)),
]


@pytest.mark.parametrize(("field", "change"), BAD, ids=[f"{field}-{i}" for i, (field, _) in enumerate(BAD)])
def test_bad_field_is_named(field: str, change: Callable[[dict[str, Any]], None]) -> None:
    data = valid()
    change(data)
    with pytest.raises(manifest.ManifestInvalid) as exc:
        manifest.parse(data)
    assert exc.value.field == field
    assert f"manifest field {field}:" in exc.value.message


@pytest.mark.parametrize("data", [None, [], "manifest", 1])
def test_a_manifest_must_be_an_object(data: object) -> None:
    with pytest.raises(manifest.ManifestInvalid) as exc:
        manifest.parse(data)
    assert exc.value.field == "manifest"
