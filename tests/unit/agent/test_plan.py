"""Install planning: what is fetched, kept and deleted, and the files the agent writes itself."""

from __future__ import annotations

from tests.unit.agent import test_manifest
from zlh_actors.agent import manifest, plan


def pinned() -> manifest.Manifest:
    return manifest.parse(test_manifest.valid())


def test_targets_are_the_launcher_then_mods_by_name() -> None:
    targets = plan.targets(pinned())
    assert [(t.path, t.algorithm) for t in targets] == [
        ("fabric-server-launch.jar", "sha256"),
        ("mods/fabric-api.jar", "sha512"),
        ("mods/lithium.jar", "sha512"),
    ]
    assert targets[0].digest == "c" * 64
    assert targets[0].size == 1234
    assert targets[2].digest == test_manifest.SHA512_A
    assert targets[2].size == 10


def test_empty_directory_fetches_everything() -> None:
    targets = plan.targets(pinned())
    work = plan.plan(targets, {}, [])
    assert work.fetch == targets
    assert work.keep == ()
    assert work.delete == ()


def test_files_with_the_right_digest_are_kept_others_fetched() -> None:
    targets = plan.targets(pinned())
    present = {
        "fabric-server-launch.jar": "c" * 64,
        "mods/fabric-api.jar": "0" * 128,  # present but different: fetched again
        "mods/lithium.jar": test_manifest.SHA512_A,
    }
    work = plan.plan(targets, present, ["mods/fabric-api.jar", "mods/lithium.jar"])
    assert [t.path for t in work.fetch] == ["mods/fabric-api.jar"]
    assert [t.path for t in work.keep] == ["fabric-server-launch.jar", "mods/lithium.jar"]
    assert work.delete == ()
    assert work.summary() == "fetch 1, keep 2, delete 0"


def test_reinstalling_an_installed_manifest_fetches_nothing() -> None:
    targets = plan.targets(pinned())
    present = {target.path: target.digest for target in targets}
    work = plan.plan(targets, present, [t.path for t in targets if t.path.startswith("mods/")])
    assert work.fetch == ()
    assert work.delete == ()


def test_unlisted_jars_and_partial_downloads_are_deleted_other_files_kept() -> None:
    on_disk = [
        "mods/lithium.jar",
        "mods/old-mod.jar",
        "mods/notes.txt",
        "mods/.fabric-api.jar.1a2b3c4d.zlh-part",
        ".fabric-server-launch.jar.0f0f0f0f.zlh-part",
    ]
    work = plan.plan(plan.targets(pinned()), {}, on_disk)
    assert work.delete == (
        ".fabric-server-launch.jar.0f0f0f0f.zlh-part",
        "mods/.fabric-api.jar.1a2b3c4d.zlh-part",
        "mods/old-mod.jar",
    )


def test_server_properties_carry_the_agent_address_and_escape_values() -> None:
    data = test_manifest.valid()
    data["properties"] = {"motd": "Caf\u00e9 \\o/ \U0001f600", "level-name": " world"}
    text = plan.render_properties(manifest.parse(data), "10.0.0.5", "f" * 64)
    lines = text.splitlines()
    assert lines[0].startswith("#")
    assert "f" * 64 in lines[0]
    assert lines[1:] == [
        "level-name=\\ world",
        "motd=Caf\\u00e9 \\\\o/ \\ud83d\\ude00",
        "server-ip=10.0.0.5",
        "server-port=25565",
    ]
    assert text.isascii()
    assert text.endswith("\n")


def test_eula_is_accepted() -> None:
    assert "eula=true" in plan.render_eula().splitlines()
