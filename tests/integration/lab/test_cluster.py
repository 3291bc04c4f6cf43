"""The lab's Proxmox as the driver sees it, and the helpers that act behind the control plane's back."""

from __future__ import annotations

import pytest

from tests.integration.lab import conftest
from zlh_actors.lab import cluster, world
from zlh_actors.proxmox import driver, errors, protocol


async def test_nodes_are_online_with_room_for_many_servers(proxmox: driver.ProxmoxerDriver) -> None:
    nodes = await proxmox.nodes()
    assert [node.name for node in nodes] == ["pve1", "pve2"]
    assert all(node.online for node in nodes)
    # fakepve alone reports 6 GiB free per node: three servers. The lab's nodes take hundreds.
    assert all(node.free_memory_mb >= 100 * 1024 for node in nodes)


async def test_helpers_stop_start_and_destroy_behind_the_drivers_back(
    lab: world.Lab, proxmox: driver.ProxmoxerDriver
) -> None:
    server = conftest.spec(1101)
    await proxmox.ensure_container(server)
    await proxmox.start(server.ref)
    agent = await lab.wait_agent(1101)

    await lab.stop_container(1101)
    assert (await proxmox.status(server.ref)).power is protocol.PowerState.STOPPED
    await lab.wait_no_agent(1101)

    await lab.start_container(1101)
    assert (await proxmox.status(server.ref)).power is protocol.PowerState.RUNNING
    await lab.wait_agent(1101, replacing=agent.pid)

    await lab.destroy_container(1101)
    assert (await proxmox.status(server.ref)).power is protocol.PowerState.ABSENT
    await lab.wait_no_agent(1101)


async def test_a_planted_foreign_container_is_never_taken_for_ours(
    lab: world.Lab, proxmox: driver.ProxmoxerDriver
) -> None:
    await lab.plant_foreign(1102)
    server = conftest.spec(1102)
    with pytest.raises(errors.VmidTaken):
        await proxmox.ensure_container(server)
    with pytest.raises(errors.NotOwned):
        await proxmox.status(server.ref)
    with pytest.raises(cluster.LabError):
        await lab.plant_foreign(1102)

    # Running with an address in the lab's subnet, it gets an agent like any container would.
    ip = conftest.loopback_ip()
    await lab.plant_foreign(1103, running=True, ip=f"{ip}/16")
    assert (await lab.wait_agent(1103)).ip == ip


async def test_a_crashed_node_stops_its_containers(lab: world.Lab, proxmox: driver.ProxmoxerDriver) -> None:
    server = conftest.spec(1104, node="pve2")
    await proxmox.ensure_container(server)
    await proxmox.start(server.ref)
    await lab.wait_agent(1104)

    # The lab reads the model, not the API: faults meant for the control plane do not blind it.
    await lab.cluster.call(lambda: lab.pve.flaky_network(drop_rate=1.0))
    await lab.crash_node("pve2")
    await lab.wait_no_agent(1104)
    await lab.cluster.call(lambda: lab.pve.flaky_network(drop_rate=0.0))
    assert {node.name: node.online for node in await proxmox.nodes()} == {"pve1": True, "pve2": False}

    await lab.restore_node("pve2")
    assert (await proxmox.status(server.ref)).power is protocol.PowerState.STOPPED
