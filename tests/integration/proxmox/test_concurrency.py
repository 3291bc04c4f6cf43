"""Many servers provisioned at once: one container each, at the VMID the database gave it."""

from __future__ import annotations

import asyncio

from tests.integration.proxmox import fakecluster
from zlh_actors.proxmox import driver, guestconfig, marks, protocol

SERVERS = 50


async def test_fifty_concurrent_ensures_make_fifty_containers(
    cluster: fakecluster.FakeCluster, pve: driver.ProxmoxerDriver
) -> None:
    # The "database" allocated 50 VMIDs, alternating between the two nodes. Every clone comes from
    # the one template, whose `disk` lock PVE holds for the length of each clone, so the clones
    # serialise and most of the 50 calls retry "CT is locked (disk)".
    specs = [
        fakecluster.spec(index, node=fakecluster.NODES[index % 2], vmid=protocol.Vmid(2000 + index))
        for index in range(SERVERS)
    ]

    outcomes = await asyncio.gather(*(pve.ensure_container(spec) for spec in specs))

    assert outcomes == [protocol.EnsureOutcome.CREATED] * SERVERS
    assert cluster.servers() == {spec.vmid: spec.node for spec in specs}
    for spec in specs:
        config = cluster.config(spec.vmid)
        assert config is not None
        assert marks.from_description(config["description"]) == fakecluster.owner(spec)
        assert marks.from_tags(config["tags"]) == fakecluster.owner(spec)
        assert guestconfig.split_props(config["net0"])["ip"] == spec.ip
    owned = await pve.list_owned()
    assert sorted(owned_.vmid for owned_ in owned) == sorted(spec.vmid for spec in specs)
    assert len(cluster.requests("POST", "/clone")) > SERVERS, "the template lock was contended"
    assert cluster.requests(contains="/cluster/nextid") == []

    # And all of them again at once, now with a destroy: none left.
    destroyed = await asyncio.gather(*(pve.destroy(spec.ref) for spec in specs))
    assert destroyed == [protocol.DestroyOutcome.DESTROYED] * SERVERS
    assert cluster.servers() == {}
