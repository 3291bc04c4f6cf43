"""Provisioning under adverse conditions: bad mods, faults in Proxmox, deletes mid-way, no DNS.

Steps are held with real conditions rather than hooks in the product: a config lock held on the
template (cloning), PVE failing container starts (booting), a socket squatting on the agent's port
(enrolling), a mod URL that accepts connections and never answers (installing), and a slow game
(starting). The delete then lands while the server is in that step, which the journal shows.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from tests import helpers
from tests.e2e import harness
from zlh_actors import service
from zlh_actors.lab import replicas, world
from zlh_actors.servers import provisioning


@contextlib.asynccontextmanager
async def control_for(
    lab: world.Lab, db_url: str, pool: asyncpg.Pool, **overrides: Any
) -> AsyncIterator[harness.Control]:
    made = await replicas.prepare_database(lab, db_url)
    settings = harness.settings_for(lab, db_url, **overrides)
    async with service.running(settings, db_url):
        client = harness.Control([f"http://127.0.0.1:{settings.port}"], made, lab, pool)
        try:
            yield client
        finally:
            await client.close()


def mod_entry(lab: world.Lab, name: str) -> dict[str, Any]:
    mod = lab.files.add_mod(name)
    wire: dict[str, Any] = mod.wire()
    return {
        "name": name.removesuffix(".jar"),
        "url": wire["url"],
        "sha512": wire["sha512"],
        "size": wire["size"],
    }


async def test_a_mod_whose_bytes_do_not_match_fails_the_install_and_the_game_never_starts(
    control: harness.Control,
) -> None:
    good = mod_entry(control.lab, "good-mod.jar")
    bad = dict(good, name="evil-mod", sha512="0" * 128)
    created = await control.create("tampered", mods=[good, bad])
    failed = await control.wait_state(created["id"], "failed.provisioning")
    assert "evil-mod.jar" in failed["last_error"], failed["last_error"]
    assert "install" in failed["last_error"]
    agent = control.lab.agents()[created["vmid"]]
    status = await asyncio.to_thread(harness.agent_status, agent.ip, agent.port)
    assert status["game"]["running"] is False
    assert status["state"] == "install_failed"
    assert not await provisioning.slp_answers(created["ip"], created["game_port"], timeout=1)
    assert len(await control.containers()) == 1


async def test_lifecycle_never_consults_dns(
    control: harness.Control, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = socket.getaddrinfo
    asked: list[str] = []

    def numeric_only(host: Any, *args: Any, **kwargs: Any) -> Any:
        text = host.decode() if isinstance(host, bytes) else str(host)
        try:
            socket.inet_pton(socket.AF_INET6 if ":" in text else socket.AF_INET, text)
        except OSError:
            asked.append(text)
            raise socket.gaierror(socket.EAI_NONAME, f"DNS is off in this test: {text}") from None
        return real(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", numeric_only)
    created = await control.create("unresolvable-host-zlh-invalid")
    running = await control.wait_state(created["id"], "running")
    assert running["name"] == "unresolvable-host-zlh-invalid"
    assert asked == []
    with pytest.raises(socket.gaierror):
        socket.getaddrinfo("unresolvable-host-zlh-invalid", 25565)


async def test_agent_ready_without_a_server_list_ping_stays_starting(
    tmp_path: Path, db_url: str, pool: asyncpg.Pool
) -> None:
    async with (
        world.Lab(tmp_path / "slow", time_scale=0.02, warmup=8.0, subnet=harness.subnet()) as lab,
        control_for(lab, db_url, pool) as control,
    ):
        created = await control.create("slow-game")
        await control.wait_state(created["id"], "starting", timeout=60)
        # The game is still warming up (it does not answer SLP yet); forge the agent's `ready` report.
        enrollment = json.loads(
            (lab.directory / "containers" / str(created["vmid"]) / "state" / "enrollment.json").read_text()
        )
        status, body, _ = await control.call(
            "POST",
            f"/agent/v1/servers/{created['id']}/status",
            headers={"Authorization": f"Bearer {enrollment['token']}"},
            json={
                "generation": 1,
                "seq": 10_000,
                "state": "ready",
                "manifest_sha256": "",
                "detail": "forged",
            },
        )
        assert status == 202, body
        for _ in range(10):
            assert (await control.get(created["id"]))["state"] == "starting"
            await asyncio.sleep(0.2)  # observing that nothing changes for a while, not synchronizing
        assert not await provisioning.slp_answers(created["ip"], created["game_port"], timeout=0.5)
        running = await control.wait_state(created["id"], "running", timeout=60)
        assert running["last_error"] is None


async def test_a_failed_clone_task_fails_clearly_and_retry_runs_with_one_container(
    control: harness.Control,
) -> None:
    lab = control.lab
    await lab.cluster.call(lambda: lab.pve.fail("POST", "/clone", error="clone_failed", times=1))
    created = await control.create("unlucky")
    failed = await control.wait_state(created["id"], "failed.provisioning")
    assert "clone failed" in failed["last_error"], failed["last_error"]
    assert len(await control.containers()) <= 1
    status, body, _ = await control.call("POST", f"/v1/servers/{created['id']}/retry")
    assert status == 202, body
    await control.wait_state(created["id"], "running")
    assert list(await control.containers()) == [created["vmid"]]


async def test_flaky_network_and_held_locks_end_running_with_one_container_each(
    control: harness.Control,
) -> None:
    pve = control.lab.pve
    await control.lab.cluster.call(lambda: pve.flaky_network(drop_rate=0.15, seed=7))
    await control.lab.cluster.run(pve.hold_config_lock(control.lab.settings.template_vmid, 20))
    created = await asyncio.gather(*(control.create(f"weather-{n}") for n in range(3)))
    for server in created:
        await control.wait_state(server["id"], "running", timeout=120)
    await control.lab.cluster.call(lambda: pve.flaky_network(drop_rate=0.0))
    containers = await control.containers()
    assert sorted(containers) == sorted(server["vmid"] for server in created)


# --- delete during each provisioning step -----------------------------------------------------


@contextlib.contextmanager
def squatter(ip: str, port: int) -> Iterator[None]:
    """A socket that accepts connections on ip:port and never answers."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((ip, port))
    sock.listen(64)
    try:
        yield
    finally:
        sock.close()


