"""Enrollment and install: verified files, idempotent re-install, refusing bad files and manifests."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.integration.agent.conftest import TOKEN, Agent, Receiver, enrollment, free_port
from zlh_actors.agent import manifest
from zlh_actors.lab import files


def digest(path: Path, algorithm: str) -> str:
    return hashlib.new(algorithm, path.read_bytes()).hexdigest()


def properties(path: Path) -> dict[str, str]:
    lines = path.read_text().splitlines()
    return dict(line.split("=", 1) for line in lines if line and not line.startswith("#"))


async def test_enroll_installs_verified_files_and_reports(
    agents: Callable[..., Agent], file_server: files.FileServer, receiver: Receiver
) -> None:
    agent = agents()
    game_dir = agent.state_dir / "game"
    (game_dir / "mods").mkdir(parents=True)
    (game_dir / "mods" / "stale-mod.jar").write_bytes(b"left over from an older manifest")
    (game_dir / "mods" / "notes.txt").write_text("not a jar: kept")
    await agent.launch()
    file_server.add_mod("lithium.jar")
    file_server.add_mod("fabric-api.jar", payload_bytes=300_000)
    port = free_port(agent.ip)
    pinned = file_server.manifest(game_port=port)
    expected = manifest.manifest_sha256(pinned)
    body = enrollment(pinned, receiver.base_url)

    code, answer = await agent.enroll(body)

    assert code == 202
    assert (answer["generation"], answer["enrolled_manifest_sha256"]) == (1, expected)
    installed = await receiver.wait_for_state("installed")
    assert receiver.states()[0] == "installing"
    assert (installed["generation"], installed["manifest_sha256"]) == (1, expected)
    assert set(receiver.authorizations) == {f"Bearer {TOKEN}"}
    assert set(receiver.paths) == {f"/agent/v1/servers/{body['server_id']}/status"}

    assert digest(game_dir / "fabric-server-launch.jar", "sha256") == file_server.launcher.sha256
    for name, mod in file_server.mods.items():
        assert digest(game_dir / "mods" / name, "sha512") == mod.sha512
    assert not (game_dir / "mods" / "stale-mod.jar").exists()
    assert (game_dir / "mods" / "notes.txt").exists()
    assert not [path for path in game_dir.rglob("*") if path.name.endswith(".zlh-part")]
    written = properties(game_dir / "server.properties")
    assert (written["server-ip"], written["server-port"], written["max-players"]) == (
        agent.ip,
        str(port),
        "20",
    )
    assert "eula=true" in (game_dir / "eula.txt").read_text().splitlines()
    assert (agent.state_dir / "applied-manifest.sha256").read_text().strip() == expected

    status = await agent.status()
    assert (status["state"], status["manifest_sha256"], status["game"]["running"]) == (
        "installed",
        expected,
        False,
    )


async def test_reinstall_downloads_only_what_changed(
    agents: Callable[..., Agent], file_server: files.FileServer, receiver: Receiver
) -> None:
    agent = agents()
    await agent.launch()
    for name in ("a.jar", "b.jar", "c.jar"):
        file_server.add_mod(name)
    port = free_port(agent.ip)
    first = enrollment(file_server.manifest(["a.jar", "b.jar"], game_port=port), receiver.base_url)
    assert (await agent.enroll(first))[0] == 202
    await receiver.wait_for_state("installed")

    second = {**first, "generation": 2, "manifest": file_server.manifest(["a.jar", "c.jar"], game_port=port)}
    assert (await agent.enroll(second))[0] == 202
    installed = await receiver.wait_for_state("installed", count=2)

    assert installed["generation"] == 2
    assert "fetch 1, keep 2, delete 1" in installed["detail"]
    assert file_server.hits(file_server.launcher.url) == 1
    assert [file_server.hits(file_server.mods[name].url) for name in ("a.jar", "b.jar", "c.jar")] == [1, 1, 1]
    mods_dir = agent.state_dir / "game" / "mods"
    assert sorted(path.name for path in mods_dir.iterdir()) == ["a.jar", "c.jar"]


@pytest.mark.parametrize("tamper", ["bytes", "size"])
async def test_a_file_that_does_not_match_its_pin_fails_the_install(
    agents: Callable[..., Agent], file_server: files.FileServer, receiver: Receiver, tamper: files.Tamper
) -> None:
    agent = agents()
    await agent.launch()
    file_server.add_mod("good.jar")
    broken = file_server.add_mod("broken.jar", tamper=tamper)
    port = free_port(agent.ip)
    body = enrollment(file_server.manifest(game_port=port), receiver.base_url)
    assert (await agent.enroll(body))[0] == 202

    failed = await receiver.wait_for_state("install_failed")

    assert "mods/broken.jar" in failed["detail"]
    if tamper == "bytes":
        served = await (await agent.http.get(broken.url)).read()
        assert f"expected {broken.sha512}, got {hashlib.sha512(served).hexdigest()}" in failed["detail"]
    else:
        assert f"size mismatch: expected {broken.size} bytes" in failed["detail"]
    game_dir = agent.state_dir / "game"
    assert not (game_dir / "mods" / "broken.jar").exists()
    assert not [path for path in game_dir.rglob("*") if path.name.endswith(".zlh-part")]
    assert not (agent.state_dir / "applied-manifest.sha256").exists()
    status = await agent.status()
    assert status["state"] == "install_failed"
    assert "mods/broken.jar" in status["last_error"]
    assert status["manifest_sha256"] is None

    code, problem = await agent.start_game(1)

    assert code == 409
    assert problem["type"] == "/problems/not-allowed"
    assert (await agent.status())["game"] == {"pid": None, "running": False}
    assert "starting" not in receiver.states()
    with pytest.raises(ConnectionRefusedError):
        await asyncio.open_connection(agent.ip, port)


async def test_a_bad_manifest_is_refused_naming_the_field(
    agents: Callable[..., Agent], file_server: files.FileServer, receiver: Receiver
) -> None:
    agent = agents()
    await agent.launch()
    file_server.add_mod("a.jar")
    pinned = file_server.manifest(game_port=25565)
    pinned["mods"][0]["sha512"] = "not-a-digest"

    code, problem = await agent.enroll(enrollment(pinned, receiver.base_url))

    assert code == 400
    assert problem["field"] == "manifest.mods[0].sha512"
    assert "manifest.mods[0].sha512" in problem["title"]
    assert (await agent.status())["state"] == "unenrolled"
    assert not (agent.state_dir / "enrollment.json").exists()
    assert receiver.reports == []
