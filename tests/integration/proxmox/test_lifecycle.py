"""A server's container through its whole life: ensure, start, shut down, destroy."""

from __future__ import annotations

import time

import pytest

from tests.integration.proxmox import fakecluster
from zlh_actors import errors as zlh_errors
from zlh_actors.proxmox import driver, errors, guestconfig, marks, protocol


async def test_full_cycle_with_marks_visible_in_proxmox(
    cluster: fakecluster.FakeCluster, pve: driver.ProxmoxerDriver
) -> None:
    spec = fakecluster.spec(1, node="pve2")
    ref = spec.ref

    assert await pve.ensure_container(spec) is protocol.EnsureOutcome.CREATED
    # Cloned from the template on pve1 onto the node the database chose.
    assert cluster.where(spec.vmid) == ("pve2", "stopped")
    config = cluster.config(spec.vmid)
    assert config is not None
    assert marks.from_description(config["description"]) == fakecluster.owner(spec)
    assert marks.split_tags(config["tags"]) == {"zlh", f"zlh-{spec.server_id.hex}", "zlh-g1"}
    assert config["hostname"] == "mc-1"
    assert (int(config["memory"]), int(config["cores"])) == (2048, 2)
    net = guestconfig.split_props(config["net0"])
    assert (net["ip"], net["gw"], net["bridge"]) == ("10.20.1.10/16", "10.20.0.1", "vmbr0")
    assert net["firewall"] == "1", "properties of the template's net0 that we do not own are kept"
    assert "lock" not in config
    assert await pve.status(ref) == protocol.ContainerStatus(
        spec.vmid, "pve2", protocol.PowerState.STOPPED, None
    )

    await pve.start(ref)
    assert cluster.where(spec.vmid) == ("pve2", "running")
    assert (await pve.status(ref)).power is protocol.PowerState.RUNNING
    assert await pve.list_owned() == [
        protocol.OwnedContainer(
            "pve2", spec.vmid, protocol.PowerState.RUNNING, spec.server_id, spec.generation, None
        )
    ]

    assert await pve.shutdown(ref, timeout=5) is protocol.ShutdownOutcome.CLEAN
    assert cluster.where(spec.vmid) == ("pve2", "stopped")
    assert cluster.requests("POST", "/status/stop") == [], "a clean shutdown needs no stop"

    assert await pve.destroy(ref) is protocol.DestroyOutcome.DESTROYED
    assert cluster.where(spec.vmid) is None
    assert (await pve.status(ref)).power is protocol.PowerState.ABSENT
    assert await pve.list_owned() == []
    # purge and destroy-unreferenced-disks are query parameters of the DELETE.
    assert len(cluster.requests("DELETE", f"/lxc/{spec.vmid}")) == 1


async def test_shutdown_that_times_out_ends_in_stop(
    cluster: fakecluster.FakeCluster, pve: driver.ProxmoxerDriver
) -> None:
    spec = fakecluster.spec(2)
    await pve.ensure_container(spec)
    await pve.start(spec.ref)
    # The guest ignores the shutdown for far longer than the timeout the driver gives PVE.
    cluster.call(lambda: setattr(cluster.pve.ct(spec.vmid), "shutdown_secs", 10_000))

    assert await pve.shutdown(spec.ref, timeout=1) is protocol.ShutdownOutcome.FORCED

    assert cluster.where(spec.vmid) == ("pve2", "stopped")
    [(_, _, shutdown_body)] = cluster.requests("POST", "/status/shutdown")
    assert b"forceStop=0" in shutdown_body
    assert b"timeout=1" in shutdown_body
    [(_, _, stop_body)] = cluster.requests("POST", "/status/stop")
    assert b"overrule-shutdown=1" in stop_body


async def test_stop_and_start_report_through_status(
    cluster: fakecluster.FakeCluster, pve: driver.ProxmoxerDriver
) -> None:
    spec = fakecluster.spec(3, node="pve1")
    await pve.ensure_container(spec)
    await pve.start(spec.ref)
    await pve.stop(spec.ref)
    assert cluster.where(spec.vmid) == ("pve1", "stopped")
    assert (await pve.status(spec.ref)).power is protocol.PowerState.STOPPED


async def test_start_of_missing_container_is_does_not_exist(pve: driver.ProxmoxerDriver) -> None:
    with pytest.raises(errors.DoesNotExist):
        await pve.start(fakecluster.spec(4).ref)


async def test_client_timeout_on_a_task_is_not_a_failure(cluster: fakecluster.FakeCluster) -> None:
    spec = fakecluster.spec(5)
    impatient = driver.ProxmoxerDriver(cluster.settings(task_timeout=0.05))
    patient = driver.ProxmoxerDriver(cluster.settings())
    try:
        await patient.ensure_container(spec)
        # The start task takes 1 s of real time; the impatient driver gives up waiting long before.
        cluster.call(lambda: setattr(cluster.pve.ct(spec.vmid), "start_secs", 100))
        started = time.monotonic()
        with pytest.raises(errors.TaskWaitTimeout) as caught:
            await impatient.start(spec.ref)
        assert time.monotonic() - started < 0.9
        assert caught.value.details["upid"].startswith("UPID:pve2:")
        assert isinstance(caught.value, zlh_errors.Transient)

        # The task was not failed by the timeout: it goes on and the container starts.
        await fakecluster.eventually(lambda: cluster.where(spec.vmid) == ("pve2", "running"))
        await patient.start(spec.ref)
        assert len(cluster.requests("POST", "/status/start")) == 1, "re-checking found it running"
    finally:
        await impatient.close()
        await patient.close()


async def test_nodes_lists_every_node_with_free_memory(pve: driver.ProxmoxerDriver) -> None:
    nodes = await pve.nodes()
    assert [node.name for node in nodes] == sorted(node.name for node in nodes)
    assert len(nodes) >= 2
    assert all(node.online and node.free_memory_mb > 0 for node in nodes)
