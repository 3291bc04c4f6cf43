"""The mission, end to end: request -> one record -> one provisioning -> one container -> clean end."""

from __future__ import annotations

import asyncio
import uuid

from tests.e2e import harness


async def test_create_run_stop_start_delete(control: harness.Control) -> None:
    created = await control.create("survival")
    assert created["state"] == "requested"
    assert all(created[field] for field in ("vmid", "ip", "game_port", "node"))
    server_id = created["id"]

    running = await control.wait_state(server_id, "running")
    assert running["last_error"] is None
    assert list(await control.containers()) == [created["vmid"]]

    status, body, _ = await control.call("POST", f"/v1/servers/{server_id}/stop")
    assert status == 202, body
    await control.wait_state(server_id, "stopped")
    status, body, _ = await control.call("POST", f"/v1/servers/{server_id}/start")
    assert status == 202, body
    await control.wait_state(server_id, "running")

    status, body, _ = await control.call("DELETE", f"/v1/servers/{server_id}")
    assert status == 202, body
    deleted = await control.wait_state(server_id, "deleted")
    assert deleted["deleted_at"] is not None
    assert await control.containers() == {}
    assert await control.live_allocations(server_id) == []
    status, again, _ = await control.call("DELETE", f"/v1/servers/{server_id}")
    assert status == 202
    assert again["state"] == "deleted"
    states = await control.journal_states(server_id)
    assert states[0] == "requested"
    assert states[-1] == "deleted"
    assert states.count("running") == 2


async def test_fifty_concurrent_creates_with_one_key_make_one_server(control: harness.Control) -> None:
    key = f"once-{uuid.uuid4()}"
    body = control.body("only-one")

    async def attempt() -> tuple[int, object, dict[str, str]]:
        return await control.call("POST", "/v1/servers", json=body, headers={"Idempotency-Key": key})

    answers = await asyncio.gather(*(attempt() for _ in range(50)))
    firsts = [a for a in answers if a[0] == 202 and a[2].get("Idempotent-Replayed") != "true"]
    replays = [a for a in answers if a[0] == 202 and a[2].get("Idempotent-Replayed") == "true"]
    in_progress = [a for a in answers if a[0] == 409]
    assert len(firsts) == 1, [a[0] for a in answers]
    assert len(firsts) + len(replays) + len(in_progress) == 50
    first = firsts[0][1]
    assert all(replay[1] == first for replay in replays)
    assert await control.pool.fetchval("SELECT count(*) FROM servers WHERE name = 'only-one'") == 1
    assert isinstance(first, dict)
    await control.wait_state(first["id"], "running")
    assert len(await control.containers()) == 1
    status, later, headers = await attempt()
    assert (status, later, headers.get("Idempotent-Replayed")) == (202, first, "true")


async def test_twenty_keys_at_once_make_twenty_distinct_servers(control: harness.Control) -> None:
    created = await asyncio.gather(*(control.create(f"many-{n}") for n in range(20)))
    assert len({server["vmid"] for server in created}) == 20
    assert len({server["ip"] for server in created}) == 20
    assert len({(server["node"], server["game_port"]) for server in created}) == 20
    await asyncio.gather(*(control.wait_state(server["id"], "running", timeout=120) for server in created))
    containers = await control.containers()
    assert sorted(containers) == sorted(server["vmid"] for server in created)


async def test_restart_really_restarts_the_game(control: harness.Control) -> None:
    server = await control.create("restarted")
    await control.wait_state(server["id"], "running")
    agent = control.lab.agents()[server["vmid"]]
    before = await asyncio.to_thread(harness.agent_status, agent.ip, agent.port)
    status, body, _ = await control.call("POST", f"/v1/servers/{server['id']}/restart")
    assert status == 202, body
    await control.wait_state(server["id"], "running")
    after = await asyncio.to_thread(harness.agent_status, agent.ip, agent.port)
    assert after["game"]["running"]
    assert after["game"]["pid"] != before["game"]["pid"]
    assert (await control.journal_states(server["id"]))[-2:] == ["starting", "running"]