async def request_delete(control: harness.Control, server: dict[str, Any]) -> None:
    status, body, _ = await control.call("DELETE", f"/v1/servers/{server['id']}")
    assert status == 202, body


async def finish_delete(control: harness.Control, server: dict[str, Any], during: str) -> None:
    await control.wait_state(server["id"], "deleted", timeout=90)
    rows = await control.pool.fetch(
        "SELECT from_state FROM journal WHERE server_id = $1 AND event = 'delete' ORDER BY seq LIMIT 1",
        uuid.UUID(server["id"]),
    )
    assert rows[0]["from_state"] == during
    assert server["vmid"] not in await control.containers()
    assert await control.live_allocations(server["id"]) == []
    await control.lab.wait_no_agent(server["vmid"], timeout=30)


async def test_delete_while_cloning(control: harness.Control, db_url: str) -> None:
    lab = control.lab
    await lab.cluster.run(lab.pve.hold_config_lock(lab.settings.template_vmid, None))
    server = await control.create("del-cloning")
    await control.wait_state(server["id"], "provisioning.cloning")
    await request_delete(control, server)
    await helpers.assert_eventually(lambda: _journal_has_delete(control, server["id"]), timeout=30)
    await lab.cluster.call(lambda: lab.pve.release_config_lock(lab.settings.template_vmid))
    await finish_delete(control, server, "provisioning.cloning")


async def _journal_has_delete(control: harness.Control, server_id: str) -> bool:
    return "deleting.stopping_game" in await control.journal_states(server_id)


async def test_delete_while_booting(control: harness.Control) -> None:
    lab = control.lab
    await lab.cluster.call(lambda: lab.pve.fail("POST", "/status/start", 500, "start boom"))
    server = await control.create("del-booting")
    await control.wait_state(server["id"], "provisioning.booting")
    await request_delete(control, server)
    await helpers.assert_eventually(lambda: _journal_has_delete(control, server["id"]), timeout=30)
    await lab.cluster.call(lambda: lab.pve.failures.pop(("POST", "/status/start"), None))
    await finish_delete(control, server, "provisioning.booting")


async def test_delete_while_enrolling(control: harness.Control) -> None:
    server = await control.create("del-enrolling")
    with squatter(server["ip"], control.lab.settings.agent_port):
        await control.wait_state(server["id"], "provisioning.enrolling")
        await request_delete(control, server)
        await helpers.assert_eventually(lambda: _journal_has_delete(control, server["id"]), timeout=30)
    await finish_delete(control, server, "provisioning.enrolling")


async def test_delete_while_installing(control: harness.Control) -> None:
    hole = socket.socket()
    hole.bind(("127.0.0.1", 0))
    hole.listen(16)
    try:
        stuck = {
            "name": "never-arrives",
            "url": f"http://127.0.0.1:{hole.getsockname()[1]}/never.jar",
            "sha512": "1" * 128,
            "size": 10,
        }
        server = await control.create("del-installing", mods=[stuck])
        await control.wait_state(server["id"], "provisioning.installing")
        await request_delete(control, server)
        await helpers.assert_eventually(lambda: _journal_has_delete(control, server["id"]), timeout=30)
    finally:
        hole.close()
    await finish_delete(control, server, "provisioning.installing")


async def test_delete_while_starting(tmp_path: Path, db_url: str, pool: asyncpg.Pool) -> None:
    async with (
        world.Lab(tmp_path / "slow", time_scale=0.02, warmup=30.0, subnet=harness.subnet()) as lab,
        control_for(lab, db_url, pool) as control,
    ):
        server = await control.create("del-starting")
        await control.wait_state(server["id"], "starting", timeout=60)
        await request_delete(control, server)
        await finish_delete(control, server, "starting")


async def test_delete_while_configuring(control: harness.Control) -> None:
    # Configuring only moves the server's allocations to in-use: a row lock held on them (lock_timeout
    # makes the step give up and retry) keeps the server there.
    async with control.pool.acquire() as conn, conn.transaction():
        server = await control.create("del-configuring")
        await conn.execute(
            "SELECT 1 FROM vmid_allocations WHERE server_id = $1 FOR UPDATE", uuid.UUID(server["id"])
        )
        await control.wait_state(server["id"], "provisioning.configuring")
        await request_delete(control, server)
        await helpers.assert_eventually(lambda: _journal_has_delete(control, server["id"]), timeout=30)
    await finish_delete(control, server, "provisioning.configuring")
