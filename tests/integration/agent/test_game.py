"""The game: start to ready (checked with a real SLP client), graceful stop, crash detection."""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import Callable

import pytest
from mcstatus import JavaServer

from tests import helpers
from tests.integration.agent.conftest import Agent, Receiver, enrollment, free_port, pid_alive
from zlh_actors.agent import wire
from zlh_actors.lab import files


async def installed_agent(
    agents: Callable[..., Agent], file_server: files.FileServer, receiver: Receiver
) -> tuple[Agent, int]:
    agent = agents()
    await agent.launch()
    file_server.add_mod("lithium.jar")
    port = free_port(agent.ip)
    assert (await agent.enroll(enrollment(file_server.manifest(game_port=port), receiver.base_url)))[0] == 202
    await receiver.wait_for_state("installed")
    return agent, port


def seqs(reports: list[wire.Report]) -> list[int]:
    return [report["seq"] for report in reports]


async def test_start_reports_ready_when_slp_answers_and_stop_is_graceful(
    agents: Callable[..., Agent], file_server: files.FileServer, receiver: Receiver
) -> None:
    agent, port = await installed_agent(agents, file_server, receiver)

    code, answer = await agent.start_game(1)

    assert code == 202
    assert answer["state"] == "starting"
    ready = await receiver.wait_for_state("ready")
    states = receiver.states()
    assert states.index("starting") < states.index("ready")
    assert str(port) in ready["detail"]
    slp = await JavaServer(agent.ip, port, timeout=3).async_status()
    assert slp.players.max == 20
    status = await agent.status()
    pid = status["game"]["pid"]
    assert status["state"] == "ready"
    assert status["game"]["running"]
    assert pid_alive(pid)
    again_code, _ = await agent.start_game(1)
    assert again_code == 200
    assert receiver.states().count("starting") == 1

    code, _ = await agent.stop_game(1)

    assert code == 202
    stopped = await receiver.wait_for_state("stopped")
    assert "stop requested" in stopped["detail"]
    assert "exited with code 0" in stopped["detail"]
    assert not pid_alive(pid)
    status = await agent.status()
    assert (status["state"], status["game"]) == ("stopped", {"pid": None, "running": False})
    with pytest.raises(ConnectionRefusedError):
        await asyncio.open_connection(agent.ip, port)
    assert (await agent.stop_game(1))[0] == 200
    assert seqs(receiver.reports) == sorted(set(seqs(receiver.reports)))


async def test_a_killed_game_is_reported_crashed_and_can_be_started_again(
    agents: Callable[..., Agent], file_server: files.FileServer, receiver: Receiver
) -> None:
    agent, port = await installed_agent(agents, file_server, receiver)
    assert (await agent.start_game(1))[0] == 202
    await receiver.wait_for_state("ready")
    pid = (await agent.status())["game"]["pid"]

    os.kill(pid, signal.SIGKILL)

    crashed = await receiver.wait_for_state("crashed")
    assert crashed["detail"] == "killed by SIGKILL (exit code -9)"
    status = await agent.status()
    assert status["state"] == "crashed"
    assert status["last_error"] == crashed["detail"]
    assert not status["game"]["running"]

    assert (await agent.start_game(1))[0] == 202
    await receiver.wait_for_state("ready", count=2)
    assert (await JavaServer(agent.ip, port, timeout=3).async_status()).players.max == 20
    assert seqs(receiver.reports) == sorted(set(seqs(receiver.reports)))


async def test_a_game_that_outlives_a_killed_agent_is_stopped_when_it_returns(
    agents: Callable[..., Agent], file_server: files.FileServer, receiver: Receiver
) -> None:
    agent, _ = await installed_agent(agents, file_server, receiver)
    assert (await agent.start_game(1))[0] == 202
    await receiver.wait_for_state("ready")
    pid = (await agent.status())["game"]["pid"]
    assert agent.process is not None
    agent.process.kill()
    await agent.process.wait()
    assert pid_alive(pid)  # its own session: SIGKILL of the agent does not reach it

    await agent.launch()

    async def gone() -> bool:
        return not pid_alive(pid)

    await helpers.assert_eventually(gone, timeout=10, message="orphaned game still running")
    crashed = await receiver.wait_for_state("crashed")
    assert "agent restarted" in crashed["detail"]
    assert (await agent.status())["state"] == "crashed"


async def test_a_newer_generation_stops_the_running_game_then_installs(
    agents: Callable[..., Agent], file_server: files.FileServer, receiver: Receiver
) -> None:
    agent, port = await installed_agent(agents, file_server, receiver)
    assert (await agent.start_game(1))[0] == 202
    await receiver.wait_for_state("ready")
    pid = (await agent.status())["game"]["pid"]
    file_server.add_mod("sodium.jar")
    body = enrollment(file_server.manifest(game_port=port), receiver.base_url, generation=2)
    body["server_id"] = (await agent.status())["server_id"]

    assert (await agent.enroll(body))[0] == 202

    installed = await receiver.wait_for_state("installed", count=2)
    tail = receiver.reports[-3:]
    assert [(report["state"], report["generation"]) for report in tail] == [
        ("stopped", 2),
        ("installing", 2),
        ("installed", 2),
    ]
    assert "stopped to install generation 2" in tail[0]["detail"]
    assert installed["manifest_sha256"] != receiver.reports[0]["manifest_sha256"]
    assert not pid_alive(pid)
    assert (await agent.start_game(1))[0] == 409
    assert (await agent.start_game(2))[0] == 202
    await receiver.wait_for_state("ready", count=2)
    assert seqs(receiver.reports) == sorted(set(seqs(receiver.reports)))
