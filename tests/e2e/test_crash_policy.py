"""The crash policy: a game that crashes while running is restarted with backoff, N times in a window;
one crash more and the server fails with the reason."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest

from tests import helpers
from tests.e2e import harness
from zlh_actors import service
from zlh_actors.lab import replicas, world

RESTARTS = 2


@pytest.fixture
async def control(lab: world.Lab, db_url: str, pool: asyncpg.Pool) -> AsyncIterator[harness.Control]:
    made = await replicas.prepare_database(lab, db_url)
    settings = harness.settings_for(
        lab, db_url, crash_restarts=RESTARTS, crash_window=120.0, crash_backoff=0.2, reconcile_interval=3600.0
    )
    async with service.running(settings, db_url):
        client = harness.Control([f"http://127.0.0.1:{settings.port}"], made, lab, pool)
        try:
            yield client
        finally:
            await client.close()


async def crash(control: harness.Control, server: dict[str, Any]) -> int:
    """Kill the game of a running server (as a crash would); the pid it had."""
    agent = control.lab.agents()[server["vmid"]]
    status = await asyncio.to_thread(harness.agent_status, agent.ip, agent.port)
    assert status["game"]["running"], status
    assert control.lab.kill_game(server["vmid"])
    pid: int = status["game"]["pid"]
    return pid


async def wait_restarted(control: harness.Control, server_id: str, crashes: int) -> None:
    """Until the journal shows `crashes` crashes, each followed by a restart that reached running."""

    async def back() -> bool:
        states = await control.journal_states(server_id)
        return states.count("crashed") == crashes and states[-3:] == ["crashed", "starting", "running"]

    await helpers.assert_eventually(
        back, timeout=30, interval=0.1, message=f"no restart after crash {crashes}"
    )


async def test_a_crashed_game_is_restarted_and_the_server_runs_again(control: harness.Control) -> None:
    server = await control.create("phoenix")
    server = await control.wait_state(server["id"], "running")
    killed = await crash(control, server)

    await wait_restarted(control, server["id"], 1)
    agent = control.lab.agents()[server["vmid"]]
    status = await asyncio.to_thread(harness.agent_status, agent.ip, agent.port)
    assert status["game"]["running"]
    assert status["game"]["pid"] != killed
    entries = await control.pool.fetch(
        "SELECT event, command_id, epoch, detail FROM journal WHERE server_id = $1 ORDER BY seq DESC LIMIT 3",
        uuid.UUID(server["id"]),
    )
    ready, restart, crashed = entries
    assert crashed["event"] == "crashed"  # the agent's report, through its command
    assert (
        await control.pool.fetchval("SELECT kind FROM commands WHERE id = $1", crashed["command_id"])
        == "report"
    )
    assert restart["event"] == "restart"
    assert restart["detail"] == f"crash policy: restart 1 of {RESTARTS} within 120s, after 0.2s"
    assert ready["event"] == "ready"
    assert all(entry["epoch"] is not None for entry in entries)
    assert (await control.get(server["id"]))["last_error"] is None


async def test_crashing_more_than_allowed_in_the_window_fails_the_server(control: harness.Control) -> None:
    server = await control.create("doomed")
    server = await control.wait_state(server["id"], "running")
    for crashes in range(1, RESTARTS + 1):
        await crash(control, server)
        await wait_restarted(control, server["id"], crashes)

    await crash(control, server)
    failed = await control.wait_state(server["id"], "failed.starting", timeout=30)

    assert failed["last_error"].startswith(
        f"the game crashed {RESTARTS + 1} times within 120s and is not restarted more than {RESTARTS} times"
    )
    assert "agent reported crashed" in failed["last_error"]
    states = await control.journal_states(server["id"])
    assert states[-2:] == ["crashed", "failed.starting"]
    assert states.count("crashed") == RESTARTS + 1
    # Failed means left alone: no restart is pending, and a retry is what brings it back.
    status, body, _ = await control.call("POST", f"/v1/servers/{server['id']}/retry")
    assert status == 202, body
    await control.wait_state(server["id"], "running")
