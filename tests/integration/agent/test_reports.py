"""Status reports: strictly increasing seq across restarts, and retried until delivered."""

from __future__ import annotations

import socket
from collections.abc import Callable

from tests.integration.agent.conftest import Agent, Receiver, enrollment, free_port, pid_alive, run_receiver
from zlh_actors.lab import files


async def test_seq_keeps_increasing_across_an_agent_restart(
    agents: Callable[..., Agent], file_server: files.FileServer, receiver: Receiver
) -> None:
    agent = agents()
    await agent.launch()
    port = free_port(agent.ip)
    assert (await agent.enroll(enrollment(file_server.manifest(game_port=port), receiver.base_url)))[0] == 202
    await receiver.wait_for_state("installed")
    assert (await agent.start_game(1))[0] == 202
    await receiver.wait_for_state("ready")
    pid = (await agent.status())["game"]["pid"]

    assert await agent.terminate() == 0

    stopped = await receiver.wait_for_state("stopped")
    assert "agent shutting down" in stopped["detail"]
    assert not pid_alive(pid)
    before = [report["seq"] for report in receiver.reports]

    await agent.launch()

    restarted = await receiver.wait_for_state("installed", count=2)
    assert restarted["detail"] == "agent started"
    seqs = [report["seq"] for report in receiver.reports]
    assert seqs == sorted(set(seqs))
    assert seqs[: len(before)] == before
    assert restarted["seq"] > max(before)
    status = await agent.status()
    assert (status["state"], status["generation"], status["seq"]) == ("installed", 1, restarted["seq"])
    assert int((agent.state_dir / "seq").read_text()) == restarted["seq"]


async def test_reports_are_retried_until_the_control_plane_listens(
    agents: Callable[..., Agent], file_server: files.FileServer
) -> None:
    # Bound but not listening: connections are refused until the receiver starts on this socket.
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    callback_base = f"http://127.0.0.1:{sock.getsockname()[1]}"
    agent = agents()
    await agent.launch()
    assert (await agent.enroll(enrollment(file_server.manifest(game_port=25565), callback_base)))[0] == 202
    status = await agent.wait_for_status(lambda status: status["state"] == "installed")
    assert status["seq"] == 2
    assert "not delivered" in agent.log()

    async with run_receiver(sock) as receiver:
        await receiver.wait_for_state("installed")

        assert receiver.states() == ["installing", "installed"]
        assert [report["seq"] for report in receiver.reports] == [1, 2]
