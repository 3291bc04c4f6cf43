"""Create-request validation: defaults, exact versions only, every bad field named."""

from __future__ import annotations

from typing import Any

import pytest

from zlh_actors import config, errors
from zlh_actors.servers import requests

SETTINGS = config.Settings()
SHA = "a" * 128


def body(**changes: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "name": "survival",
        "minecraft_version": "1.21.1",
        "fabric": {"loader": "0.16.14", "installer": "1.0.1"},
        "mods": [
            {"name": "fabric-api", "url": "https://mods.example/fabric-api.jar", "sha512": SHA, "size": 10}
        ],
        "properties": {"motd": "hi", "max-players": 20, "pvp": False},
    }
    base.update(changes)
    return base


def fields_of(data: object, settings: config.Settings = SETTINGS) -> dict[str, str]:
    with pytest.raises(errors.BadRequest) as caught:
        requests.parse_create(data, settings)
    fields: dict[str, str] = caught.value.details["fields"]
    return fields


def test_a_good_request_parses_with_defaults() -> None:
    parsed = requests.parse_create(body(), SETTINGS)
    assert parsed.name == "survival"
    assert (parsed.memory_mb, parsed.cores, parsed.disk_gb) == (2048, 2, 10)
    assert dict(parsed.properties) == {"max-players": "20", "motd": "hi", "pvp": "false"}
    assert parsed.spec()["fabric"] == {"loader": "0.16.14", "installer": "1.0.1"}


@pytest.mark.parametrize("version", ["latest", "stable", "LATEST", "1.21.x", ""])
def test_unpinned_versions_are_refused(version: str) -> None:
    assert "minecraft_version" in fields_of(body(minecraft_version=version))
    assert "fabric.loader" in fields_of(body(fabric={"loader": version, "installer": "1.0.1"}))


def test_every_bad_field_is_named_at_once() -> None:
    fields = fields_of(
        {
            "name": "Bad Name",
            "minecraft_version": "latest",
            "fabric": {"loader": "0.16.14"},
            "mods": [{"name": "x", "url": "ftp://x", "sha512": "nope", "size": 0}],
            "properties": {"server-port": 1, "motd": ["list"]},
            "resources": {"memory_mb": 1, "cores": 0, "disk_gb": "ten"},
            "colour": "blue",
        }
    )
    assert set(fields) == {
        "name",
        "minecraft_version",
        "fabric.installer",
        "mods[0].url",
        "mods[0].sha512",
        "mods[0].size",
        "properties.server-port",
        "properties.motd",
        "resources.memory_mb",
        "resources.cores",
        "resources.disk_gb",
        "colour",
    }


def test_http_mod_urls_only_when_allowed() -> None:
    mod = {"name": "m", "url": "http://127.0.0.1:9/m.jar", "sha512": SHA, "size": 1}
    assert "mods[0].url" in fields_of(body(mods=[mod]))
    lab = config.Settings(allow_http_urls=True)
    assert requests.parse_create(body(mods=[mod]), lab).mods[0].url == mod["url"]


def test_duplicate_mod_names_are_refused() -> None:
    mod = {"name": "m", "url": "https://x/m.jar", "sha512": SHA, "size": 1}
    assert fields_of(body(mods=[mod, mod])) == {"mods[1].name": "is listed twice"}


@pytest.mark.parametrize("data", [None, [], "text", 3])
def test_non_object_bodies_are_refused(data: object) -> None:
    assert fields_of(data)
