"""Every operation repeated, or cut off half-way, ends in the same state: one container or none."""

from __future__ import annotations

import asyncio

import pytest

from tests.integration.proxmox import fakecluster
from zlh_actors.proxmox import driver, guestconfig, marks, protocol


def _mac(cluster: fakecluster.FakeCluster, vmid: int) -> str:
    config = cluster.config(vmid)
    assert config is not None
    return guestconfig.split_props(config["net0"])["hwaddr"]


async def test_ensure_twice_adopts_without_writing(
    cluster: fakecluster.FakeCluster, pve: driver.ProxmoxerDriver
) -> None:
    spec = fakecluster.spec(10)
    assert await pve.ensure_container(spec) is protocol.EnsureOutcome.CREATED
    mac = _mac(cluster, spec.vmid)
    writes = len(cluster.requests("PUT")) + len(cluster.requests("POST"))

    assert await pve.ensure_container(spec) is protocol.EnsureOutcome.ADOPTED

    assert cluster.servers() == {spec.vmid: "pve2"}
    assert len(cluster.requests("PUT")) + len(cluster.requests("POST")) == writes, (
        "a converged ensure only reads"
    )
    assert _mac(cluster, spec.vmid) == mac


async def test_ensure_converges_a_changed_spec_and_keeps_the_mac(
    cluster: fakecluster.FakeCluster, pve: driver.ProxmoxerDriver
) -> None:
    spec = fakecluster.spec(11)
    await pve.ensure_container(spec)
    mac = _mac(cluster, spec.vmid)
    bigger = fakecluster.spec(11, memory_mb=4096, cores=4, ip="10.20.99.10/16", gateway=None)

    assert await pve.ensure_container(bigger) is protocol.EnsureOutcome.ADOPTED

    config = cluster.config(spec.vmid)
    assert config is not None
    assert (int(config["memory"]), int(config["cores"])) == (4096, 4)
    net = guestconfig.split_props(config["net0"])
    assert net["ip"] == "10.20.99.10/16"
    assert "gw" not in net
    assert net["hwaddr"] == mac


async def test_destroy_twice_and_destroy_of_never_created(
    cluster: fakecluster.FakeCluster, pve: driver.ProxmoxerDriver
) -> None:
    spec = fakecluster.spec(12)
    await pve.ensure_container(spec)
    await pve.start(spec.ref)

    assert await pve.destroy(spec.ref) is protocol.DestroyOutcome.DESTROYED
    assert await pve.destroy(spec.ref) is protocol.DestroyOutcome.ALREADY_ABSENT
    assert cluster.servers() == {}

    never = fakecluster.spec(13)
    assert await pve.destroy(never.ref) is protocol.DestroyOutcome.ALREADY_ABSENT
    assert len(cluster.requests("DELETE")) == 1


async def test_power_operations_repeat_harmlessly(
    cluster: fakecluster.FakeCluster, pve: driver.ProxmoxerDriver
) -> None:
    spec = fakecluster.spec(14)
    await pve.ensure_container(spec)

    await pve.start(spec.ref)
    await pve.start(spec.ref)
    assert len(cluster.requests("POST", "/status/start")) == 1
    await pve.stop(spec.ref)
    await pve.stop(spec.ref)
    assert len(cluster.requests("POST", "/status/stop")) == 1
    assert await pve.shutdown(spec.ref, timeout=5) is protocol.ShutdownOutcome.ALREADY_STOPPED
    assert cluster.requests("POST", "/status/shutdown") == []
    assert cluster.where(spec.vmid) == ("pve2", "stopped")


async def test_adopts_a_container_left_by_a_crash_after_the_clone(
    cluster: fakecluster.FakeCluster, pve: driver.ProxmoxerDriver
) -> None:
    spec = fakecluster.spec(15)
    # What a crash between the clone and the config update leaves: the description marks (sent
    # with the clone), the template's tags and network, nothing else of ours.
    cluster.call(
        lambda: cluster.pve.add_ct(
            spec.vmid,
            spec.name,
            node="pve2",
            config={
                "description": marks.description(fakecluster.owner(spec), spec.name),
                "tags": "fabric;zlh-template",
                "net0": "name=eth0,bridge=vmbr0,hwaddr=BC:24:11:AA:BB:CC,ip=dhcp,type=veth",
            },
        )
    )

    assert await pve.ensure_container(spec) is protocol.EnsureOutcome.ADOPTED

    assert cluster.requests("POST", "/clone") == []
    config = cluster.config(spec.vmid)
    assert config is not None
    assert marks.from_tags(config["tags"]) == fakecluster.owner(spec)
    assert guestconfig.split_props(config["net0"])["hwaddr"] == "BC:24:11:AA:BB:CC"
    assert [owned.vmid for owned in await pve.list_owned()] == [spec.vmid]


async def test_adopts_a_clone_still_running_from_a_crashed_caller(cluster: fakecluster.FakeCluster) -> None:
    spec = fakecluster.spec(16)
    cluster.call(lambda: cluster.pve.ct_secs.__setitem__("clone", 50))  # half a second of real time
    crashed = driver.ProxmoxerDriver(cluster.settings())
    attempt = asyncio.create_task(crashed.ensure_container(spec))
    await fakecluster.eventually(lambda: (cluster.config(spec.vmid) or {}).get("lock") == "create")
    attempt.cancel()  # the caller dies; its clone task goes on in PVE
    await crashed.close()

    successor = driver.ProxmoxerDriver(cluster.settings())
    try:
        assert await successor.ensure_container(spec) is protocol.EnsureOutcome.ADOPTED
    finally:
        await successor.close()

    assert cluster.servers() == {spec.vmid: "pve2"}
    assert len(cluster.requests("POST", "/clone")) == 1
    config = cluster.config(spec.vmid)
    assert config is not None
    assert "lock" not in config
    assert marks.from_tags(config["tags"]) == fakecluster.owner(spec)


@pytest.mark.parametrize("cut_after", range(1, 9))
async def test_a_crash_at_any_request_leaves_one_container(
    cluster: fakecluster.FakeCluster, cut_after: int
) -> None:
    """Cut ensure off after its n-th request reached PVE (that request still completes, as when a
    process dies with a request in flight); a new caller then converges to exactly one container,
    and a destroy cut off the same way converges to none."""
    spec = fakecluster.spec(20 + cut_after)

    async def cut(operation: asyncio.Task[object]) -> None:
        seen = len(cluster.requests())
        await fakecluster.eventually(lambda: operation.done() or len(cluster.requests()) >= seen + cut_after)
        operation.cancel()
        await asyncio.gather(operation, return_exceptions=True)

    first = driver.ProxmoxerDriver(cluster.settings())
    await cut(asyncio.create_task(first.ensure_container(spec)))
    await first.close()

    second = driver.ProxmoxerDriver(cluster.settings())
    try:
        await second.ensure_container(spec)
        assert cluster.servers() == {spec.vmid: "pve2"}
        config = cluster.config(spec.vmid)
        assert config is not None
        assert marks.from_tags(config["tags"]) == fakecluster.owner(spec)
        assert int(config["memory"]) == spec.memory_mb
        await second.start(spec.ref)

        await cut(asyncio.create_task(second.destroy(spec.ref)))
        assert await second.destroy(spec.ref) in set(protocol.DestroyOutcome)
        assert cluster.servers() == {}
    finally:
        await second.close()
