"""The settings files describe the running lab: every value works for what it names."""

from __future__ import annotations

import hashlib
import json
import stat
from pathlib import Path

import aiohttp
import pytest

from zlh_actors.lab import cluster, settings, world


async def download(http: aiohttp.ClientSession, url: str) -> bytes:
    async with http.get(url) as response:
        assert response.status == 200, url
        return await response.read()


async def test_lab_env_names_the_running_lab(lab: world.Lab) -> None:
    values = settings.read_env_file(lab.env_file)
    assert set(values) == set(settings.ENV_NAMES)
    assert settings.load(lab.directory) == lab.settings
    assert values["ZLH_IP_SUBNET"] == "127.20.0.0/16"
    assert values["ZLH_PVE_TEMPLATE_VMID"] == "9000"
    assert int(values["ZLH_PVE_PORT"]) == lab.cluster.port
    check_files(lab.env_file, Path(values["ZLH_ENROLLMENT_KEY_FILE"]), Path(values["ZLH_PVE_CA_FILE"]))


def check_files(env_file: Path, key_file: Path, ca_file: Path) -> None:
    assert stat.S_IMODE(env_file.stat().st_mode) == 0o600, "the token secret is the owner's only"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600, "the key is the owner's only"
    assert len(key_file.read_bytes().strip()) >= 32, "long enough for the agents to accept"
    assert ca_file.read_text().startswith("-----BEGIN CERTIFICATE-----")


async def test_launcher_pins_and_mods_download_with_their_hashes(
    lab: world.Lab, http: aiohttp.ClientSession
) -> None:
    pins = json.loads((lab.directory / settings.LAUNCHERS_FILE).read_text())
    triples = [(pin["minecraft"], pin["loader"], pin["installer"]) for pin in pins]
    assert triples[0] == ("1.21.1", "0.16.14", "1.0.1")
    assert len(set(triples)) >= 3
    for pin in pins:
        body = await download(http, pin["url"])
        assert (len(body), hashlib.sha256(body).hexdigest()) == (pin["size"], pin["sha256"])

    mods = json.loads((lab.directory / settings.MODS_FILE).read_text())
    assert [mod["name"] for mod in mods] == sorted(settings.MODS)
    for mod in mods:
        body = await download(http, mod["url"])
        assert (len(body), hashlib.sha512(body).hexdigest()) == (mod["size"], mod["sha512"])


async def test_a_mod_added_later_is_listed(lab: world.Lab, http: aiohttp.ClientSession) -> None:
    lab.add_mod("tampered-1.0.jar", tamper="bytes")
    listed = {mod["name"]: mod for mod in json.loads((lab.directory / settings.MODS_FILE).read_text())}
    body = await download(http, listed["tampered-1.0.jar"]["url"])
    assert len(body) == listed["tampered-1.0.jar"]["size"]
    assert hashlib.sha512(body).hexdigest() != listed["tampered-1.0.jar"]["sha512"], "served bytes differ"


async def test_labs_coexist_but_never_share_a_directory(tmp_path: Path) -> None:
    async with (
        world.Lab(tmp_path / "one", time_scale=0.01) as one,
        world.Lab(tmp_path / "two", time_scale=0.01) as two,
    ):
        assert one.settings.pve_port != two.settings.pve_port
        assert one.files.base_url != two.files.base_url
        with pytest.raises(cluster.LabError):
            async with world.Lab(tmp_path / "one", time_scale=0.01):
                pass
        assert settings.load(tmp_path / "one") == one.settings, "the refused lab left the files alone"
