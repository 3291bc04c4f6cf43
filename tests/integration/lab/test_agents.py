"""The agent supervisor, driven through the real Proxmox driver: an agent exactly while a container runs."""

from __future__ import annotations

import aiohttp
import mcstatus

from tests import helpers
from tests.integration.lab import conftest
from zlh_actors.lab import processes, world
from zlh_actors.proxmox import driver, protocol


def free_game_port(lab: world.Lab) -> int:
    # Any port but the agent's: each container has its own IP, so nothing else listens there.
    return lab.settings.agent_port + 1 if lab.settings.agent_port < 65535 else 25565


async def test_an_agent_runs_exactly_while_its_container_runs(
    lab: world.Lab, proxmox: driver.ProxmoxerDriver, http: aiohttp.ClientSession
) -> None:
    ip = conftest.loopback_ip()
    server = conftest.spec(1001, ip)
    await proxmox.ensure_container(server)
    await proxmox.start(server.ref)

    agent = await lab.wait_agent(1001)
    port = lab.settings.agent_port
    assert (agent.ip, agent.port, agent.url) == (ip, port, f"http://{ip}:{port}"), "the IP of net0's ip="
    assert (await conftest.status(http, agent.url))["state"] == "unenrolled"
    assert b"zlh_actors.agent" in conftest.argv(agent.pid), "a real reference agent process"
    assert agent.state_dir == lab.container_dir(1001) / "state"
    (agent.state_dir / "disk-marker").write_text("written while the container ran")

    await proxmox.stop(server.ref)
    await lab.wait_no_agent(1001)
    assert not processes.alive(agent.pid)
    assert not await conftest.answers(http, agent.url)
    assert (agent.state_dir / "disk-marker").exists(), "a stopped container keeps its disk"

    await proxmox.start(server.ref)
    again = await lab.wait_agent(1001, replacing=agent.pid)
    assert await conftest.answers(http, again.url), "a fresh agent process on the same address"
    assert (again.state_dir / "disk-marker").exists()

    await proxmox.destroy(server.ref)
    await lab.wait_no_agent(1001)
    assert not processes.alive(again.pid)

    async def directory_gone() -> bool:
        return not lab.container_dir(1001).exists()

    await helpers.assert_eventually(directory_gone, timeout=5, message="the destroyed container's directory")


async def test_clean_shutdown_stops_the_game_through_the_agent_and_hard_stop_kills_it(
    lab: world.Lab, proxmox: driver.ProxmoxerDriver, http: aiohttp.ClientSession, receiver: conftest.Receiver
) -> None:
    server = conftest.spec(1002)
    await proxmox.ensure_container(server)
    await proxmox.start(server.ref)
    agent = await lab.wait_agent(1002)
    game_port = free_game_port(lab)
    ready = await conftest.run_game(
        http, lab.settings, lab.directory, agent.url, receiver.base_url, game_port
    )
    game_pid = ready["game"]["pid"]
    assert processes.alive(game_pid)
    # The stand-in answers the Server List Ping the control plane's own client sends.
    answer = await mcstatus.JavaServer(agent.ip, game_port).async_status()
    assert (answer.version.name, answer.players.max) == ("1.21.1", 20), "the default launcher pin's version"

    assert await proxmox.shutdown(server.ref, timeout=5) is protocol.ShutdownOutcome.CLEAN
    await lab.wait_no_agent(1002)
    assert not processes.alive(game_pid)
    assert receiver.states[-1] == "stopped", "a clean shutdown lets the agent stop its game and report it"

    await proxmox.start(server.ref)
    restarted = await lab.wait_agent(1002, replacing=agent.pid)
    after = await conftest.status(http, restarted.url)
    assert (after["server_id"], after["state"]) == (ready["server_id"], "installed"), (
        "enrollment is on the disk"
    )

    code, _ = await conftest.signed_post(
        http, lab.settings, restarted.url, "/v1/game/start", {"generation": 1}
    )
    assert code == 202
    second = await conftest.wait_state(http, restarted.url, "ready")

    async def ready_reported() -> bool:
        return receiver.states.count("ready") == 2

    await helpers.assert_eventually(ready_reported, timeout=5, message=f"reports {receiver.states}")
    await proxmox.stop(server.ref)
    await lab.wait_no_agent(1002)
    assert not processes.alive(second["game"]["pid"])
    assert receiver.states[-1] == "ready", "a hard stop kills the agent before it can report anything"


async def test_crashed_game_is_the_agents_to_report_and_a_killed_agent_comes_back(
    lab: world.Lab, proxmox: driver.ProxmoxerDriver, http: aiohttp.ClientSession, receiver: conftest.Receiver
) -> None:
    server = conftest.spec(1003)
    await proxmox.ensure_container(server)
    await proxmox.start(server.ref)
    agent = await lab.wait_agent(1003)
    ready = await conftest.run_game(
        http, lab.settings, lab.directory, agent.url, receiver.base_url, free_game_port(lab)
    )

    assert lab.kill_game(1003) == [ready["game"]["pid"]]
    await conftest.wait_state(http, agent.url, "crashed")
    assert lab.agents()[1003].pid == agent.pid, "the agent outlives its game"

    code, _ = await conftest.signed_post(http, lab.settings, agent.url, "/v1/game/start", {"generation": 1})
    assert code == 202
    game_pid = (await conftest.wait_state(http, agent.url, "ready"))["game"]["pid"]
    assert lab.kill_agent(1003) == agent.pid
    restarted = await lab.wait_agent(1003, replacing=agent.pid)
    assert (await conftest.status(http, restarted.url))["server_id"] == ready["server_id"]

    async def game_died_with_its_agent() -> bool:
        return not processes.alive(game_pid)

    await helpers.assert_eventually(game_died_with_its_agent, timeout=5, message=f"game {game_pid}")
    assert lab.processes(1003) == [restarted.pid]


async def test_an_agent_that_cannot_start_is_retried_until_it_can(
    lab: world.Lab, proxmox: driver.ProxmoxerDriver
) -> None:
    ip = conftest.loopback_ip()
    server = conftest.spec(1004, ip)
    await proxmox.ensure_container(server)
    await proxmox.start(server.ref)
    await lab.wait_agent(1004)
    # Someone else's container with the same address: its agent cannot bind while ours holds it.
    await lab.plant_foreign(1005, running=True, ip=f"{ip}/16")

    async def failed_to_listen() -> bool:
        return "cannot listen" in conftest.text(lab.log_file(1005))

    await helpers.assert_eventually(failed_to_listen, timeout=10, message="the second agent's failed start")
    assert 1005 not in lab.agents()

    await proxmox.stop(server.ref)
    assert (await lab.wait_agent(1005, timeout=10)).ip == ip, "retried once the address was free"
